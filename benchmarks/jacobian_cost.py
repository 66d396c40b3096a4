"""The residual Jacobian's cost against one loss-and-gradient evaluation, per method (issue 13,
item 2: goal ≤ 10× for rank-4 LoRA at 4 000 points on the 2-core CPU).

Each method is attached to the shipped Burgers base at its default target (float64); on the same
4 000 points the script times, alternately, the training loss with its backward pass and
:func:`pinn_lora.model.jacobian.residual_jacobian` (J: points × trainable parameters), and records the
median of each, their ratio and which engine built J (``structured``: the jet pass with the
adapter's factors; ``transform``: per-point ``torch.func`` transforms) and, for the structured
engine, how many layers gave their per-point gradients by their own formula
(``AdapterLinear.point_gradients``) rather than the contraction with ∂W/∂θ.

    python benchmarks/jacobian_cost.py [--methods lora dora ...] [--points 4000] [--repeats 3] [--threads 2]

Writes benchmarks/results/jacobian_cost_cpu.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pinn_lora.model.jacobian import _own_formula, residual_jacobian, structured_unsupported
from pinn_lora.methods import AttachContext, get_method
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import METHODS, get_problem
from pinn_lora.training.trainer import residual_loss
from pinn_lora.store.zoo import load_base


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="burgers")
    ap.add_argument("--methods", nargs="+", default=METHODS.names())
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "jacobian_cost_cpu.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prob = get_problem(args.problem).default_target()
    pts = torch.as_tensor(prob.sample(args.points, seed=1), dtype=torch.float64)
    rows = {}
    for name in args.methods:
        net = load_base(args.problem)[0]
        ctx = AttachContext(prob, lambda m: residual_loss(prob, m, pts), seed=0)
        model = get_method(name).attach(net, ctx)
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_and_grad() -> None:
            for p in params:
                p.grad = None
            residual_loss(prob, model, pts).backward()

        loss_and_grad(), residual_jacobian(prob, model, pts[:256])  # warm-up
        lg, jac = [], []
        for _ in range(args.repeats):
            lg.append(timed(loss_and_grad))
            jac.append(timed(lambda: residual_jacobian(prob, model, pts)))
        why = structured_unsupported(model)
        rows[name] = {"trainable_parameters": sum(p.numel() for p in params),
                      "loss_and_gradient_ms": 1e3 * statistics.median(lg), "jacobian_ms": 1e3 * statistics.median(jac),
                      "ratio": statistics.median(jac) / statistics.median(lg),
                      "engine": "transform" if why else "structured", "why_not_structured": why or None,
                      "own_formula_layers": None if why else sum(_own_formula(lin) for lin in model.linears),
                      "plain_layers": sum(isinstance(lin, torch.nn.Linear) for lin in model.linears),
                      "layers": len(model.linears)}
        r = rows[name]
        print(f"{name:12s} P={r['trainable_parameters']:5d} loss+grad {r['loss_and_gradient_ms']:8.1f} ms  "
              f"J {r['jacobian_ms']:9.1f} ms  ratio {r['ratio']:6.1f}  {r['engine']} "
              f"({r['own_formula_layers']}/{r['layers']} layers by their own formula)", flush=True)
    out = Path(args.out)
    out.write_text(json.dumps({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                               "machine": platform.machine(), "threads": torch.get_num_threads(),
                               "load_average": os.getloadavg(), "problem": args.problem, "points": args.points,
                               "dtype": "float64", "repeats": args.repeats, "methods": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
