"""Figures for a run: loss curves and prediction / reference / error panels."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                base_error: float | None = None) -> Path:
    """Loss per residual term and relative L2 error against steps (log scale);
    ``base_error`` (the unadapted model's error) is drawn as a dashed line."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_solution(problem: Any, net: torch.nn.Module, path: str | Path, title: str = "") -> Path:
    """Prediction, reference and absolute error on the evaluation grid."""
    plt = _plt()
    pts, ref = problem.eval_grid()
    like = next(iter(net.buffers()), None)
    like = like if like is not None else next(iter(net.parameters()))
    with torch.no_grad():
        pred = net(torch.tensor(pts, dtype=like.dtype, device=like.device)).reshape(-1).double().cpu().numpy()
    shape = tuple(problem.eval_points)
    axes = problem.eval_axes()
    u, r = pred.reshape(shape), ref.reshape(shape)
    extent = [axes[1][0], axes[1][-1], axes[0][0], axes[0][-1]]
    fig, axs = plt.subplots(1, 3, figsize=(14, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
