"""``python -m pinn_lora.pretrain problem=<family>``: train a base model at
the family's source coefficients and write it as safetensors + card.

The command is this module; the library function is :func:`pretrain_base` (``pinn_lora.pretrain_base``)."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import pinn_lora
from pinn_lora.dynamics import GradientDynamics
from pinn_lora.network import build_network
from pinn_lora.runtime import device_name
from pinn_lora.train import Monitor, TrainConfig, Trainer
from pinn_lora.zoo import save_base


def pretrain_base(problem: Any, *, layers: list[int], activation: str, train: TrainConfig, lr: float,
                  schedule: str = "cosine", final_ratio: float = 0.01, out: str | Path | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                  monitors: tuple[Monitor, ...] = (), init_from: str | Path | None = None,
                  checkpoint: str | Path | None = None, resume: bool = False
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a PINN on ``problem`` (Adam, then optional L-BFGS), from a fresh
    initialisation or continuing from the base model ``init_from``.

    With ``checkpoint`` (a file path) and ``train.checkpoint_every`` > 0 the loop writes a resumable
    checkpoint there (:mod:`pinn_lora.resume`); ``resume=True`` continues from it, with the same
    settings (a difference is refused), to the network an uninterrupted run gives.

    Returns the network and its card; writes both to ``out`` when given."""
    from pinn_lora import resume as resume_state

    device = torch.device(device)
    if resume and checkpoint is None:
        raise ValueError("pretrain: resume=True needs the checkpoint to continue from")
    saved = resume_state.load(checkpoint, device) if resume else None
    settings = {"problem": problem.name, **{f"problem.{k}": v for k, v in problem.coefficients.items()},
                "layers": list(layers), "activation": activation, "lr": lr, "schedule": schedule,
                "final_ratio": final_ratio, "dtype": str(dtype).replace("torch.", ""),
                "init_from": None if init_from is None else str(init_from),
                **{k: v for k, v in asdict(train).items() if k != "progress"}}
    changed = saved is not None and resume_state.changed_settings(saved[1]["settings"], settings)
    if changed:
        raise ValueError(f"resume: the pretraining in {Path(checkpoint).parent} was started with other settings "
                         f"({changed}); resume with the same configuration")
    from pinn_lora.memory import check_points

    for key in ("n_points", "lbfgs_points"):
        check_points(getattr(train, key), layers, dtype, device, key)
    net = build_network(layers, activation, train.seed, dtype=dtype, device=device,
                        output_transform=problem.output_transform)
    previous = None
    if init_from is not None:
        from pinn_lora.zoo import load_base

        start, previous, _ = load_base(init_from, dtype=dtype, device=device)
        if previous["problem"] != problem.name or previous["coefficients"] != problem.coefficients:
            raise ValueError(f"init_from={init_from}: a base for {previous['problem']} {previous['coefficients']}, "
                             f"not {problem.name} {problem.coefficients}")
        net.load_state_dict(start.state_dict())
    dyn = GradientDynamics(net.parameters(), lr=lr, schedule=schedule, final_ratio=final_ratio)
    hist = Trainer(problem, net, dyn, train, monitors=monitors, checkpoint_path=checkpoint, resume_from=saved,
                   settings=settings).run()
    err = problem.relative_l2(net)
    card = {
        "problem": problem.name,
        "coefficients": dict(problem.coefficients),
        "relative_l2": err,
        "eval_grid": {"points": list(problem.eval_points), "lower": list(problem.lower),
                      "upper": list(problem.upper)},
        "status": hist.status,
        # the step's own settings: Adam's learning rate and schedule, or (solver=lm) the damping in asdict(train)
        "recipe": {**({"optimizer": "levenberg-marquardt"} if train.solver == "lm" else
                      {"optimizer": "adam", "lr": lr, "schedule": schedule, "final_ratio": final_ratio}),
                   **asdict(train)},
        "steps": train.steps + train.lbfgs_steps,
        "wall_time_s": round(hist.wall_time, 1),
        "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "seed": train.seed,
        "package_version": pinn_lora.__version__,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
    }
    if previous is not None:
        card["continued_from"] = {k: previous.get(k) for k in
                                  ("weights_sha256", "relative_l2", "steps", "wall_time_s", "recipe", "device")}
        card["steps"] += previous.get("steps", 0)
        card["wall_time_s"] = round(card["wall_time_s"] + previous.get("wall_time_s", 0.0), 1)
    if out is not None:
        card = save_base(net, card, out)
    return net, card


