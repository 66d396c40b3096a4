"""Curvature of the (normalised) PINN loss: the largest Hessian eigenvalue
with respect to the network's weights, by power iteration on Hessian-vector
products. Gradient descent — and ODELoRA, whose time step is a full-GD
learning rate — is stable only for steps below about 2/λ_max."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def _power(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]], v: list[torch.Tensor], shift: float,
           iters: int, tol: float) -> float:
    """Dominant eigenvalue of H − shift·I by power iteration."""
    lam = 0.0
    for _ in range(iters):
        hv = [h - shift * x for h, x in zip(hvp(v), v)]
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = torch.sqrt(sum((x * x).sum() for x in hv))
        v = [x / norm for x in hv]
        if abs(new - lam) <= tol * abs(new):
            return new
        lam = new
    return lam


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 50,
                           seed: int = 0, tol: float = 1e-4) -> float:
    """The largest (algebraic) eigenvalue λ_max of ∂²L/∂θ² at ``params``
    (which must require grad). If the dominant eigenvalue is negative, a
    second power iteration on H − λ_dom·I finds λ_max."""
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)

    def hvp(vec: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True))

    dominant = _power(hvp, v, 0.0, iters, tol)
    if dominant >= 0:
        return dominant
    return _power(hvp, v, dominant, iters, tol) + dominant
