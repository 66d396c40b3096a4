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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pinn_lora.store import rundir

DEFAULT_LEVELS = (1e-2, 1e-3)
# run settings (from .hydra/config.yaml) that make runs of one method different experiments
SETTINGS = ("steps", "n_points", "lbfgs_steps", "dtype", "sampler", "base")
LAYER_KEY = re.compile(r"^layer(\d+)/(.+)$")
# per-layer quantities of metrics.jsonl drawn in the adapter-state figure (when recorded)
ADAPTER_STATE = ("eff_rank", "balance", "delta_rel", "feature_change")


def _num(value: Any) -> float:
    """A metric value as a float: NaN/Inf are stored as strings in metrics.jsonl; missing is NaN."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}e}"


def _fmt_count(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.0f}" if value < 1e5 else f"{value:.2e}"


def _fmt_time(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- runs on disk
@dataclass
class Run:
    """One run directory: its summary, its metrics and (CLI runs) its Hydra config."""

    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    config: dict[str, Any] | None = None
    dropped: list[str] = field(default_factory=list)  # unreadable lines of metrics.jsonl left out, and why

    @property
    def problem(self) -> str:
        return str(self.summary.get("problem"))

    @property
    def coefficients(self) -> dict[str, float]:
        return dict(self.summary.get("coefficients") or {})

    @property
    def method(self) -> str:
        meth = self.summary.get("method")
        return str(meth.get("name") if isinstance(meth, dict) else meth)

    @property
    def options(self) -> dict[str, Any]:
        meth = self.summary.get("method")
        return {k: v for k, v in meth.items() if k != "name"} if isinstance(meth, dict) else {}

    @property
    def settings(self) -> dict[str, Any]:
        """The run settings of its Hydra config that are not the method's or the seed (empty without one)."""
        if not self.config:
            return {}
        out = {k: self.config.get(k) for k in SETTINGS if k in self.config}
        modes = (self.config.get("problem") or {}).get("modes")
        if modes is not None:
            out["modes"] = modes
        return out

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", (self.config or {}).get("seed"))

    @property
    def lr(self) -> float:
        return _num(self.options.get("lr"))

    @property
    def diverged(self) -> bool:
        return self.summary.get("status") == "diverged"

    @property
    def no_improvement(self) -> bool:
        """The run ended with its validation residual not below the base's (status no_improvement)."""
        return self.summary.get("status") == "no_improvement"

    @property
    def final_error(self) -> float:
        err = _num(self.summary.get("adapted_error"))
        if math.isnan(err):
            errs = [_num(r["rel_l2"]) for r in self.records if "rel_l2" in r]
            err = errs[-1] if errs else math.nan
        return err

    @property
    def base_error(self) -> float:
        return _num(self.summary.get("base_error"))

    @property
    def trainable(self) -> int | None:
        value = self.summary.get("trainable_parameters")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def spikes(self) -> int | None:
        """The summary's ``spikes`` or ``stability.spikes`` (a count or a list), else the number of
        metrics records carrying ``spike``; None when the run records neither."""
        value = self.summary.get("spikes")
        if value is None and isinstance(self.summary.get("stability"), dict):
            value = self.summary["stability"].get("spikes")
        if isinstance(value, (list, tuple)):
            return len(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
        if any("spike" in r for r in self.records):
            return sum(1 for r in self.records if r.get("spike") is not None and r.get("spike") is not False)
        return None

    def reach(self, level: float) -> dict[str, float] | None:
        """Steps, field evaluations and wall time at the first record with rel_l2 <= level (None: never)."""
        for rec in self.records:
            err = _num(rec.get("rel_l2"))
            if math.isfinite(err) and err <= level:
                return {"steps": _num(rec.get("step")) + 1, "evaluations": _num(rec.get("evaluations")),
                        "time": _num(rec.get("time"))}
        return None

    def curve(self, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the records holding both, finite values only."""
        pts = [(_num(r.get(x)), _num(r.get(y))) for r in self.records if y in r and x in r]
        pts = [(a, b) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
        if not pts:
            return np.zeros(0), np.zeros(0)
        xs, ys = (np.array(v, dtype=float) for v in zip(*pts))
        return xs, ys

    def phase_start(self, phase: str, x: str) -> float:
        """``x`` (evaluations, time) where ``phase`` ("lbfgs") starts: at the record before its first
        (a record's x is counted at its end); NaN if the run has none."""
        prev = None
        for rec in self.records:
            if rec.get("phase") == phase:
                return _num((prev if prev is not None else rec).get(x))
            prev = rec
        return math.nan

    def layer_keys(self) -> list[str]:
        """Adapter-state quantities recorded per layer (``layerN/<name>``): the names."""
        names = {m.group(2) for r in self.records for k in r for m in [LAYER_KEY.match(k)] if m}
        return sorted(names)


    def layer_curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(step, median over layers of ``layerN/<name>``) for the records holding it."""
        xs, ys = [], []
        for rec in self.records:
            vals = [_num(v) for k, v in rec.items() if (m := LAYER_KEY.match(k)) and m.group(2) == name]
            vals = [v for v in vals if math.isfinite(v)]
            if vals:
                xs.append(_num(rec.get("step")))
                ys.append(float(np.median(vals)))
        return np.array(xs, dtype=float), np.array(ys, dtype=float)


def adapter_state_names(names: Iterable[str], most: int = 4) -> list[str]:
    """The per-layer quantities to plot: those of ADAPTER_STATE that were recorded, else the first few."""
    names = sorted(set(names))
    chosen = [n for n in ADAPTER_STATE if n in names]
    return chosen or names[:most]


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The readable records of a ``metrics.jsonl`` and a note for each line left out (not a JSON object)."""
    records, dropped = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                dropped.append(f"line {i}: {exc}")
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                dropped.append(f"line {i}: not a JSON object")
    return records, dropped


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if not isinstance(summary, dict) or "problem" not in summary or "method" not in summary:
        raise ValueError(f"{run_dir / 'summary.json'} is not a pinn_lora run summary")
    if summary.get("status") in ("failed", "interrupted"):
        raise ValueError(f"a{'n' if summary['status'] == 'interrupted' else ''} {summary['status']} run "
                         f"({summary.get('message', 'no message')})")
    records, dropped = _read_records(run_dir / "metrics.jsonl")  # one bad line does not drop the run
    return Run(run_dir, summary, records, _read_config(run_dir), dropped)


def find_runs(root: str | Path) -> tuple[list[Run], list[str]]:
    """Every run under ``root`` (a directory holding summary.json and metrics.jsonl) and a note
    for each directory skipped (a run still going or killed, an unreadable file)."""
    root = Path(root)
    runs, skipped = [], []
    dirs = sorted({p.parent for p in root.rglob("summary.json")} | {p.parent for p in root.rglob("metrics.jsonl")})
    for d in dirs:
        if not (d / "summary.json").is_file() or not (d / "metrics.jsonl").is_file():
            missing = "summary.json" if not (d / "summary.json").is_file() else "metrics.jsonl"
            skipped.append(f"{d}: no {missing} (unfinished run?)")
            continue
        try:
            runs.append(load_run(d))
        except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
            skipped.append(f"{d}: {exc}")
    return runs, skipped


# ----------------------------------------------------------------------------- grouping
def coefficient_text(coefficients: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {_num(v):.4g}" for k, v in sorted(coefficients.items())) or "default"


def group_runs(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (problem, target coefficients), in a stable order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.problem, coefficient_text(run.coefficients)), []).append(run)
    return dict(sorted(groups.items()))


@dataclass
class Variant:
    """The runs (seeds) of one method with one set of options and run settings."""

    method: str
    options: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    def errors(self) -> np.ndarray:
        return np.array([r.final_error for r in self.runs], dtype=float)


def _key(run: Run) -> str:
    return json.dumps({"method": run.method, **run.options, **run.settings}, sort_keys=True, default=str)


def variants(runs: Sequence[Run]) -> list[Variant]:
    """Split a group's runs into variants; label each by the method and the options that
    differ between the variants of that method."""
    by_key: dict[str, Variant] = {}
    for run in runs:
        key = _key(run)
        if key not in by_key:
            by_key[key] = Variant(run.method, {**run.options, **run.settings})
        by_key[key].runs.append(run)
    out = list(by_key.values())
    for method in {v.method for v in out}:
        same = [v for v in out if v.method == method]
        keys = sorted({k for v in same for k in v.options})
        varying = [k for k in keys if len({json.dumps(v.options.get(k), default=str) for v in same}) > 1]
        varying.sort(key=lambda k: (k != "lr", k))  # lr first
        for v in same:
            extra = ", ".join(f"{k}={_fmt_value(v.options.get(k))}" for k in varying)
            v.label = f"{method} ({extra})" if extra else method
    out.sort(key=lambda v: (v.method, [_sort_value(v.options.get(k)) for k in sorted(v.options)]))
    for v in out:
        v.runs.sort(key=lambda r: (str(r.seed), str(r.path)))
    return out


def _sort_value(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


# ----------------------------------------------------------------------------- numbers
def _median(values: Sequence[float]) -> float:
    """Median of the values that are not NaN; NaN for none."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.median(vals)) if vals else math.nan


def variant_stats(variant: Variant, levels: Sequence[float]) -> dict[str, Any]:
    """The numbers of one table row. ``levels[level]`` holds ``reached`` (how many runs got to
    rel. L2 <= level) and the medians of steps, evaluations and wall time to get there over
    those runs (NaN when none did)."""
    errs = variant.errors()
    finite = errs[np.isfinite(errs)]
    trainable = sorted({r.trainable for r in variant.runs if r.trainable is not None})
    spikes = [r.spikes for r in variant.runs]
    known = [s for s in spikes if s is not None]
    stats: dict[str, Any] = {
        "label": variant.label, "method": variant.method, "n": len(variant.runs),
        "seeds": [r.seed for r in variant.runs],
        "trainable": trainable[0] if len(trainable) == 1 else (trainable or None),
        "median": float(np.median(finite)) if finite.size else math.nan,
        "min": float(finite.min()) if finite.size else math.nan,
        "max": float(finite.max()) if finite.size else math.nan,
        "not_finite": int(errs.size - finite.size),
        "diverged": sum(r.diverged for r in variant.runs),
        "no_improvement": sum(r.no_improvement for r in variant.runs),
        "spikes": sum(known) if known else None,
        "base_error": _median([r.base_error for r in variant.runs]),
        "levels": {},
    }
    for level in levels:
        hits = [r.reach(level) for r in variant.runs]
        stats["levels"][level] = {
            "reached": sum(h is not None for h in hits),
            **{q: _median([h[q] for h in hits if h is not None]) for q in ("steps", "evaluations", "time")},
        }
    return stats


def median_band(curves: Sequence[tuple[np.ndarray, np.ndarray]], n: int = 240,
                log_y: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Median and min–max of several curves on one x grid. Each curve is interpolated (in log
    y for ``log_y``) from its first point on and holds its last value after its end (a finished
    run keeps its final loss and error), so a run that stopped early (diverged, fewer steps)
    still counts. None when no curve has points."""
    curves = [(x, y) for x, y in curves if x.size]
    if log_y:
        curves = [(x[y > 0], np.log10(y[y > 0])) for x, y in curves]
        curves = [(x, y) for x, y in curves if x.size]
    if not curves:
        return None
    lo_x = min(float(x.min()) for x, _ in curves)
    hi_x = max(float(x.max()) for x, _ in curves)
    grid = np.linspace(lo_x, hi_x, n) if hi_x > lo_x else np.array([lo_x])
    rows = []
    for x, y in curves:
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        row = np.interp(grid, x, y)
        row[grid < x[0]] = np.nan
        rows.append(row)
    data = np.vstack(rows)
    keep = ~np.all(np.isnan(data), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med, lo, hi = np.nanmedian(data, axis=0), np.nanmin(data, axis=0), np.nanmax(data, axis=0)
    grid, med, lo, hi = grid[keep], med[keep], lo[keep], hi[keep]
    if log_y:
        med, lo, hi = 10.0 ** med, 10.0 ** lo, 10.0 ** hi
    return grid, med, lo, hi


# ----------------------------------------------------------------------------- the adapted network
def load_run_model(run: Run):
    """Rebuild a run's adapted network from its adapter.safetensors and card.json
    (:func:`pinn_lora.runs.adapter_io.load_adapter`). Returns (network, target problem); the problem comes
    from the run's Hydra config when it has one (it may set more than the coefficients)."""
    from pinn_lora.runs.adapter_io import load_adapter
    from pinn_lora.core.registry import get_problem
    from pinn_lora.runs.adapt import problem_from_config

    model = load_adapter(run.path).model
    pcfg = (run.config or {}).get("problem")
    if isinstance(pcfg, dict) and pcfg.get("name") == run.problem:
        problem = problem_from_config({**pcfg, **run.coefficients}, "adapt")
    else:
        problem = get_problem(run.problem, **run.coefficients)
    return model, problem


def best_runs(variants_: Sequence[Variant]) -> dict[str, tuple[Variant, Run]]:
    """Per method: the run with the lowest final error and its variant (a diverged run only
    when the method has no other)."""
    def rank(run: Run) -> tuple[bool, float]:
        return run.diverged, run.final_error if math.isfinite(run.final_error) else math.inf

    best: dict[str, tuple[Variant, Run]] = {}
    for v in variants_:
        for run in v.runs:
            if v.method not in best or rank(run) < rank(best[v.method][1]):
                best[v.method] = (v, run)
    return best


# ----------------------------------------------------------------------------- the report
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
