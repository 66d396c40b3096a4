"""ODELoRA's implicit scheme at a fixed step h (trust-region adaptation off): does any h diverge?

    python benchmarks/implicit_window.py [--steps 10] [--only burgers]

For each default target and h in {1e-3, 1e-2, …, 1e3}: ``pinn_lora.adapt_to`` with ``method=odelora``,
``solver=lm`` (ODELoRA's implicit scheme: linearly implicit Euler on the Gauss–Newton linearised
flow, :func:`pinn_lora.methods.dynamics.odelora.implicit_dynamics`), ``lm_mu = 1/h``, ``lm_adaptive=false``
(every proposal is taken, none is checked), RAD points, no continuation, ``--steps`` steps. Records
the status (diverged or not), the final error and the largest loss seen, beside the explicit
schemes' learning-rate windows in ``docs/results/lr_window``. Writes
benchmarks/results/implicit_window_cpu.json with the device, torch version and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from pinn_lora import adapt_to
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem

FAMILIES = ("burgers", "allen_cahn", "helmholtz")
HS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", default=None, choices=FAMILIES)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).parent / "results" / "implicit_window_cpu.json")
    meta = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "steps": args.steps,
            "threads": args.threads, "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    rows = []
    for family in FAMILIES:
        if args.only and family != args.only:
            continue
        prob = get_problem(family).default_target()
        for h in HS:
            t0 = time.perf_counter()
            res = adapt_to(family, prob, "odelora", steps=args.steps, continuation="off", eval_every=args.steps,
                           loop_options={"lm_mu": 1.0 / h, "lm_adaptive": False}, progress=False, plots=False,
                           device="cpu")
            s = res.summary()
            rows.append({"family": family, "h": h, "status": s["status"], "base_error": s["base_error"],
                         "final_error": s["adapted_error"], "max_loss": max(r["loss"] for r in res.metrics),
                         "first_loss": res.metrics[0]["loss"], "wall_s": round(time.perf_counter() - t0, 1)})
            r = rows[-1]
            print(f"{family} h={h:g}: {r['status']}, error {r['base_error']:.3e} -> {r['final_error']:.3e}, "
                  f"loss {r['first_loss']:.2e} (max {r['max_loss']:.2e})", flush=True)
            out.write_text(json.dumps({**meta, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
