"""The tables of numbers in README.md and docs/, generated from benchmarks/results/*.json.

    python benchmarks/make_tables.py            # rewrite every marked region
    python benchmarks/make_tables.py --check    # exit 1 and print a diff where a region is stale

A region in a Markdown file is a pair of markers; everything between them is generated::

    <!-- table:NAME -->
    | ... |
    <!-- /table -->

NAME is a key of ``TABLES``. ``tests/test_docs.py`` regenerates every region and compares, so a table
cannot drift from its JSON. A results file may gain rows (new targets, methods, families) without a change
here: each table takes whatever rows its file holds (for adapt_targets_cpu.json, one row per family,
coefficients, method and options; a later row with the same key replaces an earlier one).
"""
from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
import statistics
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REGION = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)

FAMILY = {"burgers": "Burgers", "allen_cahn": "Allen–Cahn", "helmholtz": "Helmholtz"}
SYMBOL = {"nu": "ν", "gamma": "γ"}
# the order of docs/methods.md's table: references first, then LoRA and its variants, the cLA family, ODE methods
METHOD_ORDER = ("scratch", "full", "lora", "rslora", "loraplus", "pissa", "dora", "asymlora", "cola", "rac", "cla",
                "rcla", "c3la", "rc3la", "paca", "riemannian", "odlora", "odelora")


# ---- formatting ------------------------------------------------------------------------------------------------
def sci(x: Any) -> str:
    """4.2e-2 style (three digits, no padded exponent); '—' when missing."""
    if x is None:
        return "—"
    if isinstance(x, str) or not math.isfinite(x):
        return str(x)
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:.2e}").replace("e+", "e")


def count(x: float) -> str:
    """8 034, 425, 53 (a ratio or a count, space as the thousands separator)."""
    return "—" if x is None or not math.isfinite(x) else f"{round(x):,}".replace(",", " ")


def number(x: float) -> str:
    """A coefficient as written: 0.0015915… -> 0.005/π, 3.0 -> 3, 0.001 -> 0.001."""
    for scaled, suffix in ((x, ""), (x * math.pi, "/π")):
        short = float(f"{scaled:.4g}")
        if math.isclose(short, scaled, rel_tol=1e-9):
            return f"{short:g}{suffix}"
    return f"{x:.4g}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def source_line(path: str, *said: Any) -> str:
    """The caption under a table: where its numbers come from and how it is regenerated."""
    said = ", ".join(str(x) for x in said if x)
    return f"From `benchmarks/results/{path}`" + (f" ({said})" if said else "") + \
        ". `python benchmarks/make_tables.py` regenerates this table."


def torch_version(meta: dict) -> str:
    return f"torch {meta['torch']}" if meta.get("torch") else ""


# ---- families and their targets ---------------------------------------------------------------------------------
@functools.cache
def family_coefficients(family: str) -> tuple[dict, dict] | None:
    """(source, default target) coefficients of a registered family, or None (a family not installed here)."""
    import pinn_lora

    if family not in pinn_lora.PROBLEMS.names():
        return None  # a family not installed here only loses its short label
    cls = pinn_lora.PROBLEMS.get(family)  # an installed family that fails here is a bug to see, not to hide
    return cls.source().coefficients, cls.default_target().coefficients


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9) for k in a)


def target_label(family: str, coefficients: dict, default_mark: bool = False) -> str:
    known = family_coefficients(family)
    shown = {k: v for k, v in coefficients.items()
             if known is None or k not in known[0] or not math.isclose(v, known[0][k], rel_tol=1e-9)}
    parts = ", ".join(f"{SYMBOL.get(k, k)} = {number(v)}" for k, v in sorted((shown or coefficients).items()))
    label = f"{FAMILY.get(family, family)} {parts}"
    if default_mark and is_default(family, coefficients):
        label += " (default)"
    return label


def is_default(family: str, coefficients: dict) -> bool:
    known = family_coefficients(family)
    return known is not None and same({**known[0], **coefficients}, known[1])


def method_label(run: dict) -> str:
    options = run.get("options") or {}
    return f"`{run['method']}`" + (" (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")" if options else "")


