"""Families over a coefficient range (issue 16): the adapter bank against per-coefficient adaptation.

    python benchmarks/family.py --problem burgers [--method lora] [--anchors 6] [--threads 1]
    python benchmarks/family.py --problem burgers --builder hyper --no-per-coefficient [--steps 60]
    python benchmarks/family.py --problem burgers --load DIR --reuse FILE  # a saved family evaluated again
    python benchmarks/family.py --problem burgers --report     # both builds side by side: summary + figure

For each family's range (Burgers nu*pi in [0.005, 0.05], Allen-Cahn gamma in [2, 7] at d = 1e-3,
Helmholtz k in [0.5, 2.0]) the bank is built with ``pinn_lora.build_family`` (the defaults of
``adapt_to`` at each anchor, anchors placed by the reference-free validation residual), then at 20
held-out coefficients (positions (i+1)/21 of the range in the coefficient's coordinate: never an
anchor, which sit at dyadic positions) it records the relative L2 error of

- the family's instant answer (a query: no training),
- the unadapted base,
- per-coefficient adaptation with the same defaults (``adapt_to``, one run per coefficient),

with the build time, the query time (median of 200 queries) and each adaptation's wall time. Writes
benchmarks/results/family_<problem>_<device>.json and a figure of the error across the range.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import pinn_lora
from pinn_lora.runs.range_build import build_family, build_hyper_family
from pinn_lora.runs.ranges import INTERPOLATIONS, load_family
from pinn_lora.core.runtime import device_name

RANGES = {"burgers": ("nu", 0.005 / math.pi, 0.05 / math.pi, {}),
          "allen_cahn": ("gamma", 2.0, 7.0, {"d": 1e-3}),
          "helmholtz": ("k", 0.5, 2.0, {})}
HELD_OUT = 20


def held_out(spec, low: float, high: float) -> list[float]:
    a, b = spec.coordinate(low), spec.coordinate(high)
    return [spec.from_coordinate(a + (b - a) * (i + 1) / (HELD_OUT + 1)) for i in range(HELD_OUT)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", required=True, choices=sorted(RANGES))
    ap.add_argument("--method", default="lora")
    ap.add_argument("--anchors", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-per-coefficient", action="store_true", help="skip the per-coefficient adaptations")
    ap.add_argument("--builder", choices=("bank", "hyper"), default="bank")
    ap.add_argument("--reuse", default=None, help="a results file whose per-coefficient adaptations (same values, "
                    "same method and defaults) are taken instead of running them again")
    ap.add_argument("--steps", type=int, default=60, help="hyper: Levenberg-Marquardt steps")
    ap.add_argument("--n-points", type=int, default=500, help="hyper: points per coefficient per step")
    ap.add_argument("--save", default=None, help="save the family here (default: a folder under the system's "
                    "temporary directory, printed), to evaluate it again later")
    ap.add_argument("--interpolate", default="auto", help="bank: auto (anchors placed by the two-anchor blend), "
                    "or the answer that also places them: solution, weights, cubic")
    ap.add_argument("--warm-start", action="store_true", help="bank: each anchor from its nearest neighbour")
    ap.add_argument("--load", default=None, help="evaluate a family saved before (by --save) instead of building one")
    ap.add_argument("--report", action="store_true", help="merge the bank and hyper results: summary + figure")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    over, low, high, fixed = RANGES[args.problem]
    problem = pinn_lora.get_problem(args.problem, **fixed)
    results = Path(__file__).parent / "results"
    if args.report:
        report(args.problem, results)
        return
    suffix = "" if args.builder == "bank" else "_hyper"
    out = Path(args.out or results / f"family_{args.problem}{suffix}_cpu.json")
    meta = {"device": device_name(torch.device("cpu")), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
            "problem": args.problem, "over": over, "range": [low, high], "fixed": fixed, "builder": args.builder,
            "method": args.method if args.builder == "bank" else "hyper_lora", "warm_start": args.warm_start, "interpolate": args.interpolate}
    t0 = time.perf_counter()
    if args.load:  # a family built before: evaluated again (its build time from its card)
        fam = load_family(args.load)
    elif args.builder == "bank":
        fam = build_family(problem, over, low, high, args.method, anchors=args.anchors, device="cpu", progress=True,
                           warm_start=args.warm_start, interpolate=args.interpolate)
    else:
        fam = build_hyper_family(problem, over, low, high, steps=args.steps, n_points=args.n_points, device="cpu")
    build_s = fam.card["build"]["wall_time_s"] if args.load else time.perf_counter() - t0
    import tempfile

    if not args.load:
        save = Path(args.save or Path(tempfile.gettempdir()) / "pinn_lora_families" /
                    f"{args.problem}_{args.builder}_{time.strftime('%Y%m%d-%H%M%S')}")
        fam.save(save)
        print(f"family saved: {save}", flush=True)
    else:
        meta["loaded"] = {"from": Path(args.load).name, "note": "a family built before, evaluated again"}
    values = held_out(fam.spec, low, high)
    qt = []
    for i in range(200):
        t = time.perf_counter()
        fam(values[i % HELD_OUT])
        qt.append(time.perf_counter() - t)
    base, card, _ = pinn_lora.load_base(args.problem)
    reused = json.loads(Path(args.reuse).read_text())["rows"] if args.reuse else []
    assert not reused or [r["value"] for r in reused] == values, "--reuse: other coefficients"
    rows = []
    for v in values:
        target = fam.problem_at(v)
        row = {"value": v, "family_error": target.relative_l2(fam(v)), "base_error": target.relative_l2(base)}
        if args.builder == "bank":  # the same anchors: weights interpolated, solutions blended (two or four)
            built = fam.interpolate
            for mode in INTERPOLATIONS:
                fam.interpolate = mode
                row[f"family_error_{mode}"] = target.relative_l2(fam(v))
            fam.interpolate = built
        if reused:
            row.update({k: v for k, v in reused.pop(0).items() if k.startswith("adapted_")})
        elif not args.no_per_coefficient:
            t = time.perf_counter()
            res = pinn_lora.adapt_to(args.problem, target, args.method, device="cpu", progress=False, plots=False,
                                     eval_every=10_000)
            row.update(adapted_error=res.error, adapted_status=res.summary()["status"],
                       adapted_wall_s=round(time.perf_counter() - t, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps({**meta, "build_s": round(build_s, 1), "card": fam.card, "rows": rows}, indent=1))
    fam_err = [r["family_error"] for r in rows]
    summary = {"build_s": round(build_s, 1), "anchors": fam.anchors, "query_ms_median": 1e3 * statistics.median(qt),
               "family_error_median": statistics.median(fam_err), "family_error_max": max(fam_err)}
    if "adapted_error" in rows[0]:
        ratios = [r["family_error"] / r["adapted_error"] for r in rows]
        summary.update(adapted_error_median=statistics.median(r["adapted_error"] for r in rows),
                       ratio_median=statistics.median(ratios), ratio_max=max(ratios),
                       adapted_wall_s_total=round(sum(r["adapted_wall_s"] for r in rows), 1))
    above = [r for r in rows if r["base_error"] > 1e-2]
    summary["five_x_below_base_where_base_above_1e-2"] = all(r["family_error"] * 5 <= r["base_error"] for r in above)
    out.write_text(json.dumps({**meta, **summary, "card": fam.card, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


def report(problem: str, results: Path) -> None:
    """Both builds at the same held-out coefficients: the goals of issue 16 and a figure."""
    from matplotlib.figure import Figure

    bank = json.loads((results / f"family_{problem}_cpu.json").read_text())
    hyper_path = results / f"family_{problem}_hyper_cpu.json"
    hyper = json.loads(hyper_path.read_text()) if hyper_path.is_file() else None
    rows = bank["rows"]
    adapted = [r["adapted_error"] for r in rows]
    out = {"problem": problem, "per_coefficient_median": statistics.median(adapted), "builds": {}}
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    x = [r["value"] for r in rows]
    ax.semilogy(x, [r["base_error"] for r in rows], "k:", label="base (unadapted)")
    ax.semilogy(x, adapted, "s--", label=f"{bank['method']} adapted at each coefficient")
    builds = [("bank_solution", bank, "family_error_solution"), ("bank_weights", bank, "family_error_weights"),
              ("bank_cubic", bank, "family_error_cubic"), ("hyper", hyper, "family_error")]
    for name, res, key in builds:
        if res is None or key not in res["rows"][0]:
            continue
        errs = [r[key] for r in res["rows"]]
        assert [r["value"] for r in res["rows"]] == x, "the builds were evaluated at other coefficients"
        ratios = [e / a for e, a in zip(errs, adapted)]
        far = [(e, r["base_error"]) for e, r in zip(errs, res["rows"]) if r["base_error"] > 1e-2]
        out["builds"][name] = {"build_s": res["build_s"], "query_ms_median": res.get("query_ms_median"),
                               "error_median": statistics.median(errs), "error_max": max(errs),
                               "ratio_median": statistics.median(ratios), "ratio_max": max(ratios),
                               "goal_median_2x": statistics.median(ratios) <= 2, "goal_worst_5x": max(ratios) <= 5,
                               "goal_5x_below_base": all(e * 5 <= b for e, b in far)}
        label = {"bank_solution": f"bank, {len(res['card'].get('anchors', []))} anchors, solutions blended",
                 "bank_weights": "the same anchors, weights interpolated",
                 "bank_cubic": "the same anchors, four solutions blended (cubic)",
                 "hyper": "coefficient-conditioned adapter"}[name]
        ax.semilogy(x, errs, "o-", label=f"family: {label} (query)")
    for a in bank["card"]["anchors"]:
        ax.axvline(a["value"], color="0.85", lw=0.8, zorder=0)
    if bank["card"]["coordinate"] == "log":
        ax.set_xscale("log")
    ax.set_xlabel(f"{bank['over']} (20 held-out coefficients; grey: the bank's anchors)")
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"{problem}: one family for the whole range")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / f"family_{problem}_cpu.png", dpi=110)
    (results / f"family_{problem}_report_cpu.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
