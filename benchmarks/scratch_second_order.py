"""Is the pretrained base worth shipping? ``scratch`` (a random network on the target) with the
second-order step, the kernel-form Levenberg–Marquardt step on all its weights (solver=lm; its
first-order recipe is in results.md's ``defaults`` table), on the three default targets, evaluated after
every step, for a wall time comparable to the default adapters' runs.

    python benchmarks/scratch_second_order.py [--steps 12] [--threads 1]

Writes benchmarks/results/scratch_second_order_cpu.json (device, torch, load average at the start).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import pinn_lora
from pinn_lora.core.runtime import device_name


def one(family: str, steps: int) -> dict:
    prob = pinn_lora.get_problem(family).default_target()
    t = time.perf_counter()
    res = pinn_lora.adapt_to(family, prob, "scratch", solver="lm", continuation="off", steps=steps, eval_every=1,
                             progress=False, plots=False, device="cpu")
    return {"family": family, "coefficients": dict(prob.coefficients), "method": "scratch", "solver": "lm",
            "steps": steps, "wall_s": round(time.perf_counter() - t, 1), "final_error": res.error,
            "status": res.summary()["status"],
            "errors": [(r["step"], r["rel_l2"], round(r["time"], 1)) for r in res.metrics if "rel_l2" in r]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scratch_second_order_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"device": device_name(torch.device("cpu")), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    rows = []
    for family in ("burgers", "allen_cahn", "helmholtz"):
        rows.append(one(family, args.steps))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "errors"}), flush=True)
        Path(args.out).write_text(json.dumps({**meta, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
