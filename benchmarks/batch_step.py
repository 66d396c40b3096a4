"""Many coefficients at once: time per step of one batched run over K Burgers viscosities
against K separate runs.

    python benchmarks/batch_step.py [--ks 1 8 32] [--points 2000] [--steps 300] [--device cuda|cpu] [--both]

LoRA (rank 4) on the shipped Burgers base, float64, points fixed. The batched run is
``pinn_lora.runs.many.BatchTrainer`` (one stacked jet pass, CUDA graph on a GPU); its time per step
is measured between the records of step 99 and the last (steady state, ``sync_every`` 100). The K copies'
rows go through the output transform and the residual once (flattened, per-row coefficients);
``--both`` also times the copy-by-copy residual for K > 1.
"K separate runs" is K × the time per step of the K = 1 run. Writes JSON (device named)."""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from pinn_lora.runs.many import BatchTrainer, Stacked
from pinn_lora.methods import AttachContext, get_method
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem
from pinn_lora.training.trainer import TrainConfig, residual_loss
from pinn_lora.store.zoo import load_base


def time_batch(k: int, n_points: int, steps: int, device: torch.device, flatten: bool = True) -> dict:
    net, _, _ = load_base("burgers", dtype=torch.float64, device=device)
    nus = torch.logspace(-3, -1.3, k).tolist()
    problems = [get_problem("burgers", nu=nu) for nu in nus]
    models, methods = [], []
    for prob in problems:
        meth = get_method("lora")
        probe = torch.as_tensor(prob.sample(n_points, seed=3), dtype=torch.float64, device=device)
        models.append(meth.attach(copy.deepcopy(net), AttachContext(prob, lambda m, p=prob, x=probe:
                                                                    residual_loss(p, m, x), 0)))
        methods.append(meth)
    stacked = Stacked(models)
    cfg = TrainConfig(steps=steps, n_points=n_points, resample_every=10**9, eval_every=10**9, progress=False,
                      sync_every=100, derivatives="jets")
    tr = BatchTrainer(problems, stacked, methods[0].dynamics(stacked), cfg)
    tr.flattened = tr.flattened and flatten
    hist = tr.run()
    t = {r["step"]: r["time"] for r in hist.records if r["phase"] == "train"}
    return {"k": k, "residual": "flattened" if tr.flattened else ("one copy" if k == 1 else "copy by copy"),
            "ms_per_step": 1e3 * (t[steps - 1] - t[99]) / (steps - 100), "captured": tr.graph_captured,
            "ops_per_loss_and_gradient": count_ops(tr, n_points, device), "status": hist.status}


def count_ops(tr: BatchTrainer, n_points: int, device: torch.device) -> int:
    """Operators (aten calls, each one kernel launch or more on a GPU) in one loss-and-gradient
    evaluation: what launch-bound GPU steps pay for, counted on any device."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.as_tensor(tr.problem.sample(n_points, seed=4), dtype=torch.float64, device=device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = sum(v.sum() for v in tr._loss_terms(x).values())
        loss.backward()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")  # top-level operators only
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--both", action="store_true", help="K > 1 also with the residual run copy by copy (the "
                    "path before issue 17's flattened rows)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows = []
    for k in args.ks:
        for flatten in ((True, False) if k > 1 and args.both else (True,)):
            row = time_batch(k, args.points, args.steps, device, flatten)
            rows.append(row)
            print(json.dumps(row), flush=True)
    one = next((r["ms_per_step"] for r in rows if r["k"] == 1), None)
    for r in rows:
        if one:
            r["vs_k1"] = r["ms_per_step"] / one
            r["speedup_vs_separate"] = r["k"] * one / r["ms_per_step"]
    out = Path(args.out or Path(__file__).parent / "results" / f"batch_step_{device.type}.json")
    out.write_text(json.dumps({"device": device_name(device), "torch": torch.__version__, "dtype": "float64",
                               "method": "lora rank 4", "points": args.points, "steps_timed": args.steps - 100,
                               "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
