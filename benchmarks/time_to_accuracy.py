"""Error against wall time on the default targets, four routes side by side in one run:

    python benchmarks/time_to_accuracy.py [--cap 600] [--only burgers] [--routes defaults deepxde ...] [--device cuda]

* ``defaults``: ``python -m pinn_lora.adapt`` as shipped (``pinn_lora.adapt_to`` with the problem's
  recommendations: today Levenberg–Marquardt, RAD points and continuation), ``method=odelora``;
* ``first_order``: the old recipe, the method's own Adam-type steps then the L-BFGS finish
  (``solver=method``: the problem's ``adapt.first_order`` section), ``method=odelora``;
* ``scratch``: a random network of the same architecture trained with the first-order recipe
  (``method=scratch``);
* ``deepxde``: DeepXDE's own transfer route (DeepXDE issue #188): our base restored into a
  ``dde.nn.FNN`` (same weights and hard-constraint transform), a ``dde.Model`` on the target's PDE
  with the same number of uniform points, float64, Adam (lr 1e-3) and then DeepXDE's L-BFGS.

Each route runs until it ends or reaches ``--cap`` seconds. The error is evaluated against the
reference every step of the second-order route and every few hundred iterations of the others;
evaluation time is not counted in DeepXDE's clock (ours includes it: it is small next to a step).
Time to 1e-2 and 1e-3 is the first evaluation at or below that error; a route that never gets
there counts as the cap, so a ratio against it is a lower bound. Writes
benchmarks/results/time_to_accuracy_<device>.json with the device, torch version and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from pinn_lora import adapt_to
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem
from pinn_lora.core.recipe import Recipe
from pinn_lora.core.registry import PROBLEMS
from pinn_lora.store.zoo import load_base

FAMILIES = ("burgers", "allen_cahn", "helmholtz")
ROUTES = ("defaults", "first_order", "scratch", "deepxde")
LEVELS = (1e-2, 1e-3)


class _Cap(Exception):
    pass


def ours(family: str, route: str, cap: float, device: str = "cpu", problem=None,
         **overrides) -> list[tuple[float, float]]:
    """(seconds, error) of one of our routes; stops at ``cap`` seconds (the curve up to there). ``problem``:
    another target than the default; ``overrides``: ``adapt_to`` keywords on top of the route's."""
    from pinn_lora.training.trainer import Monitor

    prob = problem or get_problem(family).default_target()
    curve: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    class Clock(Monitor):
        def on_record(self, record):
            if "rel_l2" in record:
                curve.append((time.perf_counter() - t0, record["rel_l2"]))
            if time.perf_counter() - t0 > cap:
                raise _Cap

    kw = {"defaults": dict(eval_every=1), "first_order": dict(solver="method", eval_every=25),
          "scratch": dict(solver="method", eval_every=25)}[route]
    method = "scratch" if route == "scratch" else "odelora"
    kw.update(overrides)
    try:
        res = adapt_to(family, prob, method, progress=False, plots=False, device=device, monitors=[Clock()], **kw)
        curve.append((time.perf_counter() - t0, res.error))
    except _Cap:
        pass
    return curve


def deepxde_route(family: str, cap: float, adam: int = 20000, lbfgs: int = 20000,
                  device: str = "cpu") -> list[tuple[float, float]]:
    from pinn_lora.core.dde import deepxde
    from pinn_lora.interop.deepxde import deepxde_pde
    from pinn_lora.model.network import to_deepxde

    dde = deepxde()
    dde.config.set_default_float("float64")
    prob = get_problem(family).default_target()
    if device != "cpu":  # DeepXDE's torch backend puts its tensors on torch's default device
        torch.set_default_device(device)
    net, _, _ = load_base(family, dtype=torch.float64, device=torch.device(device))
    n_points = Recipe.for_family(PROBLEMS.get(family)).adapt.n_points
    data = dde.data.PDE(prob.geometry(), deepxde_pde(prob), [], num_domain=n_points, num_boundary=0,
                        train_distribution="pseudo")
    fnn = to_deepxde(net)
    model = dde.Model(data, fnn)
    curve: list[tuple[float, float]] = []
    clock = {"start": time.perf_counter(), "paused": 0.0}

    class Watch(dde.callbacks.Callback):
        def __init__(self, every: int) -> None:
            super().__init__()
            self.every, self.n = every, 0

        def on_epoch_end(self) -> None:
            self.n += 1
            if self.n % self.every:
                return
            t = time.perf_counter()
            elapsed = t - clock["start"] - clock["paused"]
            curve.append((elapsed, prob.relative_l2(fnn)))
            clock["paused"] += time.perf_counter() - t
            if elapsed > cap:
                self.model.stop_training = True

    model.compile("adam", lr=1e-3)
    model.train(iterations=adam, display_every=10**9, verbose=0, callbacks=[Watch(200)])
    if curve and curve[-1][0] < cap:
        dde.optimizers.set_LBFGS_options(maxiter=lbfgs)
        model.compile("L-BFGS")
        model.train(display_every=10**9, verbose=0, callbacks=[Watch(100)])
    return curve


