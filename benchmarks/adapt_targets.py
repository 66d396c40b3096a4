"""Adaptation with the defaults on held-out targets: does every run end well below the base, and
does any evaluation during the run go above it?

    python benchmarks/adapt_targets.py [--methods odelora lora] [--scratch] [--only burgers] [--defaults]

For each target (issue 13's list) and method, ``pinn_lora.adapt_to`` runs with the problem's
default recipe (whatever ``configs/problem/*.yaml`` recommends: today solver=lm, sampling=rad) and
evaluates the relative L2 error after *every* step (second-order steps are few), so the largest
error during the run is seen. ``--scratch`` adds a random network trained with the first-order
recipe (``scratch`` has too many parameters for the dense second-order step), for the question
"is the pretrained base worth shipping". Writes benchmarks/results/adapt_targets_<device>.json
with the device, torch version and the machine's load average at the start (the wall times are
only comparable on an idle machine).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from pinn_lora import adapt_to
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem

PI = math.pi
TARGETS = ([("burgers", {"nu": v / PI}) for v in (0.005, 0.0075, 0.015, 0.02, 0.03, 0.05)]
           + [("allen_cahn", {"gamma": g, "d": 1e-3}) for g in (2.0, 3.0, 6.0)]
           + [("allen_cahn", {"gamma": 5.0, "d": d}) for d in (5e-4, 2e-3)]
           + [("helmholtz", {"k": k}) for k in (2.0, 3.0, 6.0)])


def one(family: str, coeffs: dict, method: str, every: int, **kw) -> dict:
    prob = get_problem(family, **coeffs)
    t0 = time.perf_counter()
    res = adapt_to(family, prob, method, eval_every=every, progress=False, plots=False, device="cpu", **kw)
    wall = time.perf_counter() - t0
    s = res.summary()
    errs = [r["rel_l2"] for r in res.metrics if "rel_l2" in r]
    return {"family": family, "coefficients": coeffs, "method": method, "options": kw,
            "base_error": s["base_error"], "final_error": s["adapted_error"], "max_error_during": max(errs),
            "ratio": s["base_error"] / s["adapted_error"], "steps": s["steps"], "status": s["status"],
            "validation_residual_base": s["validation_residual_base"], "validation_residual": s["validation_residual"],
            "wall_s": round(wall, 1), "train_s": s["wall_time_s"], "solver": s["settings"]["solver"],
            "sampling": s["settings"]["sampling"],
            "errors": [(r["step"], r["rel_l2"]) for r in res.metrics if "rel_l2" in r]}


def key(row: dict) -> tuple:
    return row["family"], tuple(sorted(row["coefficients"].items())), row["method"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["odelora", "lora"])
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--only", default=None, help="one family")
    ap.add_argument("--defaults", action="store_true", help="only each family's default target")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", default=None, help="a results file whose runs are kept (and not run again)")
    ap.add_argument("--shard", default="1/1", help="k/n: run every n-th job from the k-th (parallel shards)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge", nargs="+", default=None, help="only merge these results files into --out")
    args = ap.parse_args()
    out = Path(args.out or Path(__file__).parent / "results" / "adapt_targets_cpu.json")
    if args.merge:
        files = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = {key(r): r for f in files for r in f["runs"]}
        order = {(f, tuple(sorted(c.items()))): i for i, (f, c) in enumerate(TARGETS)}
        runs = sorted(rows.values(), key=lambda r: (order.get(key(r)[:2], 99), r["method"] != "odelora", r["method"]))
        meta = {k: v for k, v in files[-1].items() if k != "runs"}
        meta["load_average_at_start"] = [f.get("load_average_at_start") for f in files]
        meta["note"] = " ".join(dict.fromkeys(f["note"] for f in files if f.get("note")))
        out.write_text(json.dumps({**meta, "runs": runs}, indent=1))
        print(f"wrote {out}: {len(runs)} runs")
        return
    torch.set_num_threads(args.threads)
    kept = {key(r): r for r in json.loads(Path(args.keep).read_text())["runs"]} if args.keep else {}
    meta = {"device": device_name(torch.device("cpu")), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    jobs = []
    for family, coeffs in TARGETS:
        if args.only and family != args.only:
            continue
        if args.defaults and get_problem(family, **coeffs) != get_problem(family).default_target():
            continue
        jobs += [(family, coeffs, m) for m in args.methods + (["scratch"] if args.scratch else [])]
    jobs = [j for j in jobs if (j[0], tuple(sorted(j[1].items())), j[2]) not in kept]
    k, n = (int(x) for x in args.shard.split("/"))
    rows = []
    for family, coeffs, method in jobs[k - 1::n]:
        if method == "scratch":
            rows.append(one(family, coeffs, "scratch", every=100, solver="method"))
        else:
            rows.append(one(family, coeffs, method, every=1))
        r = rows[-1]
        print(f"{family} {coeffs} {method}: base {r['base_error']:.3e} -> {r['final_error']:.3e} "
              f"({r['ratio']:.1f}x), max during {r['max_error_during']:.3e}, {r['wall_s']} s, {r['status']}",
              flush=True)
        out.write_text(json.dumps({**meta, "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
