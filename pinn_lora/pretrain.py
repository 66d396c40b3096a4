"""``python -m pinn_lora.pretrain problem=<family>``: train a base model at
the family's source coefficients and write it as safetensors + card."""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import pinn_lora
from pinn_lora.dynamics import GradientDynamics
from pinn_lora.network import build_network
from pinn_lora.train import Monitor, TrainConfig, Trainer
from pinn_lora.zoo import save_base


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def pretrain(problem: Any, *, layers: list[int], activation: str, train: TrainConfig, lr: float,
             schedule: str = "cosine", final_ratio: float = 0.01, out: str | Path | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
             monitors: tuple[Monitor, ...] = ()) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a fresh PINN on ``problem`` (Adam, then optional L-BFGS).

    Returns the network and its card; writes both to ``out`` when given."""
    device = torch.device(device)
    net = build_network(layers, activation, train.seed, dtype=dtype, device=device,
                        output_transform=problem.output_transform)
    dyn = GradientDynamics(net.parameters(), lr=lr, schedule=schedule, final_ratio=final_ratio)
    hist = Trainer(problem, net, dyn, train, monitors=monitors).run()
    err = problem.relative_l2(net)
    card = {
        "problem": problem.name,
        "coefficients": dict(problem.coefficients),
        "relative_l2": err,
        "eval_grid": {"points": list(problem.eval_points), "lower": list(problem.lower),
                      "upper": list(problem.upper)},
        "status": hist.status,
        "recipe": {"optimizer": "adam", "lr": lr, "schedule": schedule, "final_ratio": final_ratio,
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
    if out is not None:
        card = save_base(net, card, out)
    return net, card