# ---- benchmarks/results/adapt_targets_cpu.json ------------------------------------------------------------------
def target_runs(data: dict) -> list[dict]:
    """The runs, one per (family, coefficients, method, options) — a later row replaces an earlier one — grouped
    by family (in order of first appearance), then by coefficients, then methods in file order."""
    runs: dict[tuple, dict] = {}
    for run in data.get("runs", []):
        coeffs = tuple(sorted((k, round(float(v), 12)) for k, v in run["coefficients"].items()))
        runs[(run["family"], coeffs, run["method"], json.dumps(run.get("options") or {}, sort_keys=True))] = run
    families = list(dict.fromkeys(key[0] for key in runs))
    order = list(runs)
    return [runs[k] for k in sorted(runs, key=lambda k: (families.index(k[0]), [v for _, v in k[1]], order.index(k)))]


def finished(run: dict) -> bool:
    final = run.get("final_error")
    return run.get("status") == "completed" and final is not None and math.isfinite(final)


def base_to_final(run: dict) -> str:
    text = f"{sci(run.get('base_error'))} → {sci(run.get('final_error'))}"
    return text if run.get("status") in (None, "completed") else f"{text} ({run['status']})"


def ratio(run: dict) -> str:
    base, final = run.get("base_error"), run.get("final_error")
    if base is None or final is None or not final or not math.isfinite(final):
        return "—"
    return count(run.get("ratio") or base / final)


def above_base(run: dict) -> float | None:
    """How far the largest error during the run rose above the base's (0 when it never did; None: not recorded)."""
    base, worst = run.get("base_error"), run.get("max_error_during")
    if base is None or worst is None:
        return None
    return max(worst / base - 1, 0.0) if math.isfinite(worst) else math.inf


def percent(rise: float) -> str:
    """12, 0.3, 0.02: whole percent from 1 %, one significant digit below."""
    return f"{100 * rise:.0f}" if rise >= 0.01 else f"{100 * rise:.1g}"


def below_base(run: dict) -> str:
    rise = above_base(run)
    if rise is None:
        return "—"
    return "yes" if rise == 0 else "no" if math.isinf(rise) else f"no (+{percent(rise)} %)"


def wall(run: dict) -> str:
    return "—" if run.get("wall_s") is None else f"{run['wall_s']:.0f} s"


def one_minute_loads(value: Any) -> list[float]:
    """The 1-minute load averages in a ``load_average_at_start``: a (1, 5, 15)-minute triple, a list of them (a file
    merged from several, ``adapt_targets.py --merge``), or nothing."""
    if not value:
        return []
    if isinstance(value[0], (int, float)):
        return [float(value[0])]
    return [x for v in value for x in one_minute_loads(v)]


def load_note(data: dict) -> str:
    first = sorted(one_minute_loads([data.get("load_average_at_start")]
                                    + [r.get("load_average_at_start") for r in data.get("runs", [])]))
    if not first:
        return ""
    spread = f"{first[0]:.1f}" if first[-1] - first[0] < 0.05 else f"{first[0]:.1f}–{first[-1]:.1f}"
    return f"load average {spread} at the start: wall times on a shared CPU are upper bounds"


def targets_caption(data: dict) -> str:
    return source_line("adapt_targets_cpu.json", data.get("device"), torch_version(data), data.get("date"),
                       "seed 0, the defaults, evaluated after every step", load_note(data))


def adapt_targets(data: dict, default_only: bool = False) -> list[str]:
    rows = [[target_label(r["family"], r["coefficients"], default_mark=not default_only), method_label(r),
             base_to_final(r), ratio(r), sci(r.get("max_error_during")), below_base(r), str(r.get("steps", "—")),
             wall(r)]
            for r in target_runs(data) if not default_only or is_default(r["family"], r["coefficients"])]
    header = ["target", "method", "base → final", "×", "largest error during the run", "below the base throughout",
              "steps (all stages)", "wall"]
    return table(header, rows) + ["", targets_caption(data)]


def other(run: dict) -> str:
    """`lora` 8.47e-6, `lora` 1.08e-4 (+12 % above the base during the run), `cla` diverged."""
    if not finished(run):
        return f"{method_label(run)} {run.get('status')}"
    rise = above_base(run)
    return f"{method_label(run)} {sci(run['final_error'])}" + (
        f" (+{percent(rise)} % above the base during the run)" if rise and math.isfinite(rise) else "")


