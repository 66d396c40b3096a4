"""The whole ``python -m pinn_lora.adapt problem=<family> method=odelora`` command, as a user runs it,
on each family's default target: wall time of the process (start-up, base load, reference, training,
saving, plots) and the error it reports. Issue 13's goal: ≤ 2e-3 (Burgers), ≤ 3e-3 (Allen–Cahn),
≤ 5e-4 (Helmholtz) within 120 s on an idle 2-core machine, so the load average is recorded before
and after each command (it means something only when it is near the machine's own baseline).

    python benchmarks/headline.py [--method odelora] [--out benchmarks/results/headline_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GOALS = {"burgers": 2e-3, "allen_cahn": 3e-3, "helmholtz": 5e-4}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="odelora")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "headline_cpu.json"))
    ap.add_argument("--only", nargs="+", default=list(GOALS), help="these families (the others' rows are kept)")
    args = ap.parse_args()
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"runs": []}
    kept = [r for r in old["runs"] if r["family"] not in args.only or r["method"] != args.method]
    rows = []
    for family, goal in GOALS.items():
        if family not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pinn_lora.adapt", f"problem={family}",
                                   f"method={args.method}", "progress=false"], cwd=tmp, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            summaries = list(Path(tmp).rglob("summary.json"))
            s = json.loads(summaries[0].read_text()) if summaries else {}
        rows.append({"family": family, "method": args.method, "exit_code": proc.returncode, "wall_s": round(wall, 1),
                     "train_s": s.get("wall_time_s"), "steps": s.get("steps"), "base_error": s.get("base_error"),
                     "final_error": s.get("adapted_error"), "goal_error": goal, "goal_s": 120.0,
                     "met": bool(proc.returncode == 0 and s and s["adapted_error"] <= goal and wall <= 120.0),
                     "load_average_before": load, "load_average_after": os.getloadavg()})
        r = rows[-1]
        print(f"{family}: exit {r['exit_code']}, {r['wall_s']} s, {r['base_error']} -> {r['final_error']} "
              f"(goal {goal:g} in 120 s: {'met' if r['met'] else 'NOT met'}), load {load[0]:.2f}", flush=True)
    meta = {"device": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "note": "whole command in a fresh working directory; the machine's load average before and after each"}
    order = list(GOALS)
    rows = sorted(kept + rows, key=lambda r: (order.index(r["family"]), r["method"]))
    Path(args.out).write_text(json.dumps({**meta, "runs": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
