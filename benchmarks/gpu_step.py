"""Training-step time on a GPU: eager vs CUDA graph, nested autograd vs jets, against DeepXDE's loop.

    python benchmarks/gpu_step.py [--points 2000 8192] [--steps 400] [--out FILE]

The Burgers setup of ``vs_deepxde.py`` (the shipped 4×64 tanh base with its hard transform,
target ν = 0.02/π, float64, points fixed), on CUDA. Ours is ``Trainer.run`` with
``sync_every = 100``: the time per step is measured between the records of steps 99 and
``steps − 1`` (after warm-up and capture), so it is the steady state of the loop, host reads
included. Variants: ``eager-autograd`` (the CPU default), ``eager-jets`` (jets, no graph),
``graph`` (jets + CUDA graph, the CUDA default). Methods: ``full`` (the same parameters and
Adam as DeepXDE), ``lora``, ``odelora`` (Euler, the problem's recommended rmsprop options) and
``odelora-rk4``. DeepXDE: ``Model.train(iterations=steps)`` / steps after a warm-up call, with
torch's default device set to CUDA as DeepXDE itself does. Writes JSON (device named)."""
from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from pinn_lora.methods import AttachContext, get_method
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem
from pinn_lora.core.recipe import Recipe
from pinn_lora.core.registry import METHODS as REGISTERED, PROBLEMS
from pinn_lora.training.trainer import TrainConfig, Trainer, residual_loss
from pinn_lora.store.zoo import load_base

VARIANTS = {"eager-autograd": dict(derivatives="autograd", cuda_graph=False),
            "eager-jets": dict(derivatives="jets", cuda_graph=False),
            "graph": dict(derivatives="jets", cuda_graph=True)}
METHODS = {"full": ("full", {"lr": 1e-3, "schedule": "constant"}), "lora": ("lora", {}),
           "odelora": ("odelora", {}), "odelora-rk4": ("odelora", {"scheme": "rk4"}),
           # without the per-step rebalance (QR + SVD of r×r matrices, which torch runs through the host on CUDA)
           "odelora-norebalance": ("odelora", {"rebalance": False}),
           "odelora-rk4-norebalance": ("odelora", {"scheme": "rk4", "rebalance": False})}
DEFAULT_METHODS = ["full", "lora", "odelora", "odelora-rk4"]


def time_ours(label: str, net, problem, n_points: int, steps: int, variant: str, device) -> dict:
    name, extra = METHODS[label]
    rec = Recipe.for_family(PROBLEMS.get("burgers")).adapt.method_options(name, REGISTERED.get(name).defaults)
    method = get_method(name, **{**rec, **extra})
    probe = torch.as_tensor(problem.sample(n_points, seed=3), dtype=torch.float64, device=device)
    model = method.attach(copy.deepcopy(net), AttachContext(problem, lambda m: residual_loss(problem, m, probe), 0))
    cfg = TrainConfig(steps=steps, n_points=n_points, resample_every=10**9, eval_every=10**9, progress=False,
                      sync_every=100, **VARIANTS[variant])
    tr = Trainer(problem, model, method.dynamics(model), cfg, after_step=method.step_hook())
    hist = tr.run()
    t = {r["step"]: r["time"] for r in hist.records if r["phase"] == "train"}
    ms = 1e3 * (t[steps - 1] - t[99]) / (steps - 100)
    return {"ms": ms, "captured": tr.graph_captured, "status": hist.status, "final_loss": hist.records[-1]["loss"]}


def time_deepxde(net, problem, n_points: int, steps: int, device) -> float:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from vs_deepxde import time_deepxde as run

    with torch.device(device):
        return 1e3 * run(net, problem, n_points, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, nargs="+", default=[2000, 8192])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--no-deepxde", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    problem = get_problem("burgers").default_target()
    net, _, _ = load_base("burgers", dtype=torch.float64, device=device)
    problem.relative_l2(net)
    rows = []
    for n in args.points:
        row: dict = {"points": n}
        if not args.no_deepxde:
            row["deepxde_ms"] = time_deepxde(net, problem, n, args.steps, device)
        for label in args.methods:
            for variant in VARIANTS:
                r = time_ours(label, net, problem, n, args.steps, variant, device)
                row[f"{label}/{variant}_ms"] = r["ms"]
                row[f"{label}/{variant}_captured"] = r["captured"]
                row[f"{label}/{variant}_status"] = r["status"]
                print(n, label, variant, json.dumps(r), flush=True)
        for label in args.methods:
            row[f"{label}/graph_speedup_vs_eager"] = row[f"{label}/eager-autograd_ms"] / row[f"{label}/graph_ms"]
            if "deepxde_ms" in row:
                row[f"{label}/graph_speedup_vs_deepxde"] = row["deepxde_ms"] / row[f"{label}/graph_ms"]
                row[f"{label}/eager_speedup_vs_deepxde"] = row["deepxde_ms"] / row[f"{label}/eager-autograd_ms"]
            if "lora" in args.methods and f"{label}/graph_ms" in row:
                row[f"{label}/graph_vs_lora"] = row[f"{label}/graph_ms"] / row["lora/graph_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / "gpu_step.json")
    dde = None
    try:
        from pinn_lora.core.dde import deepxde
        dde = deepxde().__version__
    except Exception:  # noqa: BLE001
        pass
    out.write_text(json.dumps({"device": device_name(device), "torch": torch.__version__, "deepxde": dde,
                               "machine": platform.machine(), "dtype": "float64", "steps_timed": args.steps - 100,
                               "network": "shipped Burgers base, 4x64 tanh, hard IC/BC transform",
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