def adapt_best(data: dict) -> list[str]:
    """One row per family at its default target: the method to use (lowest final error among the runs that
    stayed below the base at every evaluation; among all finished runs if none did) and the others measured."""
    groups: dict[str, list[dict]] = {}
    for run in target_runs(data):
        if is_default(run["family"], run["coefficients"]):
            groups.setdefault(run["family"], []).append(run)
    rows = []
    for family, runs in groups.items():
        done = [r for r in runs if finished(r)]
        safe = [r for r in done if above_base(r) == 0] or done
        if not safe:
            continue
        best = min(safe, key=lambda r: r["final_error"])
        others = ", ".join(other(r) for r in runs if r is not best) or "—"
        rows.append([target_label(family, best["coefficients"]), f"**{method_label(best)}**",
                     f"{sci(best['base_error'])} → {sci(best['final_error'])}", ratio(best),
                     sci(best.get("max_error_during")), others, wall(best)])
    header = ["PDE, default target", "use", "base → adapted", "×", "largest error during the run",
              "also measured (final error)", "wall"]
    return table(header, rows) + ["", targets_caption(data)]


# ---- benchmarks/results/adapt_defaults.json (the first-order recipe) ----------------------------------------------
def method_key(name: str, seen: list[str]) -> tuple:
    return (METHOD_ORDER.index(name), 0) if name in METHOD_ORDER else (len(METHOD_ORDER), seen.index(name))


def first_order(data: dict) -> list[str]:
    """Error and gain per method (rows) and target (columns): one run each, keyed "family/method" in the file."""
    cell = {(key.split("/")[0], tuple(sorted(r["coefficients"].items())), r["method"]["name"]): r
            for key, r in data["runs"].items()}
    columns = list(dict.fromkeys(k[:2] for k in cell))
    seen = list(dict.fromkeys(k[2] for k in cell))
    best = {c: min((r["adapted_error"] for (f, co, _), r in cell.items()
                    if (f, co) == c and math.isfinite(r["adapted_error"])), default=None) for c in columns}
    rows = []
    for name in sorted(seen, key=lambda m: method_key(m, seen)):
        found = [cell.get((*c, name)) for c in columns]
        trainable = " / ".join(str(r["trainable_parameters"]) if r else "—" for r in found)
        errors = []
        for c, r in zip(columns, found):
            if r is None:
                errors.append("—")
                continue
            text = f"{sci(r['adapted_error'])} ({count(r['improvement'])}×)"
            if r.get("status", "completed") != "completed":
                text += f" {r['status']}"
            errors.append(f"**{text}**" if r["adapted_error"] == best[c] else text)
        rows.append([f"`{name}`", trainable, *errors])
    header = ["method", "trainable (" + " / ".join(FAMILY.get(f, f) for f, _ in columns) + ")",
              *(target_label(f, dict(co)) for f, co in columns)]
    return table(header, rows) + ["", source_line("adapt_defaults.json", data.get("device"), torch_version(data))]


