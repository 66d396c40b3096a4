"""The runs under a directory, read from disk alone: each run's summary, records and settings (:class:`Run`),
grouped into variants (a method with its options and settings; its runs are its seeds), with the statistics and
median curves a comparison reports (:mod:`pinn_lora.runs.compare`)."""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


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