def reach(curve: list[tuple[float, float]], level: float, cap: float) -> tuple[float, bool]:
    """(seconds to ``level``, whether it was reached); the cap when it never was."""
    hit = next((t for t, e in curve if e <= level), None)
    return (cap, False) if hit is None else (hit, True)


def plot(results: dict, path: Path) -> None:
    """Error against wall time, one panel per default target, one curve per route."""
    from matplotlib.figure import Figure

    fams = [f for f in FAMILIES if any(r["family"] == f for r in results["runs"])]
    fig = Figure(figsize=(4.2 * len(fams), 3.6), layout="constrained")
    for ax, fam in zip(fig.subplots(1, len(fams), squeeze=False)[0], fams):
        for r in (r for r in results["runs"] if r["family"] == fam and r["curve"]):
            t, e = zip(*r["curve"])
            ax.plot(t, e, label=r["route"], marker="." if r["route"] == "defaults" else None)
        for level in LEVELS:
            ax.axhline(level, color="0.7", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel="wall time [s]", title=f"{fam} (default target)")
        ax.set_ylabel("relative L2 error")
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['device']}, load average at start {results['load_average_at_start']}", fontsize=8)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", default=None, help="only plot this results file (next to it, .png)")
    ap.add_argument("--cap", type=float, default=600.0, help="seconds per route and target")
    ap.add_argument("--only", default=None, choices=FAMILIES)
    ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the whole adaptation on it, capture included)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--add", default=None, help="a results file whose runs (other routes) are kept in --out")
    args = ap.parse_args()
    if args.plot:
        plot(json.loads(Path(args.plot).read_text()), Path(args.plot).with_suffix(".png"))
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    dev = torch.device(args.device)
    out = Path(args.out or Path(__file__).parent / "results" / f"time_to_accuracy_{dev.type}.json")
    meta = {"device": device_name(dev), "cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "load_average_at_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"), "cap_s": args.cap}
    rows = []
    if args.add:  # runs of other routes measured separately (e.g. with another cap)
        added = json.loads(Path(args.add).read_text())
        rows = [{**r, "cap_s": r.get("cap_s", added["cap_s"])} for r in added["runs"] if r["route"] not in args.routes]
        meta["added"] = {"file": Path(args.add).name, "load_average_at_start": added["load_average_at_start"]}
    for family in FAMILIES:
        if args.only and family != args.only:
            continue
        for route in args.routes:
            curve = (deepxde_route(family, args.cap, device=args.device) if route == "deepxde"
                     else ours(family, route, args.cap, args.device))
            row = {"family": family, "route": route, "cap_s": args.cap, "final_error": curve[-1][1] if curve else None,
                   "seconds": curve[-1][0] if curve else None, "curve": curve}
            for level in LEVELS:
                row[f"time_to_{level:g}"], row[f"reached_{level:g}"] = reach(curve, level, args.cap)
            rows.append(row)
            print(f"{family} {route}: final {row['final_error']:.3e} after {row['seconds']:.0f} s; "
                  + ", ".join(f"to {lv:g}: {row[f'time_to_{lv:g}']:.0f} s{'' if row[f'reached_{lv:g}'] else ' (not reached)'}"
                              for lv in LEVELS), flush=True)
            out.write_text(json.dumps({**meta, "runs": rows}, indent=1))
    summary = {}
    for family in FAMILIES:
        by = {r["route"]: r for r in rows if r["family"] == family}
        if "defaults" in by and "deepxde" in by:
            a, b = by["defaults"], by["deepxde"]
            summary[family] = {}
            for lv in LEVELS:
                if a[f"reached_{lv:g}"]:  # DeepXDE's time is its cap where it never got there: a lower bound
                    summary[family][f"speedup_to_{lv:g}"] = b[f"time_to_{lv:g}"] / a[f"time_to_{lv:g}"]
                    summary[family][f"speedup_to_{lv:g}_is_lower_bound"] = not b[f"reached_{lv:g}"]
    out.write_text(json.dumps({**meta, "runs": rows, "speedup_vs_deepxde": summary}, indent=1))
    plot({**meta, "runs": rows}, out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