def defaults(data: dict) -> list[str]:
    """The default recipe per method (rows) and default target (columns): the final error, its gain over the
    base and the wall time; with several seeds the median and the range [min–max] of the error."""
    runs = list(data["runs"].values())
    family = {r["problem"] if "problem" in r else None for r in runs}
    cells: dict[tuple, list[dict]] = {}
    for key, r in data["runs"].items():
        fam, name = key.split("/")[:2]
        cells.setdefault((fam, tuple(sorted(r["coefficients"].items())), name), []).append(r)
    columns = list(dict.fromkeys(k[:2] for k in cells))
    seen = list(dict.fromkeys(k[2] for k in cells))
    best = {c: min(statistics.median(r["adapted_error"] for r in rs) for (f, co, _), rs in cells.items()
                   if (f, co) == c) for c in columns}
    rows = []
    for name in sorted(seen, key=lambda m: method_key(m, seen)):
        found = [cells.get((*c, name)) for c in columns]
        text = []
        for c, rs in zip(columns, found):
            if not rs:
                text.append("—")
                continue
            errs = sorted(r["adapted_error"] for r in rs)
            med = statistics.median(errs)
            cell = f"{sci(med)} ({count(rs[0]['base_error'] / med)}×)"
            cell = f"**{cell}**" if med == best[c] else cell
            if len(rs) > 1:
                cell += f" [{sci(errs[0])}–{sci(errs[-1])}, {len(rs)} seeds]"
            bad = sorted({r["status"] for r in rs} - {"completed"})
            if bad:
                cell += " " + ", ".join(bad)
            cell += f", {statistics.median(r['wall_time_s'] for r in rs):.0f} s"
            text.append(cell)
        solver = {r.get("solver") for rs in found if rs for r in rs}
        rows.append([f"`{name}`", "/".join(sorted(s for s in solver if s)), *text])
    del family
    header = ["method", "solver", *(target_label(f, dict(co)) for f, co in columns)]
    return table(header, rows) + ["", source_line("defaults_cpu.json", data.get("device"), torch_version(data),
                                              f"defaults of commit {data.get('commit')}",
                                              "wall times with other jobs on the machine: upper bounds")]


# ---- per-step costs ----------------------------------------------------------------------------------------------
def in_method_order(methods: dict) -> list[tuple[str, dict]]:
    """(name, entry) of a per-method results dict in the docs' method order (unknown names last)."""
    seen = list(methods)
    return [(name, methods[name]) for name in sorted(seen, key=lambda m: method_key(m, seen))]


def methods_step(data: dict) -> list[str]:
    rows = []
    for name, m in in_method_order(data["methods"]):
        rows.append([f"`{name}`", str(m["trainable_parameters"]), str(m.get("evaluations_per_step", "—")),
                     f"{m['step_ms']:.1f}", f"{m['step_ms_iqr']:.1f}", f"{m['saved_bytes'] / 2**20:.1f} MiB",
                     f"{m['state_bytes'] / 2**10:.0f} KiB",
                     f"{m['step_ms_vs_lora']:.2f} / {m['saved_bytes_vs_lora']:.2f} / {m['state_bytes_vs_lora']:.2f}"])
    header = ["method", "trainable", "field evaluations per step", "step (ms, median)", "IQR (ms)",
              "saved activations", "trainable + optimiser state", "vs `lora`: time / activations / state"]
    return table(header, rows) + ["", source_line("methods_step_cpu.json", data.get("device"), torch_version(data),
                                              data.get("dtype"), data.get("problem"), f"{count(data['points'])} points",
                                              f"median of {data.get('steps_timed')} steps")]


def jacobian_cost(data: dict) -> list[str]:
    rows = []
    for name, m in in_method_order(data["methods"]):
        if m["engine"] != "structured":
            how = f"per-point transforms ({m['why_not_structured']})"
        elif m.get("plain_layers") == m["layers"]:
            how = "plain linear layers: the gradient itself"
        else:
            how = f"{m['own_formula_layers']}/{m['layers']} by the adapter's own formula"
        rows.append([f"`{name}`", str(m["trainable_parameters"]), f"{m['loss_and_gradient_ms']:.0f}",
                     f"{m['jacobian_ms']:.0f}", f"{m['ratio']:.1f}×", how])
    header = ["method", "trainable", "loss + gradient (ms)", "Jacobian (ms)", "ratio", "layers"]
    load = data.get("load_average")
    return table(header, rows) + ["", source_line("jacobian_cost_cpu.json", data.get("device"), torch_version(data),
                                              data.get("dtype"), data.get("problem"), f"{count(data['points'])} points",
                                              f"median of {data.get('repeats')}",
                                              f"load average {load[0]:.1f} while measured" if load else None)]


