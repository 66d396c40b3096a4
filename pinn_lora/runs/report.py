"""Figures for a run: loss curves and prediction / reference / error panels."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def _save(fig, path: str | Path, dpi: int = 110, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    """Lay out ``fig`` inside ``rect``, write it to ``path`` as PNG and close it."""
    import io

    from pinn_lora.store.rundir import write_atomic

    fig.tight_layout(rect=rect)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    write_atomic(path, buf.getvalue())  # atomically, through no symbolic link, with the umask's mode
    return Path(path)


def _subplots(*grid: int, figsize: tuple[float, float], **kw: Any):
    """(figure, axes) on a figure of its own with an Agg canvas: nothing goes through pyplot, so the
    caller's matplotlib backend and open figures stay as they were (a notebook keeps its inline backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kw)


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                base_error: float | None = None) -> Path:
    """Loss per residual term and relative L2 error against steps (log scale);
    ``base_error`` (the unadapted model's error) is drawn as a dashed line."""
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(11, 4))
    steps = np.array([r["step"] for r in records])
    terms = sorted({k for r in records for k in r if k.startswith("loss_")})
    keys = ["loss"] + (terms if len(terms) > 1 else [])
    for key in keys:
        vals = np.array([float(r.get(key, np.nan)) for r in records])
        ax1.semilogy(steps, vals, label="total (normalised)" if key == "loss" else key[5:], lw=1)
    lbfgs = [r["step"] for r in records if r.get("phase") == "lbfgs"]
    for ax in (ax1, ax2) if lbfgs else ():
        ax.axvline(lbfgs[0], color="k", ls=":", lw=1, label="L-BFGS finish")
    ax1.set(xlabel="step", ylabel="normalised residual loss", title="training loss")
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    ev = [(r["step"], float(r["rel_l2"])) for r in records if "rel_l2" in r]
    if ev:
        ax2.semilogy(*zip(*ev), marker="o", ms=3, label="adapted" if base_error is not None else "model")
    if base_error is not None:
        ax2.axhline(base_error, color="gray", ls="--", label=f"base model ({base_error:.2e})")
    if base_error is not None or lbfgs:
        ax2.legend()
    ax2.set(xlabel="step", ylabel="relative L2 error vs reference", title="error on the target")
    ax2.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_solution(problem: Any, net: torch.nn.Module, path: str | Path, title: str = "") -> Path:
    """Prediction, reference and absolute error on the evaluation grid."""
    pts, ref = problem.eval_grid()
    like = next(iter(net.buffers()), None)
    like = like if like is not None else next(iter(net.parameters()))
    with torch.no_grad():
        pred = net(torch.tensor(pts, dtype=like.dtype, device=like.device)).reshape(-1).double().cpu().numpy()
    shape = tuple(problem.eval_points)
    axes = problem.eval_axes()
    u, r = pred.reshape(shape), ref.reshape(shape)
    extent = [axes[1][0], axes[1][-1], axes[0][0], axes[0][-1]]
    fig, axs = _subplots(1, 3, figsize=(14, 4))
    vmin, vmax = float(min(u.min(), r.min())), float(max(u.max(), r.max()))
    for ax, data, name in ((axs[0], u, "prediction"), (axs[1], r, "reference")):
        im = ax.imshow(data, origin="lower", aspect="auto", extent=extent, cmap="RdBu_r", vmin=vmin, vmax=vmax)
        fig.colorbar(im, ax=ax)
        ax.set(title=name, xlabel=problem.variables[1], ylabel=problem.variables[0])
    err = np.abs(u - r)
    im = axs[2].imshow(err, origin="lower", aspect="auto", extent=extent, cmap="magma")
    fig.colorbar(im, ax=axs[2])
    rel = np.linalg.norm(u - r) / np.linalg.norm(r)
    axs[2].set(title=f"|error| (rel. L2 {rel:.2e})", xlabel=problem.variables[1], ylabel=problem.variables[0])
    fig.suptitle(title or repr(problem))
    return _save(fig, path)


# -- sweep comparison (python -m pinn_lora.compare) ------------------------------------------------
# A band is (x grid, median, min, max) over the runs of one variant, or None when they recorded nothing.