RECIPE_KEYS = ("steps", "lbfgs_steps", "n_points", "resample_every", "solver", "sampling", "lm_mu")  # pretrain.yaml


def run_config(cfg: dict[str, Any], run_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pretrain from a composed (plain dict) config; claims ``run_dir`` (:mod:`pinn_lora.rundir`)
    once the config is checked and writes ``run_dir/base.*``."""
    from pinn_lora import rundir
    from pinn_lora.session import check_ints, check_strings, problem_from_config, resolve_device, resolve_dtype

    check_strings(cfg, ("device", "dtype", "init_from"))
    pcfg = cfg["problem"]
    if not pcfg.get("pretrain"):  # a plugin's family: pinn_lora ships no configs/problem/<name>.yaml with a recipe
        from pinn_lora.session import ConfigError

        raise ConfigError(f"problem {pcfg['name']!r} has no pretraining recipe here (no configs/problem/"
                          f"{pcfg['name']}.yaml); pretrain it with pinn_lora.pretrain_base (examples/custom_problem.py)")
    recipe = dict(pcfg["pretrain"])
    for key in RECIPE_KEYS:
        if cfg.get(key) is not None:
            recipe[key] = cfg[key]
    check_strings(recipe, ("solver", "sampling"))
    check_ints({"steps": recipe["steps"], "lbfgs_steps": recipe.get("lbfgs_steps", 0), "n_points": recipe["n_points"],
                "resample_every": recipe["resample_every"], "seed": cfg.get("seed", 0),
                "checkpoint_every": cfg.get("checkpoint_every", 0)})  # the bounds of adapt's keys of these names
    from pinn_lora.preflight import check_bools

    check_bools({k: cfg[k] for k in ("progress", "resume") if k in cfg})
    resume = cfg.get("resume", False) is True
    if resume and (run_dir / "base.safetensors").exists():
        from pinn_lora.session import ConfigError

        raise ConfigError(f"resume: the pretraining in {run_dir} finished; its base model is "
                          f"{run_dir / 'base.safetensors'} (nothing to resume)")
    problem = problem_from_config(pcfg, "pretrain")
    solver = recipe.get("solver", "method")
    try:
        train = TrainConfig(
            steps=recipe["steps"], n_points=recipe["n_points"], resample_every=recipe["resample_every"],
            # causal weights are for first-order steps; the second-order step works on the plain residual
            causal_eps=0.0 if solver == "lm" else recipe.get("causal_eps", 0.0), lbfgs_steps=recipe.get("lbfgs_steps", 0),
            lbfgs_points=recipe.get("lbfgs_points", 0), eval_every=recipe.get("eval_every", 500),
            seed=cfg.get("seed", 0), progress=bool(cfg.get("progress", True)),
            checkpoint_every=cfg.get("checkpoint_every", 0), solver=solver,
            sampling=recipe.get("sampling", "uniform"), lm_mu=recipe.get("lm_mu", TrainConfig.lm_mu))
    except ValueError as exc:
        from pinn_lora.session import ConfigError

        raise ConfigError(str(exc).removeprefix("train: ")) from None
    device, dtype = resolve_device(cfg.get("device", "auto")), resolve_dtype(cfg.get("dtype", "float64"))
    with rundir.claim(run_dir, resume=resume):
        return pretrain_base(problem, layers=list(recipe["layers"]), activation=recipe["activation"], train=train,
                             lr=recipe["lr"], schedule=recipe.get("schedule", "cosine"),
                             final_ratio=recipe.get("final_ratio", 0.01), out=run_dir / "base",
                             init_from=cfg.get("init_from"), device=device, dtype=dtype,
                             checkpoint=run_dir / "checkpoint.safetensors", resume=resume)


def _task(cfg) -> None:
    from pinn_lora.cli import run_task

    (_, card), run_dir = run_task(cfg, run_config)
    print(f"{card['problem']} {card['coefficients']}: rel. L2 {card['relative_l2']:.3e} after {card['steps']} steps "
          f"in {card['wall_time_s']:.0f}s on {card['device']}")
    print(f"base model written: {run_dir / 'base.safetensors'} + base.json "
          f"(use it with: python -m pinn_lora.adapt problem={card['problem']} base={run_dir / 'base'})")


def main() -> None:
    from pinn_lora.cli import check_group_overrides, launch, prepare_run

    check_group_overrides(sys.argv[1:], ("problem",), "pretrain")
    launch(prepare_run(sys.argv[1:], "pretrain", resume_key=True), "pretrain", _task)  # a base is never overwritten


if __name__ == "__main__":
    main()