def sampling(data: dict) -> list[str]:
    """Final error (gain over the base) per target (rows) and sampling (columns)."""
    kinds = list(dict.fromkeys(r["sampling"] for r in data["runs"]))
    cells = {(r["problem"], r["method"], r["sampling"]): r for r in data["runs"]}
    rows = []
    for prob, meth in dict.fromkeys((r["problem"], r["method"]) for r in data["runs"]):
        found = [cells.get((prob, meth, k)) for k in kinds]
        best = min(r["final_error"] for r in found if r)
        rows.append([FAMILY.get(prob, prob), f"`{meth}`", sci(found[0]["base_error"] if found[0] else None),
                     *("—" if r is None else ("**{}**" if r["final_error"] == best else "{}").format(
                         f"{sci(r['final_error'])} ({count(r['ratio'])}×, {r['wall_s']:.0f} s)") for r in found)])
    header = ["PDE, default target", "method", "base", *(f"`sampling={k}`" for k in kinds)]
    return table(header, rows) + ["", source_line("sampling_cpu.json", data.get("device"), torch_version(data),
                                              "seed 0", "wall times under load: upper bounds")]


def ms(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f} ms"


def vs_deepxde(data: dict) -> list[str]:
    def ours(row: dict, method: str) -> str:
        if row.get(f"{method}_ms") is None:
            return "—"
        return f"{row[f'{method}_ms']:.1f} ms ({row[f'{method}_speedup_vs_deepxde']:.2f}×)"

    rows = [[count(r["points"]), ms(r.get("deepxde_ms"), 1), ours(r, "full"), ours(r, "lora"), ours(r, "odelora")]
            for r in data["rows"]]
    header = ["points", "DeepXDE `Model.train`", "ours, full FT (× DeepXDE's speed)", "`lora`",
              "`odelora` (Euler, RMSprop)"]
    caption = source_line("vs_deepxde_cpu.json", data.get("device"), torch_version(data),
                          f"DeepXDE {data.get('deepxde')}", data.get("dtype"), data.get("optimizer"),
                          data.get("network"), f"mean over {data.get('steps_timed')} steps")
    return table(header, rows) + ["", caption]


# (row, key in gpu_step_*.json without its "_ms", what the cell adds to the time)
GPU_ROWS = [
    ("DeepXDE `Model.train` (same net, points, Adam)", "deepxde", ""),
    ("ours, full FT, eager autograd", "full/eager-autograd", ""),
    ("ours, full FT, eager jets", "full/eager-jets", ""),
    ("ours, full FT, jets + CUDA graph", "full/graph", "vs DeepXDE"),
    ("ours, LoRA, eager autograd → graph", "lora/graph", "vs eager"),
    ("ODELoRA Euler, rmsprop, rebalance (eager: no capture)", "odelora/eager-autograd", ""),
    ("ODELoRA RK4, rmsprop, rebalance (eager: no capture)", "odelora-rk4/eager-autograd", ""),
    ("ODELoRA Euler, `rebalance=false`, graph", "odelora-norebalance/graph", "vs LoRA"),
    ("ODELoRA RK4, `rebalance=false`, graph", "odelora-rk4-norebalance/graph", "vs LoRA"),
]


def gpu_cell(row: dict, key: str, compare: str) -> str:
    if f"{key}_ms" not in row:
        return "—"
    time, method = ms(row[f"{key}_ms"]), key.split("/")[0]
    if compare == "vs DeepXDE":
        return f"**{time}** ({row[f'{method}/graph_speedup_vs_deepxde']:.1f}× DeepXDE)"
    if compare == "vs eager":
        return f"{row[f'{method}/eager-autograd_ms']:.2f} → {time} ({row[f'{method}/graph_speedup_vs_eager']:.1f}×)"
    if compare == "vs LoRA":
        return f"{time} ({row[f'{method}/graph_vs_lora']:.2f}× LoRA)"
    return time


def gpu_step(data: dict, extra: dict) -> list[str]:
    by_points: dict[int, dict] = {}
    for d in (extra, data):  # the main file wins where both measured a key
        for r in d["rows"]:
            by_points.setdefault(r["points"], {}).update(r)
    points = sorted(by_points)
    rows = [[label, *(gpu_cell(by_points[p], key, compare) for p in points)] for label, key, compare in GPU_ROWS]
    header = ["per step", *(f"{count(p)} points" for p in points)]
    return table(header, rows) + ["", source_line("gpu_step_h100.json", data.get("device"), torch_version(data),
                                              data.get("dtype"), f"steady state over {data.get('steps_timed')} steps, "
                                              "host reads included; the `rebalance=false` rows: "
                                              "`benchmarks/results/gpu_step_h100_norebalance.json`")]


