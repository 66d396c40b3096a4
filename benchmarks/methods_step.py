"""Time and memory of one training step per method, on the shipped Burgers base.

    python benchmarks/methods_step.py [--methods lora cla ...] [--device cpu|cuda] [--points 4000]

One step is exactly what the training loop runs: the residual loss on a batch
of collocation points (second derivatives through the adapted network),
backward, and the method's update (an Adam step, or the RK stages of ODELoRA).
Reported per method, relative to ``lora``:

- ``step_ms``: median wall time of a step (after warm-up steps);
- ``saved_bytes``: bytes autograd saves for the backward pass of one loss
  evaluation (distinct storages, via ``saved_tensors_hooks``): the activation
  memory, the part a sparse selector (cLA) is claimed to shrink;
- ``state_bytes``: trainable tensors + their gradients + optimiser moments (ODELoRA's RMSprop
  second moments included);
- ``peak_bytes`` (CUDA only): ``torch.cuda.max_memory_allocated`` over a step,
  minus the memory held before it.

Writes benchmarks/results/methods_step_<device>.json (device, torch version
and thread count included)."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pinn_lora.methods import AttachContext, get_method, trainable_parameters
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import METHODS, get_problem
from pinn_lora.core.recipe import Recipe
from pinn_lora.core.registry import PROBLEMS
from pinn_lora.training.trainer import TrainConfig, Trainer, residual_loss
from pinn_lora.store.zoo import load_base


def saved_bytes(loss_fn) -> int:
    """Bytes of the distinct storages autograd saves while building one loss's graph."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    return sum(seen.values())


def state_bytes(model: torch.nn.Module, dynamics: Any) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(2 * p.numel() * p.element_size() for p in params)  # the tensor and its gradient
    opt = getattr(dynamics, "optimizer", None)
    if opt is not None:
        total += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                     if torch.is_tensor(v) and v.dim() > 0)
    for v in getattr(dynamics, "second_moments", None) or []:  # ODELoRA's RMSprop metric (full-weight sized)
        if v is not None:
            total += v.numel() * v.element_size()
    return total


def measure(name: str, device: torch.device, n_points: int, steps: int, warmup: int) -> dict[str, Any]:
    problem = get_problem("burgers").default_target()
    net, _, _ = load_base("burgers", device=device)
    rec = Recipe.for_family(PROBLEMS.get("burgers")).adapt.method_options(name, METHODS.get(name).defaults)
    method = get_method(name, **rec)
    points = torch.as_tensor(problem.sample(n_points, seed=1), device=device)

    def loss_fn(m: torch.nn.Module = net) -> torch.Tensor:
        return residual_loss(problem, m, points)

    model = method.attach(net, AttachContext(problem, loss_fn, seed=0))
    dynamics = method.dynamics(model)
    trainer = Trainer(problem, model, dynamics, TrainConfig(progress=False))
    times = []
    peak = None
    for i in range(warmup + steps):
        closure = trainer.objective.at(points)  # the loop's own objective (gradient zeroing, stats)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        dynamics.step(closure)
        method.after_step(i, model, dynamics)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = max(peak or 0, torch.cuda.max_memory_allocated() - held)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {"method": method.label(), "trainable_parameters": trainable_parameters(model),
           "evaluations_per_step": dynamics.evaluations_per_step,
           "step_ms": 1e3 * statistics.median(times), "step_ms_iqr": 1e3 * _iqr(times),
           "saved_bytes": saved_bytes(lambda: loss_fn(model)), "state_bytes": state_bytes(model, dynamics)}
    if peak is not None:
        out["peak_bytes"] = peak
    return out


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--points", type=int, default=4000, help="collocation points per step (Burgers default)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    names = args.methods or [m for m in METHODS.names() if m != "scratch"]  # scratch = full's step
    if "lora" not in names:
        names = ["lora", *names]
    rows = {}
    for name in names:
        rows[name] = measure(name, device, args.points, args.steps, args.warmup)
        print(f"{name:<11} {rows[name]['step_ms']:8.2f} ms  saved {rows[name]['saved_bytes'] / 2**20:7.2f} MiB  "
              f"state {rows[name]['state_bytes'] / 2**10:8.1f} KiB", flush=True)
    ref = rows["lora"]
    for row in rows.values():
        for key in ("step_ms", "saved_bytes", "state_bytes", "peak_bytes"):
            if key in row:
                row[f"{key}_vs_lora"] = row[key] / ref[key]
    result = {"device": device_name(device), "torch": torch.__version__, "machine": platform.machine(),
              "threads": torch.get_num_threads(), "dtype": "float64", "problem": "burgers (shipped base, 4x64 tanh)",
              "points": args.points, "steps_timed": args.steps, "methods": rows}
    out = Path(args.out or Path(__file__).parent / "results" / f"methods_step_{device.type}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
