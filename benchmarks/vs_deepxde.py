"""Our training step against DeepXDE's ``Model.train`` on the same network, points, float type and optimiser.

    python benchmarks/vs_deepxde.py [--points 2000 8192] [--steps 200] [--device cpu]

Burgers (the target ν = 0.02/π), the shipped 4×64 tanh base network with its hard initial/boundary
transform, float64, Adam (lr 1e-3), collocation points fixed (no resampling in either loop). DeepXDE
trains a copy of the network (``to_deepxde``) through ``dde.data.TimePDE`` with the same residual
(``interop.deepxde_pde``); its time per step is ``Model.train(iterations=steps)`` divided by the steps,
after a warm-up call. Ours is ``Trainer.run`` of the same number of steps (full fine-tuning: the same
parameters and optimiser) divided by the steps, plus the adapter methods ``lora`` and ``odelora``
(Euler, the problem's recommended options). Both include each loop's own per-step overhead; ours
includes one final error evaluation. Writes benchmarks/results/vs_deepxde_<device>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from pinn_lora.core.dde import deepxde
from pinn_lora.interop.deepxde import deepxde_pde
from pinn_lora.methods import AttachContext, get_method
from pinn_lora.model.network import to_deepxde
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem
from pinn_lora.core.recipe import Recipe
from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.training.trainer import TrainConfig, Trainer, residual_loss
from pinn_lora.store.zoo import load_base


def time_deepxde(net, problem, n_points: int, steps: int) -> float:
    dde = deepxde()
    dde.config.set_default_float("float64")
    geom = dde.geometry.GeometryXTime(dde.geometry.Interval(*[problem.lower[0], problem.upper[0]]),
                                      dde.geometry.TimeDomain(problem.lower[1], problem.upper[1]))
    data = dde.data.TimePDE(geom, deepxde_pde(problem), [], num_domain=n_points, num_boundary=0, num_initial=0,
                            train_distribution="pseudo")
    model = dde.Model(data, to_deepxde(net))
    model.compile("adam", lr=1e-3)
    model.train(iterations=5, display_every=10**9, verbose=0)  # warm-up
    t0 = time.perf_counter()
    model.train(iterations=steps, display_every=10**9, verbose=0)
    return (time.perf_counter() - t0) / steps


def time_ours(name: str, net, problem, n_points: int, steps: int) -> float:
    net = copy.deepcopy(net)
    rec = Recipe.for_family(PROBLEMS.get("burgers")).adapt.method_options(name, METHODS.get(name).defaults)
    method = get_method(name, **{**rec, **({"lr": 1e-3, "schedule": "constant"} if name == "full" else {})})
    probe = torch.as_tensor(problem.sample(n_points, seed=3), dtype=torch.float64)
    model = method.attach(net, AttachContext(problem, lambda m: residual_loss(problem, m, probe), seed=0))
    cfg = TrainConfig(steps=steps, n_points=n_points, resample_every=10**9, eval_every=10**9, progress=False)
    warm = copy.deepcopy(model)  # warm-up: imports, allocator, caches
    Trainer(problem, warm, method.dynamics(warm), TrainConfig(steps=3, n_points=n_points, resample_every=10**9,
                                                              eval_every=10**9, progress=False)).run()
    hist = Trainer(problem, model, method.dynamics(model), cfg, after_step=method.after_step).run()
    return hist.wall_time / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, nargs="+", default=[2000, 8192])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    problem = get_problem("burgers").default_target()
    net, _, _ = load_base("burgers", dtype=torch.float64, device="cpu")
    problem.relative_l2(net)  # build the cached reference before timing
    rows = []
    for n in args.points:
        dde_ms = 1e3 * time_deepxde(net, problem, n, args.steps)
        row = {"points": n, "deepxde_ms": dde_ms}
        for name in ("full", "lora", "odelora"):
            ms = 1e3 * time_ours(name, net, problem, n, args.steps)
            row[f"{name}_ms"] = ms
            row[f"{name}_speedup_vs_deepxde"] = dde_ms / ms
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / "vs_deepxde_cpu.json")
    out.write_text(json.dumps({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                               "deepxde": deepxde().__version__, "machine": platform.machine(),
                               "threads": torch.get_num_threads(), "dtype": "float64", "optimizer": "Adam 1e-3",
                               "network": "shipped Burgers base, 4x64 tanh, hard IC/BC transform",
                               "steps_timed": args.steps, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
