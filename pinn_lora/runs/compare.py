"""The report of a directory of runs (``python -m pinn_lora.compare SWEEP_DIR``: :mod:`pinn_lora.cli.compare`).

Collects every run under a directory (any directory holding ``summary.json``
and ``metrics.jsonl``, at any depth: a Hydra multirun, ``runs/``, or runs
copied together from several machines), groups them by problem and target
coefficients, and writes a comparison of the methods to ``--out`` (default
``SWEEP_DIR/report``): ``report.md``, the figures as PNG files, and one
self-contained ``report.html`` (figures embedded, no external assets).

Runs of one method that differ in an option (``lr``, ``rank`` …) or in a run
setting (``steps``, ``n_points`` … from ``.hydra/config.yaml``) are separate
rows; the runs of a row are its seeds.

The library function is :func:`compare_runs` (``pinn_lora.compare_runs``)."""
from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pinn_lora.store import rundir

from pinn_lora.runs.run_records import (  # noqa: F401  (the collection: re-exported for callers)
    ADAPTER_STATE,
    DEFAULT_LEVELS,
    LAYER_KEY,
    Run,
    SETTINGS,
    Variant,
    _fmt,
    _fmt_count,
    _fmt_time,
    _fmt_value,
    _key,
    _median,
    _num,
    _read_config,
    _read_records,
    _sort_value,
    adapter_state_names,
    best_runs,
    coefficient_text,
    find_runs,
    group_runs,
    load_run,
    load_run_model,
    median_band,
    variant_stats,
    variants,
)


