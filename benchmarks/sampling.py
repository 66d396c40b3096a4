"""Uniform points, RAD and RAR-D side by side: the default adaptation of each shipped base to its
default target with only ``sampling`` changed (issue 13, item 1), one seed.

    python benchmarks/sampling.py [--problems burgers ...] [--methods odelora] [--samplings uniform rad rar_d]
                                  [--threads 1]

Writes benchmarks/results/sampling_cpu.json (rewritten after every run; runs already in it are skipped)."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch

from pinn_lora import adapt_to
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", nargs="+", default=["burgers", "allen_cahn", "helmholtz"])
    ap.add_argument("--methods", nargs="+", default=["odelora"])
    ap.add_argument("--samplings", nargs="+", default=["uniform", "rad", "rar_d"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampling_cpu.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["problem"], r["method"], r["sampling"]) for r in data["runs"]}
    for prob, meth, sampling in itertools.product(args.problems, args.methods, args.samplings):
        if (prob, meth, sampling) in done:
            continue
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = adapt_to(prob, get_problem(prob).default_target(), meth, sampling=sampling, device="cpu",
                       progress=False, plots=False)
        wall = time.perf_counter() - t0
        s = res.summary()
        data["runs"].append({"problem": prob, "method": meth, "sampling": sampling, "base_error": s["base_error"],
                             "final_error": s["adapted_error"], "ratio": s["improvement"], "steps": s["steps"],
                             "status": s["status"], "validation_residual": s["validation_residual"],
                             "wall_s": round(wall, 1), "load_before": round(load, 2)})
        print(res.summary_line(), flush=True)
        data.update({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                     "machine": platform.machine(), "threads": torch.get_num_threads(), "dtype": "float64",
                     "note": "the default recipe of each family (solver=lm, continuation=auto, its points and steps) "
                             "with only sampling changed; seed 0"})
        out.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
