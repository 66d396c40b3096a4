"""``python -m pinn_lora.adapt problem=burgers method=odelora [overrides]``

Loads the shipped base model of the problem, adapts it to the target
coefficients with the chosen method, and writes a run directory.

Bad input (an unknown name or key, a malformed override, a bad value, a missing or mismatched
base model, an ``out=`` that holds another run, is not pinn_lora's or cannot be written) stops
with one ``error:`` line and exit code 2 before the run directory is claimed, so it creates and
deletes nothing; ``debug=true`` shows the traceback instead.

This module is the command; the library function is :func:`pinn_lora.adapt_to`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pinn_lora.cli.common import EXIT_DIVERGED, EXIT_NO_IMPROVEMENT, check_group_overrides, check_launcher
from pinn_lora.cli.launch import launch, prepare_run, run_task

def check_task_config(cfg: dict[str, Any]) -> None:
    """What Hydra lets through but the run cannot use: a removed group (``~problem``),
    and true/false options given something else (``plots=maybe``)."""
    from pinn_lora.cli.common import group_options
    from pinn_lora.runs.settings import BOOLEANS
    from pinn_lora.runs.adapt import ConfigError

    for group in ("problem", "method"):
        if not isinstance(cfg.get(group), dict) or not isinstance(cfg[group].get("name"), str):
            raise ConfigError(f"no {group} selected (was it removed with ~{group}?); choose one with {group}=NAME: "
                              f"{', '.join(group_options(group))}")
    for key in BOOLEANS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    def run(plain: dict[str, Any], run_dir: Path) -> Any:
        from pinn_lora.runs.from_config import run_config

        check_task_config(plain)
        return run_config(plain, run_dir)

    if sweep_job_done(cfg):
        return
    out, run_dir = run_task(cfg, run)
    results = out if isinstance(out, list) else [out]
    for result in results:
        print(result.summary_line())
    print(f"run directory: {run_dir}" + (" (one subdirectory per coefficient)" if isinstance(out, list) else ""))
    result = results[0]
    if result.history.status == "diverged":
        print(f"error: diverged: {result.history.message}", file=sys.stderr)
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:  # in a sweep the other runs go on
            raise SystemExit(EXIT_DIVERGED)
    if any(r.history.status == "no_improvement" for r in results):
        print(f"warning: no improvement: {next(r for r in results if r.history.status == 'no_improvement').history.message}",
              file=sys.stderr)
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(EXIT_NO_IMPROVEMENT)


def sweep_job_done(cfg) -> bool:
    """A job of a sweep given ``resume=true``: True when its run finished already (it is kept as it is);
    a job that never started starts (``resume`` set to false for it); an interrupted one resumes."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    from pinn_lora.store.sweeps import resume_action

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or cfg.get("resume") is not True:
        return False
    action = resume_action(hydra_cfg.runtime.output_dir)
    if action == "skip":
        print(f"run directory: {Path(hydra_cfg.runtime.output_dir).resolve()} (finished already: kept as it is)")
    elif action == "start":
        with read_write(cfg):
            cfg.resume = False
    return action == "skip"


def main() -> None:
    argv = sys.argv[1:]
    check_group_overrides(argv, ("problem", "method"))
    check_launcher(argv)
    launch(prepare_run(argv, "adapt", resume_key=True), "adapt", _task)