@dataclass
class Section:
    title: str
    rows: list[dict[str, Any]]
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, path)
    notes: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def table(rows: Sequence[dict[str, Any]], levels: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of one group's table."""
    head = ["method", "trainable", "n", "final rel. L2: median", "[min – max]"]
    for level in levels:
        head += [f"≤ {level:g}: steps", "evaluations", "time"]
    head += ["spikes", "diverged", "no improvement"]
    cells = []
    for s in rows:
        trainable = s["trainable"]
        row = [s["label"], "—" if trainable is None else (f"{trainable:,}" if isinstance(trainable, int)
                                                          else "–".join(f"{t:,}" for t in trainable)),
               str(s["n"]), _fmt(s["median"]),
               f"[{_fmt(s['min'])} – {_fmt(s['max'])}]" + (f" ({s['not_finite']} NaN)" if s["not_finite"] else "")]
        for level in levels:
            lv = s["levels"][level]
            partial = f" ({lv['reached']}/{s['n']})" if 0 < lv["reached"] < s["n"] else ""
            row += [_fmt_count(lv["steps"]) + partial, _fmt_count(lv["evaluations"]), _fmt_time(lv["time"])]
        row += ["—" if s["spikes"] is None else str(s["spikes"]), f"{s['diverged']}/{s['n']}",
                f"{s.get('no_improvement', 0)}/{s['n']}"]
        cells.append(row)
    return head, cells


def _markdown_table(head: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [list(head), *cells]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


NOTES = (
    "*n*: runs (seeds). *final rel. L2*: relative L2 error against the reference at the end of the run "
    "(`adapted_error`), median and [min – max] over the runs. *≤ level*: steps, field (gradient) evaluations "
    "and wall time at the first evaluation with rel. L2 ≤ level, median over the runs that got there "
    "(*k/n*: only k of the n runs did; — : none did). *spikes*: loss spikes recorded by the runs "
    "(— : not recorded). *diverged*: runs stopped as diverged (their error is that of the last good state). "
    "*no improvement*: runs whose validation residual did not end below the base's (status `no_improvement`)."
)


def compare_runs(root: str | Path, out: str | Path | None = None, levels: Sequence[float] = DEFAULT_LEVELS,
                 solutions: bool = True) -> tuple[Path, list[Section]]:
    """Collect the runs under ``root`` and write report.md, report.html and figures/ to ``out``;
    returns ``out`` and the sections (one per problem and target, their table rows in ``rows``).
    Raises FileNotFoundError when there is no run.

    ``out`` is claimed as a report directory (:mod:`pinn_lora.store.rundir`): a new or empty directory,
    or one holding an earlier report, whose files (those its marker lists) the new one replaces;
    any other directory is refused (:class:`~pinn_lora.store.rundir.RunDirError`) and nothing is written."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    runs, skipped = find_runs(root)
    runs = [r for r in runs if out.resolve() not in r.path.resolve().parents]
    if not runs:
        raise FileNotFoundError(f"no runs under {root} (a run is a directory holding summary.json and metrics.jsonl)")
    with rundir.claim(out, kind="report", key="--out") as claim:
        _remove_files(out, (claim.previous or {}).get("files") or [])
        sections = _write_report(root, out, runs, skipped, levels, solutions)
        written = [p for sec in sections for _, p in sec.figures] + [out / "report.md", out / "report.html"]
        claim.release(files=[p.relative_to(out).as_posix() for p in written])
    return out, sections


def _remove_files(out: Path, names: Sequence[str]) -> None:
    """The files an earlier report in ``out`` wrote (listed in its marker), and only those."""
    for name in names:
        path = out / str(name)
        if out.resolve() in path.resolve().parents and path.is_file() and not path.is_symlink():
            path.unlink()


def _write_report(root: Path, out: Path, runs: Sequence[Run], skipped: Sequence[str], levels: Sequence[float],
                  solutions: bool) -> list[Section]:
    from pinn_lora.runs import report as rp

    fig_dir = rundir.make_dirs(out / "figures")  # through no symbolic link
    levels = sorted(set(levels), reverse=True)
    sections = []
    for (problem, coeffs), group in group_runs(runs).items():
        vs = variants(group)
        title = f"{problem}, {coeffs}"
        stem = _slug(f"{problem}_{coeffs}")
        sec = Section(title, [variant_stats(v, levels) for v in vs])
        base = _median([r.base_error for r in group])
        if math.isfinite(base):
            sec.notes.append(f"Base model's rel. L2 on this target: {base:.2e}.")
        shown = _curve_variants(vs)
        if len(shown) < len(vs):
            sec.notes.append(f"Curves: the best variant of each method ({len(shown)} of {len(vs)}).")
        for x, xlabel, name in (("evaluations", "field evaluations", "evaluations"),
                                ("time", "wall time (s)", "time")):
            series = []
            for v in shown:
                bad = sum(r.diverged for r in v.runs)
                series.append((f"{v.label} (n={len(v.runs)}" + (f", {bad} diverged)" if bad else ")"),
                               {**{y: median_band([r.curve(x, y) for r in v.runs]) for y in ("loss", "rel_l2")},
                                "lbfgs": _median([r.phase_start("lbfgs", x) for r in v.runs])},
                               len(v.runs)))
            path = fig_dir / f"{stem}_curves_{name}.png"
            rp.plot_compare_curves(series, path, xlabel, f"{title}: median over seeds, band min–max",
                                   base_error=base, levels=levels)
            sec.figures.append((f"Loss and rel. L2 against {xlabel}", path))
        lr_series = _lr_series(vs)
        if lr_series:
            path = fig_dir / f"{stem}_lr_window.png"
            rp.plot_lr_window(lr_series, path, f"{title}: final error against learning rate",
                              base_error=base)
            sec.figures.append(("Learning-rate window: final rel. L2 per run (line: median over seeds; "
                                "x: diverged)", path))
        names = adapter_state_names(n for r in group for n in r.layer_keys())
        if names:
            series = [(v.label, {n: median_band([r.layer_curve(n) for r in v.runs],
                                                log_y=_positive(v.runs, n)) for n in names}) for v in shown]
            path = fig_dir / f"{stem}_adapter_state.png"
            rp.plot_adapter_state(series, path, f"{title}: adapter state (median over layers and seeds)")
            sec.figures.append(("Adapter state per layer quantity: median over layers and seeds, band "
                                "min–max over seeds", path))
        if solutions:
            _solution_figures(sec, vs, fig_dir, stem, title)
        sections.append(sec)
    _write_markdown(out, root, runs, skipped, sections, levels)
    _write_html(out, root, runs, skipped, sections, levels)
    return sections


def _positive(runs: Sequence[Run], name: str) -> bool:
    ys = [y for r in runs for y in r.layer_curve(name)[1]]
    return bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 20


def _curve_variants(vs: Sequence[Variant], most: int = 8) -> list[Variant]:
    """All variants when few, else the best (lowest median final error) of each method."""
    if len(vs) <= most:
        return list(vs)

    def med(v: Variant) -> float:
        errs = v.errors()
        errs = errs[np.isfinite(errs)]
        return float(np.median(errs)) if errs.size else math.inf

    best: dict[str, Variant] = {}
    for v in vs:
        if v.method not in best or med(v) < med(best[v.method]):
            best[v.method] = v
    return [v for v in vs if best[v.method] is v]


def _lr_series(vs: Sequence[Variant]) -> list[tuple[str, list[tuple[float, float, bool]]]]:
    """Per method (and its options other than lr): (lr, final error, diverged) of every run;
    empty unless some method was run at several learning rates (then every method, so the
    single-rate ones show where they stand)."""
    by: dict[str, tuple[str, list[tuple[float, float, bool]]]] = {}
    for v in vs:
        rest = {k: val for k, val in v.options.items() if k != "lr"}
        key = json.dumps({"m": v.method, **rest}, sort_keys=True, default=str)
        label = re.sub(r"lr=[^,)]*(, )?", "", v.label).replace(" ()", "").replace(", )", ")")
        entry = by.setdefault(key, (label, []))
        entry[1].extend((r.lr, r.final_error, r.diverged) for r in v.runs)
    several = any(len({lr for lr, _, _ in pts if math.isfinite(lr)}) > 1 for _, pts in by.values())
    return list(by.values()) if several else []


def _solution_figures(sec: Section, vs: Sequence[Variant], fig_dir: Path, stem: str, title: str) -> None:
    from pinn_lora.runs import report as rp

    rebuilt, fallback = [], []
    problem = None
    for method, (variant, run) in best_runs(vs).items():
        label = f"{variant.label}, seed {run.seed}"
        try:
            model, problem = load_run_model(run)
            rebuilt.append((label, model))
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the run's own plot
            fallback.append((method, run, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
    if rebuilt:
        path = fig_dir / f"{stem}_solutions.png"
        rp.plot_solution_rows(problem, rebuilt, path, f"{title}: best run of each method")
        sec.figures.append(("Prediction, reference and |error| of the best run of each method (rebuilt from "
                            "adapter.safetensors + card.json)", path))
    for method, run, why in fallback:
        png = run.path / "plots" / "solution.png"
        if png.is_file():
            dest = fig_dir / f"{stem}_solution_{_slug(method)}.png"
            rundir.write_atomic(dest, png.read_bytes())
            sec.figures.append((f"{method}: the run's own plots/solution.png ({run.path.name}; the network could "
                                f"not be rebuilt: {why})", dest))
        else:
            sec.notes.append(f"{method}: no solution figure (network not rebuilt: {why}; no plots/solution.png "
                             f"in {run.path}).")


def _header(root: Path, runs: Sequence[Run], skipped: Sequence[str], levels: Sequence[float]) -> list[str]:
    lines = [f"{len(runs)} runs collected from `{root}`; error levels {', '.join(f'{lv:g}' for lv in levels)}."]
    if skipped:
        lines.append(f"Skipped {len(skipped)} directories: " + "; ".join(skipped[:5])
                     + (" …" if len(skipped) > 5 else ""))
    return lines


def _write_markdown(out: Path, root: Path, runs, skipped, sections: Sequence[Section], levels) -> Path:
    parts = ["# Sweep comparison", "", *_header(root, runs, skipped, levels), "", NOTES, ""]
    for sec in sections:
        head, cells = table(sec.rows, levels)
        parts += [f"## {sec.title}", "", _markdown_table(head, cells), ""]
        parts += [*(f"{n}  " for n in sec.notes), ""] if sec.notes else []
        for caption, path in sec.figures:
            alt = caption.replace("[", "(").replace("]", ")")
            parts += [f"![{alt}]({path.relative_to(out).as_posix()})", "", f"*{alt}*", ""]
    if skipped:  # every one, not only the header's first few
        parts += ["## Skipped directories", "", *(f"- {line}" for line in skipped), ""]
    path = out / "report.md"
    rundir.write_atomic(path, "\n".join(parts).encode("utf-8"))
    return path


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       color: #222; line-height: 1.4; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.note { font-size: 0.9em; color: #444; }
.wide { overflow-x: auto; }
"""


def _write_html(out: Path, root: Path, runs, skipped, sections: Sequence[Section], levels) -> Path:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Sweep comparison</title>", f"<style>{CSS}</style></head><body>", "<h1>Sweep comparison</h1>"]
    parts += [f'<p class="note">{esc(line.replace("`", ""))}</p>' for line in _header(root, runs, skipped, levels)]
    parts.append(f'<p class="note">{esc(NOTES.replace("*", "").replace("`", ""))}</p>')
    for sec in sections:
        head, cells = table(sec.rows, levels)
        parts.append(f"<h2>{esc(sec.title)}</h2>")
        parts.append('<div class="wide"><table><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells]
        parts.append("</tbody></table></div>")
        parts += [f'<p class="note">{esc(n)}</p>' for n in sec.notes]
        for caption, path in sec.figures:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    path = out / "report.html"
    rundir.write_atomic(path, "\n".join(parts).encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- command line
