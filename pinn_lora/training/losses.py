"""The physics loss: the normalised mean-square residual of each term (optionally causally weighted)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pinn_lora.model.derivatives import provider


def residual_losses(problem: Any, net: nn.Module, points: torch.Tensor, causal_eps: float = 0.0,
                    causal_bins: int = 32, derivatives: str = "auto") -> dict[str, torch.Tensor]:
    """Normalised mean-square residual per term. With ``causal_eps`` > 0 and a
    time variable, points are binned in time and bin i is weighted by
    exp(−ε Σ_{k<i} L_k) (weights not differentiated). ``derivatives``: the engine
    (see :func:`pinn_lora.model.derivatives.provider`)."""
    return residual_terms(problem, provider(problem, net, points, derivatives), points, causal_eps, causal_bins)


def residual_terms(problem: Any, d: Any, points: torch.Tensor, causal_eps: float = 0.0,
                   causal_bins: int = 32, copies: int = 0, scale: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """:func:`residual_losses` from a derivative provider ``d`` already built on ``points``.

    ``copies`` = K > 0: ``d`` holds K networks' values at the same ``points`` (network k owns rows
    k·N … (k+1)·N − 1; :class:`pinn_lora.model.derivatives.JetDerivatives` ``stacked``), ``problem``'s
    coefficients may be per-row tensors (:func:`pinn_lora.runs.many.row_problem`) and ``scale`` holds the
    K residual scales, shape (K, 1); every term is then K values, one per network."""
    k = max(copies, 1)
    scale = problem.residual_scale() if scale is None else scale
    out = {}
    for name, r in problem.residuals(d).items():
        sq = r.reshape(k, -1) ** 2 / scale  # (K, N)
        if causal_eps > 0 and "t" in problem.variables:
            t = points[:, problem.variables.index("t")]
            lo, hi = problem.lower[problem.variables.index("t")], problem.upper[problem.variables.index("t")]
            idx = ((t - lo) / (hi - lo) * causal_bins).long().clamp(0, causal_bins - 1)
            sums = torch.zeros(k, causal_bins, dtype=sq.dtype, device=sq.device).index_add_(1, idx, sq)
            counts = torch.zeros(causal_bins, dtype=sq.dtype, device=sq.device).index_add_(
                0, idx, torch.ones_like(t, dtype=sq.dtype)).clamp_min(1)
            per_bin = sums / counts
            before = torch.cumsum(per_bin.detach(), 1) - per_bin.detach()
            w = torch.exp(-causal_eps * before)
            term = (w * per_bin).mean(1)
        else:
            term = sq.mean(1)
        out[name] = term if copies else term[0]
    return out


def residual_loss(problem: Any, net: nn.Module, points: torch.Tensor, causal_eps: float = 0.0,
                  causal_bins: int = 32, derivatives: str = "auto") -> torch.Tensor:
    """The training loss: the sum of :func:`residual_losses`."""
    return sum(residual_losses(problem, net, points, causal_eps, causal_bins, derivatives).values())