def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend_below(fig, handles, labels, rows_hint: int = 4) -> float:
    """A legend under the axes; returns the figure fraction it takes (for tight_layout's rect)."""
    if not handles:
        return 0.0
    ncol = min(len(labels), rows_hint)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    nrows = -(-len(labels) // ncol)
    return min(0.4, (0.25 + 0.22 * nrows) / fig.get_size_inches()[1])


def plot_compare_curves(series: Sequence[tuple[str, dict[str, Any], int]], path: str | Path, xlabel: str,
                        title: str = "", base_error: float | None = None, levels: Sequence[float] = ()) -> Path:
    """Training loss and relative L2 error of several methods against one x (field evaluations or wall
    time): ``series`` holds (label, {"loss": band, "rel_l2": band, "lbfgs": x or NaN}, runs), "lbfgs"
    where an L-BFGS finish starts (a dotted line in the series' colour); each band is drawn as its
    median with a shaded min–max range (for more than one run). The loss axis stops at 1000× the
    largest starting loss, so a diverged run's blow-up does not flatten the others."""
    fig, axes = _subplots(1, 2, figsize=(13, 5.2))
    handles, labels = [], []
    for (label, bands, n), color in zip(series, _colors(len(series))):
        line = None
        for ax, key in zip(axes, ("loss", "rel_l2")):
            band = bands.get(key)
            if band is None:
                continue
            x, med, lo, hi = band
            line, = ax.plot(x, med, color=color, lw=1.6, marker="o" if x.size < 3 else None, ms=4)
            if n > 1:
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        if line is not None:
            handles.append(line)
            labels.append(label)
        start = bands.get("lbfgs")
        if start is not None and np.isfinite(start):
            for ax in axes:
                ax.axvline(start, color=color, ls=":", lw=1.2)
    if any(np.isfinite(bands.get("lbfgs", np.nan)) for _, bands, _ in series):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="k", ls=":", lw=1.2))
        labels.append("L-BFGS finish starts")
    if base_error is not None and np.isfinite(base_error):
        handles.append(axes[1].axhline(base_error, color="gray", ls="--", lw=1))
        labels.append(f"base model ({base_error:.2e})")
    for level in levels:
        axes[1].axhline(level, color="k", ls=":", lw=0.8, alpha=0.6)
        axes[1].annotate(f"{level:g}", (1.0, level), xycoords=("axes fraction", "data"), xytext=(3, 0),
                         textcoords="offset points", va="center", fontsize=8, color="0.3")
    for ax, ylabel, name in ((axes[0], "normalised residual loss", "training loss"),
                             (axes[1], "relative L2 error vs reference", "error on the target")):
        ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=name)
        ax.grid(True, which="both", alpha=0.3)
    starts = [b[1][0] for _, bands, _ in series for b in [bands.get("loss")] if b is not None and b[0].size]
    tops = [b[3].max() for _, bands, _ in series for b in [bands.get("loss")] if b is not None and b[0].size]
    if starts and max(tops) > 1e3 * max(starts):
        axes[0].set_ylim(top=1e3 * max(starts))
    if levels:  # keep the level lines from stretching the axis far below the data
        lo_data = [b[2].min() for _, bands, _ in series for b in [bands.get("rel_l2")] if b is not None and b[0].size]
        if lo_data:
            axes[1].set_ylim(bottom=min(min(lo_data), min(levels)) / 2)
    return _save_with_legend(fig, handles, labels, title, path)


