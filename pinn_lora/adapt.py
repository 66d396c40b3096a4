"""``python -m pinn_lora.adapt problem=burgers method=odelora [overrides]``

Loads the shipped base model of the problem, adapts it to the target
coefficients with the chosen method, and writes a run directory.

Bad input (an unknown name or key, a malformed override, a bad value, a missing or mismatched
base model, an ``out=`` that holds a previous run or cannot be written) stops with one
``error:`` line and exit code 2, leaving no run directory behind; ``debug=true`` shows the
traceback instead."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from pinn_lora.cli import (
    EXIT_DIVERGED,
    EXIT_NO_IMPROVEMENT,
    check_group_overrides,
    check_launcher,
    config_dir,
    guarded,
    hydra_errors,
    prepare_run,
)

BOOLEAN_KEYS = ("progress", "plots", "resume", "debug")


def check_task_config(cfg: dict[str, Any]) -> None:
    """What Hydra lets through but the run cannot use: a removed group (``~problem``),
    true/false options given something else (``plots=maybe``) and a non-integer ``sync_every``."""
    from pinn_lora.cli import group_options
    from pinn_lora.session import ConfigError, check_ints

    for group in ("problem", "method"):
        if not isinstance(cfg.get(group), dict) or not isinstance(cfg[group].get("name"), str):
            raise ConfigError(f"no {group} selected (was it removed with ~{group}?); choose one with {group}=NAME: "
                              f"{', '.join(group_options(group))}")
    for key in BOOLEAN_KEYS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")
    if cfg.get("sync_every") is not None:  # the loop would take int() of it (2.5 -> a crash, 'abc' -> no key named)
        check_ints({"sync_every": (cfg["sync_every"], 0)})


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    debug = OmegaConf.select(cfg, "debug", default=False, throw_on_resolution_failure=False) is True

    def run() -> Any:
        from pinn_lora.session import run_config

        plain = OmegaConf.to_container(cfg, resolve=True)
        check_task_config(plain)
        return run_config(plain, run_dir)

    out = guarded(run, debug=debug, run_dir=run_dir)
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


def main() -> None:
    import hydra

    argv = sys.argv[1:]
    check_group_overrides(argv, ("problem", "method"))
    check_launcher(argv)
    plan = prepare_run(argv, "adapt", resume_key=True)  # before Hydra writes <out>/.hydra
    with hydra_errors(plan.debug):
        hydra.main(config_path=config_dir(), config_name="adapt", version_base="1.3")(_task)()


class _CallableModule(types.ModuleType):
    """Importing this module (``import pinn_lora.adapt``) rebinds the package attribute
    ``pinn_lora.adapt`` from the function :func:`pinn_lora.session.adapt` to this module; calling the
    module calls the function, so ``pinn_lora.adapt(...)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pinn_lora.session import adapt

        return adapt(*args, **kwargs)


if __name__ == "__main__":
    main()
else:
    sys.modules[__name__].__class__ = _CallableModule
