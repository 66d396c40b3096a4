"""The default adaptation of every shipped base to its default target, per
method: error before/after, wall time, steps. Uses exactly what
`python -m pinn_lora.adapt problem=<p> method=<m>` uses (the composed config).

    python benchmarks/adapt_defaults.py [--problems burgers ...] [--methods lora odelora]

Writes benchmarks/results/adapt_defaults.json (device and torch version included)."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from hydra import compose
from omegaconf import OmegaConf

from pinn_lora.cli import hydra_context
from pinn_lora.pretrain import device_name
from pinn_lora.session import run_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", nargs="+", default=["burgers", "allen_cahn", "helmholtz"])
    ap.add_argument("--methods", nargs="+", default=["lora", "odelora"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "adapt_defaults.json"))
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    for prob in args.problems:
        for meth in args.methods:
            with hydra_context():
                cfg = OmegaConf.to_container(compose("adapt", [f"problem={prob}", f"method={meth}", "device=cpu",
                                                               "progress=false", "plots=false"]), resolve=False)
            cfg.pop("hydra", None)
            cfg.pop("out", None)
            res = run_config(cfg, run_dir=None)
            s = res.summary()
            results["runs"][f"{prob}/{meth}"] = {k: s[k] for k in (
                "coefficients", "base_coefficients", "method", "trainable_parameters", "steps", "evaluations",
                "wall_time_s", "base_error", "adapted_error", "improvement", "status")}
            if "error_after_method_steps" in s:  # before the L-BFGS finish
                results["runs"][f"{prob}/{meth}"]["error_after_method_steps"] = s["error_after_method_steps"]
            print(res.summary_line(), flush=True)
            results.update({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                            "machine": platform.machine(), "threads": torch.get_num_threads(),
                            "note": "2-core CPU container, float64"})
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")  # after every run: a long sweep can resume


if __name__ == "__main__":
    main()
