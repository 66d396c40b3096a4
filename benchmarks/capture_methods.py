"""Which methods run from one captured CUDA graph, and why not where they do not (issue 17: every
method captured, or its reason in docs/).

    python benchmarks/capture_methods.py [--methods lora odelora ...] [--points 2000] [--steps 60]

Each registered method adapts the shipped Burgers base to its default target on CUDA with
first-order steps (``solver=method``), ``cuda_graph=auto``, points fixed, no continuation, no
L-BFGS finish; the run's ``settings.cuda_graph`` says whether its steps were captured and
``cuda_graph_why`` why not. Time per step: between the records of steps 19 and the last (after
warm-up and capture). Writes benchmarks/results/capture_methods_<device>.json, the device named."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pinn_lora import adapt_to
from pinn_lora.core.registry import METHODS, get_problem
from pinn_lora.core.runtime import device_name


def one(method: str, points: int, steps: int, device: str) -> dict:
    t0 = time.perf_counter()
    try:
        res = adapt_to("burgers", get_problem("burgers").default_target(), method, solver="method", steps=steps, n_points=points,
                       resample_every=10**6, eval_every=10**6, lbfgs_steps=0, continuation="off", device=device,
                       cuda_graph="auto", sync_every=20, progress=False, plots=False)
    except Exception as exc:  # noqa: BLE001 - a method that cannot run here is a row, not the end
        return {"method": method, "error": f"{type(exc).__name__}: {exc}"}
    t = {r["step"]: r["time"] for r in res.history.records if r["phase"] == "train"}
    return {"method": method, "captured": res.extra["settings"]["cuda_graph"],
            "why_not": res.extra.get("cuda_graph_why", ""),
            "ms_per_step": 1e3 * (t[steps - 1] - t[19]) / (steps - 20) if steps > 21 else None,
            "status": res.summary()["status"], "wall_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    out = Path(args.out or Path(__file__).parent / "results" / f"capture_methods_{dev.type}.json")
    meta = {"device": device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": sys.version.split()[0], "points": args.points, "steps": args.steps, "dtype": "float64"}
    rows = []
    for method in args.methods or METHODS.names():
        rows.append(one(method, args.points, args.steps, args.device))
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({**meta, "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}: {sum(bool(r.get('captured')) for r in rows)}/{len(rows)} captured")


if __name__ == "__main__":
    main()
