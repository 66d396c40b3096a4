"""Is the pretrained base worth shipping on every held-out target? ``scratch`` (a random network of the
base's architecture, trained on the target) given at least the wall time that ``odelora`` and ``lora``
took with the defaults on that target (the larger of the two, from adapt_targets_cpu.json), against
their final errors.

    python benchmarks/scratch_same_time.py [--only burgers] [--scale 1.0]

Scratch's recipe is the problem's first-order one (``adapt.first_order``: Adam, then the L-BFGS finish),
its step counts multiplied by wall / (the first-order recipe's own wall on that target in
adapt_targets_scratch_cpu.json) so that it can use the whole time, and stopped at the wall (error
evaluated every 25 steps; the last evaluation counts). The walls in adapt_targets_cpu.json were
measured under load 3-9, so scratch gets more compute here than the adapters had: the comparison
favours scratch. Writes benchmarks/results/scratch_same_time_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from pinn_lora.core.registry import get_problem
from pinn_lora.core.runtime import device_name
from pinn_lora.core.recipe import Recipe
from pinn_lora.core.registry import PROBLEMS
from time_to_accuracy import ours

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every wall (a smaller budget for a check)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "scratch_same_time_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adapters = json.loads((RESULTS / "adapt_targets_cpu.json").read_text())["runs"]
    own = {(r["family"], json.dumps(r["coefficients"], sort_keys=True)): r
           for r in json.loads((RESULTS / "adapt_targets_scratch_cpu.json").read_text())["runs"]}
    meta = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "threads": args.threads,
            "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    rows, seen = [], set()
    for r in adapters:
        key = (r["family"], json.dumps(r["coefficients"], sort_keys=True))
        if key in seen or (args.only and r["family"] != args.only):
            continue
        seen.add(key)
        both = {a["method"]: a for a in adapters if (a["family"], json.dumps(a["coefficients"], sort_keys=True)) == key}
        wall = args.scale * max(a["wall_s"] for a in both.values())
        first = Recipe.for_family(PROBLEMS.get(r["family"])).adapt.for_solver("method")
        factor = max(1.0, wall / own[key]["wall_s"]) if key in own else 1.0
        steps, lbfgs = math.ceil(first["steps"] * factor), math.ceil(first["lbfgs_steps"] * factor)
        prob = get_problem(r["family"], **r["coefficients"])
        curve = ours(r["family"], "scratch", wall, problem=prob, steps=steps, lbfgs_steps=lbfgs)
        row = {"family": r["family"], "coefficients": r["coefficients"], "wall_cap_s": wall,
               "scratch_steps": steps, "scratch_lbfgs_steps": lbfgs,
               "scratch_final_error": curve[-1][1] if curve else None, "scratch_seconds": curve[-1][0] if curve else None,
               **{f"{m}_final_error": a["final_error"] for m, a in both.items()},
               **{f"{m}_wall_s": a["wall_s"] for m, a in both.items()}, "curve": curve}
        row["adapters_better"] = all(row[f"{m}_final_error"] < row["scratch_final_error"] for m in both)
        rows.append(row)
        print(f"{r['family']} {r['coefficients']}: scratch {row['scratch_final_error']:.3e} in "
              f"{row['scratch_seconds']:.0f} s (cap {wall:.0f} s), "
              + ", ".join(f"{m} {a['final_error']:.3e} in {a['wall_s']:.0f} s" for m, a in both.items()), flush=True)
        Path(args.out).write_text(json.dumps({**meta, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
