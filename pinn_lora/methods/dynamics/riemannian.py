"""Riemannian-preconditioned LoRA (Zhang & Pilanci, "Riemannian Preconditioned
LoRA for Fine-Tuning Foundation Models", ICML 2024, arXiv 2402.02347), i.e.
ScaledGD (Tong, Ma & Chi, JMLR 2021) on the LoRA factors.

Before each optimiser step the factor gradients of every :class:`LoRALinear`
are replaced by

    g_B ← g_B (S_A + λI)⁻¹,   g_A ← (S_B + λI)⁻¹ g_A,   S_A = AAᵀ, S_B = BᵀB,

both computed from the gradients and factors at the start of the step (r×r
Cholesky solves in float64). With plain SGD of step ``h`` and ``λ = 0`` one
step moves W = W0 + s·B·A, to first order in ``h``, by

    −h·s²·(P_B G + G P_A),   P_B = B S_B⁻¹ Bᵀ, P_A = Aᵀ S_A⁻¹ A,

which counts the block ``P_B G P_A`` twice, where ODELoRA's flow moves it by
``−P_T(G) = −(P_B G + G P_A − P_B G P_A)`` (per unit time, independent of s).

``damping`` is Zhang & Pilanci's absolute regulariser ``λ`` (their δ), not
the trace-relative one ODELoRA uses: LoRA's start has B = 0, so S_B = 0 and a
relative λ = damping·tr(S_B)/r would be 0 there; an absolute λ > 0 keeps the
solves defined (and g_A = s·Bᵀ G is then 0 anyway).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from pinn_lora.model.adapters.lora import LoRALinear
from pinn_lora.methods.dynamics.base import Closure, GradientDynamics, damped_cholesky


def _damped_solve(s: torch.Tensor, rhs: torch.Tensor, damping: float) -> torch.Tensor:
    """(S + λI)⁻¹ rhs for symmetric positive semi-definite S (r×r), in float64."""
    return torch.cholesky_solve(rhs.double(), damped_cholesky(s, damping))


def preconditioned_gradients(b: torch.Tensor, a: torch.Tensor, g_b: torch.Tensor, g_a: torch.Tensor,
                             damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(g_B (AAᵀ + λI)⁻¹, (BᵀB + λI)⁻¹ g_A) in the dtype of the gradients."""
    b64, a64 = b.detach().double(), a.detach().double()
    pg_b = _damped_solve(a64 @ a64.T, g_b.T, damping).T  # S_A is symmetric: (S_A⁻¹ g_Bᵀ)ᵀ = g_B S_A⁻¹
    pg_a = _damped_solve(b64.T @ b64, g_a, damping)
    return pg_b.to(g_b.dtype), pg_a.to(g_a.dtype)


class RiemannianDynamics(GradientDynamics):
    """SGD or Adam on the LoRA factors of ``layers`` with the r×r scaled
    (Riemannian) preconditioner applied to the gradients before each step."""

    def __init__(self, layers: Sequence[LoRALinear], lr: float, optimizer: str = "adam", damping: float = 1e-6,
                 schedule: str = "constant", final_ratio: float = 0.1) -> None:
        if not layers:
            raise ValueError("riemannian: no adapted layers")
        if not damping > 0:
            raise ValueError(f"riemannian: damping must be > 0 (LoRA starts at B = 0), got {damping!r}")
        self.layers = list(layers)
        self.damping = float(damping)
        super().__init__([p for lay in self.layers for p in lay.factors()], lr, optimizer, schedule, final_ratio)

    def precondition(self) -> None:
        """Replace the factor gradients in place by their preconditioned versions."""
        with torch.no_grad():
            for lay in self.layers:
                b, a = lay.factors()
                if b.grad is None or a.grad is None:
                    continue
                pg_b, pg_a = preconditioned_gradients(b, a, b.grad, a.grad, self.damping)
                b.grad.copy_(pg_b)
                a.grad.copy_(pg_a)

    def step(self, closure: Closure) -> torch.Tensor:
        loss = closure()
        self.precondition()
        self.optimizer.step()
        return loss
