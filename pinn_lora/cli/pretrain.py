"""``python -m pinn_lora.pretrain``: a base model from a composed config (:mod:`pinn_lora.runs.pretrain`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from pinn_lora.runs.pretrain import RECIPE_KEYS, pretrain_base, pretraining_recipe
from pinn_lora.training.config import TrainConfig

def run_config(cfg: dict[str, Any], run_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pretrain from a composed (plain dict) config; claims ``run_dir`` (:mod:`pinn_lora.store.rundir`)
    once the config is checked and writes ``run_dir/base.*``."""
    from pinn_lora.store import rundir
    from pinn_lora.runs.adapt import check_ints, check_strings, problem_from_config, resolve_device, resolve_dtype

    check_strings(cfg, ("device", "dtype", "init_from"))
    pcfg = cfg["problem"]
    recipe = pretraining_recipe(pcfg["name"], {k: cfg[k] for k in RECIPE_KEYS if cfg.get(k) is not None})
    check_strings(recipe, ("solver", "sampling"))
    check_ints({"steps": recipe["steps"], "lbfgs_steps": recipe["lbfgs_steps"], "n_points": recipe["n_points"],
                "resample_every": recipe["resample_every"], "seed": cfg.get("seed", 0),
                "checkpoint_every": cfg.get("checkpoint_every", 0)})  # the bounds of adapt's keys of these names
    from pinn_lora.runs.preflight import check_bools

    check_bools({k: cfg[k] for k in ("progress", "resume") if k in cfg})
    resume = cfg.get("resume", False) is True
    if resume and (run_dir / "base.safetensors").exists():
        from pinn_lora.runs.adapt import ConfigError

        raise ConfigError(f"resume: the pretraining in {run_dir} finished; its base model is "
                          f"{run_dir / 'base.safetensors'} (nothing to resume)")
    problem = problem_from_config(pcfg, "pretrain")
    solver = recipe["solver"]
    try:
        train = TrainConfig(
            steps=recipe["steps"], n_points=recipe["n_points"], resample_every=recipe["resample_every"],
            # causal weights are for first-order steps; the second-order step works on the plain residual
            causal_eps=0.0 if solver == "lm" else recipe["causal_eps"], lbfgs_steps=recipe["lbfgs_steps"],
            lbfgs_points=recipe["lbfgs_points"], eval_every=recipe["eval_every"],
            seed=cfg.get("seed", 0), progress=bool(cfg.get("progress", True)),
            checkpoint_every=cfg.get("checkpoint_every", 0), solver=solver,
            sampling=recipe["sampling"], lm_mu=recipe["lm_mu"])
    except ValueError as exc:
        from pinn_lora.runs.adapt import ConfigError

        raise ConfigError(str(exc).removeprefix("train: ")) from None
    device, dtype = resolve_device(cfg.get("device", "auto")), resolve_dtype(cfg.get("dtype", "float64"))
    with rundir.claim(run_dir, resume=resume):
        return pretrain_base(problem, layers=list(recipe["layers"]), activation=recipe["activation"], train=train,
                             lr=recipe["lr"], schedule=recipe["schedule"],
                             final_ratio=recipe["final_ratio"], out=run_dir / "base",
                             init_from=cfg.get("init_from"), device=device, dtype=dtype,
                             checkpoint=run_dir / "checkpoint.safetensors", resume=resume)


def _task(cfg) -> None:
    from pinn_lora.cli.launch import run_task

    (_, card), run_dir = run_task(cfg, run_config)
    print(f"{card['problem']} {card['coefficients']}: rel. L2 {card['relative_l2']:.3e} after {card['steps']} steps "
          f"in {card['wall_time_s']:.0f}s on {card['device']}")
    print(f"base model written: {run_dir / 'base.safetensors'} + base.json "
          f"(use it with: python -m pinn_lora.adapt problem={card['problem']} base={run_dir / 'base'})")


def main() -> None:
    from pinn_lora.cli.common import check_group_overrides
    from pinn_lora.cli.launch import launch, prepare_run

    check_group_overrides(sys.argv[1:], ("problem",), "pretrain")
    launch(prepare_run(sys.argv[1:], "pretrain", resume_key=True), "pretrain", _task)  # a base is never overwritten