def batch_step(data: dict) -> list[str]:
    rows = [[str(r["k"]), ms(r["ms_per_step"]), f"{r['vs_k1']:.1f}×", f"{r['speedup_vs_separate']:.2f}×",
             "yes" if r.get("captured") else "no"] for r in data["rows"]]
    header = ["K (coefficients)", "per step", "× K = 1", "speed-up over K separate runs", "CUDA graph"]
    return table(header, rows) + ["", source_line("batch_step_h100.json", data.get("device"), torch_version(data),
                                              data.get("dtype"), data.get("method"), f"{count(data['points'])} points")]


def headline(data: dict) -> list[str]:
    """The whole command per default target: error and wall time against the goals (an error per family, 120 s)."""
    rows = []
    for r in data["runs"]:
        target = target_label(r["family"], family_coefficients(r["family"])[1]) if family_coefficients(r["family"]) \
            else FAMILY.get(r["family"], r["family"])
        rows.append([target, f"`{r['method']}`", f"{sci(r['base_error'])} → {sci(r['final_error'])}",
                     f"≤ {sci(r['goal_error'])}", f"{r['wall_s']:.1f} s", "yes" if r["met"] else "**no**",
                     f"{r['load_average_before'][0]:.2f}"])
    header = ["default target", "method", "base → final", "goal", "whole command", "goal met (≤ 120 s)",
              "load before"]
    return table(header, rows) + ["", source_line("headline_cpu.json", data.get("cpu"), f"{data.get('cores')} cores",
                                              torch_version(data), data.get("date"),
                                              "`python benchmarks/headline.py`: the command in a fresh directory, "
                                              "start-up, reference, saving and plots included")]


def implicit_window(data: dict) -> list[str]:
    """Final error per fixed step h (rows: h, columns: default targets) of ODELoRA's implicit scheme."""
    fams = list(dict.fromkeys(r["family"] for r in data["runs"]))
    hs = sorted({r["h"] for r in data["runs"]})
    cell = {(r["family"], r["h"]): r for r in data["runs"]}
    rows = []
    for h in hs:
        row = [f"{h:g}"]
        for f in fams:
            r = cell.get((f, h))
            row.append("—" if r is None else ("diverged" if r["status"] == "diverged" else sci(r["final_error"])))
        rows.append(row)
    bases = {f: next(r["base_error"] for r in data["runs"] if r["family"] == f) for f in fams}
    header = ["fixed h = 1/μ"] + [f"{FAMILY.get(f, f)} (base {sci(bases[f])})" for f in fams]
    return table(header, rows) + ["", source_line("implicit_window_cpu.json", data.get("device"), torch_version(data),
                                              data.get("date"), f"{data.get('steps')} steps, no trust region, "
                                              "no continuation, RAD points")]


def time_to_accuracy(data: dict) -> list[str]:
    """Seconds to 1e-2 and 1e-3 per route and default target, and the speed-up over DeepXDE's route."""
    rows = []
    cap = data.get("cap_s")
    for r in data["runs"]:
        cells = [FAMILY.get(r["family"], r["family"]), r["route"], sci(r["final_error"]),
                 f"{r['seconds']:.0f} s" if r.get("seconds") is not None else "—"]
        for lv in ("0.01", "0.001"):
            t, hit = r[f"time_to_{lv}"], r[f"reached_{lv}"]
            cells.append(f"{t:.0f} s" if hit else f"> {r.get('cap_s', cap):.0f} s (cap)")
        rows.append(cells)
    header = ["target", "route", "final error", "ran", "to 1e-2", "to 1e-3"]
    out = table(header, rows)
    bullets = []
    for fam in dict.fromkeys(r["family"] for r in data["runs"]):
        by = {r["route"]: r for r in data["runs"] if r["family"] == fam}
        if "defaults" not in by or "deepxde" not in by:
            continue
        ours, theirs = by["defaults"], by["deepxde"]
        said = [f"{'≥ ' if not theirs[f'reached_{lv}'] else ''}{theirs[f'time_to_{lv}'] / ours[f'time_to_{lv}']:.1f}× "
                f"to {lv}" for lv in ("0.01", "0.001") if ours[f"reached_{lv}"]]
        if said:
            bullets.append(f"- {FAMILY.get(fam, fam)}: the defaults are {', '.join(said)} faster than DeepXDE's route")
    out += [""] + bullets if bullets else []
    return out + ["", source_line("time_to_accuracy_cpu.json", data.get("device"), torch_version(data), data.get("date"),
                                  f"cap {cap:.0f} s per route (a row's own cap where it says so)", load_note(data))]


