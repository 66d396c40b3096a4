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
from pinn_lora.methods.dynamics import GradientDynamics
from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt
from pinn_lora.model.network import build_network
from pinn_lora.core.runtime import device_name
from pinn_lora.training.config import TrainConfig
from pinn_lora.training.records import Monitor
from pinn_lora.training.trainer import Trainer
from pinn_lora.store.zoo import save_base


def pretrain_base(problem: Any, *, layers: list[int], activation: str, train: TrainConfig, lr: float,
                  schedule: str = "cosine", final_ratio: float = 0.01, out: str | Path | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                  monitors: tuple[Monitor, ...] = (), init_from: str | Path | None = None,
                  checkpoint: str | Path | None = None, resume: bool = False
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a PINN on ``problem`` (Adam, then optional L-BFGS), from a fresh
    initialisation or continuing from the base model ``init_from``.

    With ``checkpoint`` (a file path) and ``train.checkpoint_every`` > 0 the loop writes a resumable
    checkpoint there (:mod:`pinn_lora.store.checkpoints`); ``resume=True`` continues from it, with the same
    settings (a difference is refused), to the network an uninterrupted run gives.

    Returns the network and its card; writes both to ``out`` when given."""
    from pinn_lora.store import checkpoints as resume_state

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
    from pinn_lora.model.memory import check_points

    for key in ("n_points", "lbfgs_points"):
        check_points(getattr(train, key), layers, dtype, device, key)
    net = build_network(layers, activation, train.seed, dtype=dtype, device=device,
                        output_transform=problem.output_transform)
    previous = None
    if init_from is not None:
        from pinn_lora.store.zoo import load_base

        start, previous, _ = load_base(init_from, dtype=dtype, device=device)
        if previous["problem"] != problem.name or previous["coefficients"] != problem.coefficients:
            raise ValueError(f"init_from={init_from}: a base for {previous['problem']} {previous['coefficients']}, "
                             f"not {problem.name} {problem.coefficients}")
        net.load_state_dict(start.state_dict())
    dyn = (LevenbergMarquardt([p for p in net.parameters() if p.requires_grad], mu=train.lm_mu, adaptive=train.lm_adaptive)
           if train.solver == "lm" else GradientDynamics(net.parameters(), lr=lr, schedule=schedule, final_ratio=final_ratio))
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


def pretraining_recipe(family: str, given: dict[str, Any]) -> dict[str, Any]:
    """The pretraining settings of ``family``: its recipe's (:class:`pinn_lora.core.recipe.Pretraining`: the
    package's with the family's overrides; the network: the family's ``network``), with ``given`` over them."""
    from dataclasses import asdict

    from pinn_lora.core.registry import PROBLEMS
    from pinn_lora.runs.resolve import recipe_of

    cls = PROBLEMS.get(family)
    recipe = asdict(recipe_of(cls).pretrain)
    network = getattr(cls, "network", None) or {}
    recipe["layers"] = recipe["layers"] or network.get("layers") or [len(cls.variables), 64, 64, 64, 1]
    recipe["activation"] = recipe["activation"] or network.get("activation") or "tanh"
    return {**recipe, **given}


RECIPE_KEYS = ("steps", "lbfgs_steps", "n_points", "resample_every", "solver", "sampling", "lm_mu")  # pretrain.yaml