def plot_lr_window(series: Sequence[tuple[str, Sequence[tuple[float, float, bool]]]], path: str | Path,
                   title: str = "", base_error: float | None = None) -> Path:
    """Final error against learning rate (log–log), one colour per method: a dot per run, a line through
    the median over seeds at each rate, an x for a diverged run (a run without a finite error is drawn
    at the top of the axis)."""
    fig, ax = _subplots(figsize=(8, 5.6))
    finite = [e for _, pts in series for _, e, _ in pts if np.isfinite(e) and e > 0]
    top = max(finite) * 3 if finite else 1.0
    handles, labels = [], []
    for (label, pts), color in zip(series, _colors(len(series))):
        pts = [(lr, e if np.isfinite(e) and e > 0 else top, d) for lr, e, d in pts if np.isfinite(lr) and lr > 0]
        if not pts:
            continue
        lrs = sorted({lr for lr, _, _ in pts})
        med = [float(np.median([e for lr2, e, _ in pts if lr2 == lr])) for lr in lrs]
        line, = ax.plot(lrs, med, color=color, lw=1.5, marker="o", ms=3)
        ok = [(lr, e) for lr, e, d in pts if not d]
        bad = [(lr, e) for lr, e, d in pts if d]
        if ok:
            ax.scatter(*zip(*ok), color=color, s=28, alpha=0.75, zorder=3)
        if bad:
            ax.scatter(*zip(*bad), color=color, marker="x", s=70, linewidths=2, zorder=4)
        handles.append(line)
        labels.append(label)
    if any(d for _, pts in series for _, _, d in pts):
        handles.append(ax.scatter([], [], color="k", marker="x", s=70, linewidths=2))
        labels.append("diverged run")
    if base_error is not None and np.isfinite(base_error):
        handles.append(ax.axhline(base_error, color="gray", ls="--", lw=1))
        labels.append(f"base model ({base_error:.2e})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    h_note = " (ODELoRA: time step h)" if any(lab.startswith("odelora") for lab, _ in series) else ""
    ax.set(xlabel="learning rate" + h_note, ylabel="final relative L2 error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles, labels, fontsize=9)
    if title:
        ax.set_title(title)
    return _save(fig, path)


ADAPTER_STATE_NAMES = {  # name in metrics.jsonl (layer<i>/<name>) -> (panel title, axis label)
    "eff_rank": ("effective rank of ΔW", "exp(entropy of σ/Σσ)"),
    "balance": ("balance of the factors", "‖BᵀB − AAᵀ‖ / ‖BᵀB‖"),
    "delta_rel": ("relative weight change", "‖ΔW‖ / ‖W_start‖"),
    "feature_change": ("hidden-feature change", "‖h − h_start‖ / ‖h_start‖"),
    "stable_rank": ("stable rank of ΔW", "‖ΔW‖²_F / ‖ΔW‖²_2"),
}


def plot_adapter_state(series: Sequence[tuple[str, dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """One panel per adapter-state quantity (``layerN/<name>`` in metrics.jsonl) against step: per
    method the median over layers and seeds, shaded min–max over seeds; log y where it spans decades."""
    names = sorted({n for _, bands in series for n, b in bands.items() if b is not None})
    if not names:
        names = ["(none recorded)"]
    ncol = 2 if len(names) == 4 else min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = _subplots(nrow, ncol, figsize=(5.2 * ncol, 3.9 * nrow + 0.8), squeeze=False)
    handles, labels = [], []
    for (label, bands), color in zip(series, _colors(len(series))):
        line = None
        for ax, name in zip(axes.flat, names):
            band = bands.get(name)
            if band is None:
                continue
            x, med, lo, hi = band
            line, = ax.plot(x, med, color=color, lw=1.6, marker="o" if x.size < 3 else None, ms=4)
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        if line is not None:
            handles.append(line)
            labels.append(label)
    for ax, name in zip(axes.flat, names):
        ys = np.concatenate([b[1] for _, bands in series for b in [bands.get(name)] if b is not None] or [np.zeros(0)])
        ys = ys[np.isfinite(ys)]
        if ys.size and ys.min() > 0 and ys.max() / ys.min() > 20:
            ax.set_yscale("log")
        head, unit = ADAPTER_STATE_NAMES.get(name, (name, name))
        ax.set(xlabel="step", ylabel=unit, title=f"{head} ({name})")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return _save_with_legend(fig, handles, labels, title, path)


def plot_solution_rows(problem: Any, rows: Sequence[tuple[str, torch.nn.Module]], path: str | Path,
                       title: str = "") -> Path:
    """One row per network: prediction, reference and |error| on the problem's evaluation grid. The
    prediction and reference panels share one colour scale, the |error| panels one log scale."""
    from matplotlib.colors import LogNorm

    pts, ref = problem.eval_grid()
    shape = tuple(problem.eval_points)
    axes_ = problem.eval_axes()
    extent = [axes_[1][0], axes_[1][-1], axes_[0][0], axes_[0][-1]]
    r = np.asarray(ref).reshape(shape)
    preds = []
    for _, net in rows:
        like = next(iter(net.buffers()), None)
        like = like if like is not None else next(iter(net.parameters()))
        with torch.no_grad():
            u = net(torch.tensor(pts, dtype=like.dtype, device=like.device)).reshape(-1).double().cpu().numpy()
        preds.append(u.reshape(shape))
    vmin = float(min([r.min()] + [u.min() for u in preds]))
    vmax = float(max([r.max()] + [u.max() for u in preds]))
    errs = [np.abs(u - r) for u in preds]
    emax = max(float(e.max()) for e in errs) if errs else 1.0
    emax = emax if emax > 0 else 1.0
    norm = LogNorm(vmin=emax * 1e-4, vmax=emax)
    fig, axs = _subplots(len(rows), 3, figsize=(11, 2.4 * len(rows) + 0.7), squeeze=False)
    xlab, ylab = problem.variables[1], problem.variables[0]
    for i, ((label, _), u, err) in enumerate(zip(rows, preds, errs)):
        for ax, data, name in ((axs[i, 0], u, f"{label}\nprediction"), (axs[i, 1], r, "reference")):
            im = ax.imshow(data, origin="lower", aspect="auto", extent=extent, cmap="RdBu_r", vmin=vmin, vmax=vmax)
            fig.colorbar(im, ax=ax)
            ax.set(title=name, xlabel=xlab, ylabel=ylab)
        im = axs[i, 2].imshow(np.maximum(err, emax * 1e-4), origin="lower", aspect="auto", extent=extent,
                              cmap="magma", norm=norm)
        fig.colorbar(im, ax=axs[i, 2])
        rel = np.linalg.norm(u - r) / np.linalg.norm(r)
        axs[i, 2].set(title=f"|error| (rel. L2 {rel:.2e})", xlabel=xlab, ylabel=ylab)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi=70, rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title


def _save_with_legend(fig, handles, labels, title: str, path: str | Path) -> Path:
    """A shared legend below the panels, the title, and the PNG."""
    bottom = _legend_below(fig, handles, labels)
    if title:
        fig.suptitle(title)
    return _save(fig, path, rect=(0, bottom, 1, 1))