def scratch_same_time(data: dict) -> list[str]:
    """Per held-out target: scratch given the adapters' wall time against their final errors."""
    rows = []
    for r in data["runs"]:
        worst = max(r[f"{m}_final_error"] for m in ("odelora", "lora"))
        rows.append([target_label(r["family"], r["coefficients"], default_mark=True),
                     f"{sci(r['odelora_final_error'])} ({r['odelora_wall_s']:.0f} s)",
                     f"{sci(r['lora_final_error'])} ({r['lora_wall_s']:.0f} s)",
                     f"{sci(r['scratch_final_error'])} ({r['scratch_seconds']:.0f} s of {r['wall_cap_s']:.0f} s)",
                     f"{r['scratch_final_error'] / worst:,.0f}×".replace(",", " "),
                     "yes" if r["adapters_better"] else "**no**"])
    header = ["target", "`odelora` (wall)", "`lora` (wall)", "`scratch` (ran of its cap)",
              "scratch ÷ the worse adapter", "both adapters better"]
    return table(header, rows) + ["", source_line("scratch_same_time_cpu.json", data.get("device"), torch_version(data),
                                              data.get("date"), "the adapters' walls from adapt_targets_cpu.json",
                                              load_note(data))]


# name -> (results files, function of their JSON)
TABLES: dict[str, tuple[tuple[str, ...], Callable[..., list[str]]]] = {
    "adapt_best": (("adapt_targets_cpu.json",), adapt_best),
    "adapt_targets": (("adapt_targets_cpu.json",), adapt_targets),
    "adapt_targets_default": (("adapt_targets_cpu.json",), lambda d: adapt_targets(d, default_only=True)),
    "first_order": (("adapt_defaults.json",), first_order),
    "methods_step": (("methods_step_cpu.json",), methods_step),
    "vs_deepxde": (("vs_deepxde_cpu.json",), vs_deepxde),
    "gpu_step": (("gpu_step_h100.json", "gpu_step_h100_norebalance.json"), gpu_step),
    "batch_step": (("batch_step_h100.json",), batch_step),
    "implicit_window": (("implicit_window_cpu.json",), implicit_window),
    "jacobian_cost": (("jacobian_cost_cpu.json",), jacobian_cost),
}
# placed once their results files exist (benchmarks/headline.py, sampling.py, time_to_accuracy.py)
PENDING = {"headline": (("headline_cpu.json",), headline), "sampling": (("sampling_cpu.json",), sampling),
           "defaults": (("defaults_cpu.json",), defaults),
           "time_to_accuracy": (("time_to_accuracy_cpu.json",), time_to_accuracy),
           "scratch_same_time": (("scratch_same_time_cpu.json",), scratch_same_time)}
TABLES.update({k: v for k, v in PENDING.items() if (RESULTS / v[0][0]).is_file()})


def make(name: str, results: Path = RESULTS) -> str:
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; the tables are: {', '.join(TABLES)}")
    files, build = TABLES[name]
    return "\n".join(build(*(json.loads((results / f).read_text()) for f in files))) + "\n"


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked region regenerated."""
    return REGION.sub(lambda m: m.group(1) + make(m.group("name"), results) + m.group(4), text)


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/ and benchmarks/ (the ones without markers stay as they are)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 where a region is stale")
    args = ap.parse_args()
    stale = 0
    for path in documents():
        old = path.read_text()
        new = render(old)
        if new == old:
            continue
        stale += 1
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       str(path.relative_to(ROOT)), "regenerated"))
        else:
            path.write_text(new)
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
