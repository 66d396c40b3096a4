"""The default adaptation of every shipped base to its default target, per
method: error before/after, wall time, steps. Uses exactly what
`python -m pinn_lora.adapt problem=<p> method=<m>` uses (the composed config).

    python benchmarks/adapt_defaults.py [--problems burgers ...] [--methods lora odelora] [--seeds 0 1 2]
                                        [--threads 1] [--out FILE]

Writes benchmarks/results/adapt_defaults.json (device and torch version included), one entry per
"family/method" (seed 0) or "family/method/seedN"; the file is rewritten after every run, and runs
already in it are skipped, so a long sweep can be stopped and resumed. The largest relative L2 error
among the run's evaluations (every ``eval_every`` steps) is recorded beside the final one."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import subprocess
from pathlib import Path

import torch
from hydra import compose
from omegaconf import OmegaConf

from pinn_lora.cli.common import hydra_context
from pinn_lora.runs.pretrain import device_name
from pinn_lora.runs.from_config import run_config


def commit() -> str:
    """The checkout's commit when the file was started (which defaults were measured)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", nargs="+", default=["burgers", "allen_cahn", "helmholtz"])
    ap.add_argument("--methods", nargs="+", default=["lora", "odelora"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "adapt_defaults.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    for seed, prob, meth in itertools.product(args.seeds, args.problems, args.methods):
        name = f"{prob}/{meth}" + (f"/seed{seed}" if seed else "")
        if name in results["runs"]:
            continue  # measured already: a stopped sweep resumes (a new measurement goes to a new --out)
        with hydra_context():
            cfg = OmegaConf.to_container(compose("adapt", [f"problem={prob}", f"method={meth}", "device=cpu",
                                                           "progress=false", "plots=false", f"seed={seed}"]),
                                         resolve=False)
        cfg.pop("hydra", None)
        cfg.pop("out", None)
        res = run_config(cfg, run_dir=None)
        s = res.summary()
        row = results["runs"][name] = {k: s.get(k) for k in (
            "coefficients", "base_coefficients", "method", "trainable_parameters", "steps", "evaluations",
            "wall_time_s", "base_error", "adapted_error", "improvement", "status", "validation_residual_base",
            "validation_residual")}
        row["seed"] = seed
        row["solver"] = s.get("settings", {}).get("solver")
        row["sampling"] = s.get("settings", {}).get("sampling")
        errors = [r["rel_l2"] for r in res.metrics if "rel_l2" in r and math.isfinite(r["rel_l2"])]
        row["max_error_during"] = max(errors) if errors else None  # over the run's evaluations (every eval_every)
        row["errors_evaluated"] = len(errors)
        if "error_after_method_steps" in s:  # before the L-BFGS finish
            row["error_after_method_steps"] = s["error_after_method_steps"]
        print(res.summary_line(), flush=True)
        results.update({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                        "machine": platform.machine(), "threads": torch.get_num_threads(),
                        "note": "2-core CPU container, float64", "commit": results.get("commit") or commit()})
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")  # after every run: a long sweep can resume


if __name__ == "__main__":
    main()
