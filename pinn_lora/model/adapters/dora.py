"""DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353):
``W = m ⊙ V/‖V‖`` with ``V = W0 + s·B·A`` and a trainable magnitude ``m``.

The norm is taken per output unit (over the input dimension of torch's
out × in weight), the convention of PEFT's implementation; m starts at
‖W0‖ per output unit, B at 0, so the layer starts at the base layer.

By default the norm is differentiated exactly (PINN layers are small and the
exact gradient is the method's definition). ``detach_norm=True`` treats
‖V‖ as a constant in the backward pass, the memory-saving trick of the paper's
§4.3 that PEFT always uses (``peft/tuners/lora/dora.py``, ``weight_norm.detach()``
in ``DoraLinearLayer.forward``): the same forward values (and the same input
derivatives, so the same PINN residual), different gradients w.r.t. m, B and A.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pinn_lora.model.adapters.lora import LoRALinear


class DoRALinear(LoRALinear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, *, generator: torch.Generator | None = None,
                 scale: float | None = None, detach_norm: bool = False) -> None:
        super().__init__(base, rank, alpha, generator=generator, scale=scale)
        self.magnitude = nn.Parameter(torch.linalg.vector_norm(self.weight0, dim=1))
        self.detach_norm = bool(detach_norm)

    def direction(self) -> torch.Tensor:
        """V/‖V‖ per output unit, V = W0 + s·B·A (‖V‖ a constant to autograd if ``detach_norm``)."""
        v = self.weight0 + super().delta_weight()  # LoRA's ΔW = s·B·A
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        return v / (norm.detach() if self.detach_norm else norm)

    def weight(self) -> torch.Tensor:
        return self.magnitude[:, None] * self.direction()

    def delta_weight(self) -> torch.Tensor:
        return self.weight() - self.weight0

    def point_gradients(self, delta: torch.Tensor, h: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """With V = W0 + s·B·A, V̂ its rows normalised, c = m/‖V‖ per row and, per point,
        G = Σ_s δ_s h_sᵀ (never formed): ∂r/∂m = rowwise G·V̂ =: q (= Σ_s δ_s ⊙ V̂h_s),
        ∂r/∂V = diag(c)(G − diag(q)V̂) (without the q term when the norm is detached), and
        through V: ∂r/∂B = s·∂r/∂V·Aᵀ, ∂r/∂A = s·Bᵀ·∂r/∂V."""
        b, a = (t.detach() for t in self.factors())
        v = self.weight0 + self.scale * (b @ a)
        norm = torch.linalg.vector_norm(v, dim=1)
        vhat, c = v / norm[:, None], self.magnitude.detach() / norm
        q = torch.einsum("sim,sim->im", delta, h @ vhat.T)  # (N, out)
        got = {}
        if "magnitude" in names:
            got["magnitude"] = q
        proj = not self.detach_norm
        if "lora_B" in names:
            gb = torch.einsum("sim,sir->imr", delta, h @ a.T)
            if proj:
                gb = gb - q[:, :, None] * (vhat @ a.T)[None]
            got["lora_B"] = (self.scale * c[None, :, None] * gb).reshape(h.shape[1], -1)
        if "lora_A" in names:
            ga = torch.einsum("sir,sin->irn", (delta * c) @ b, h)
            if proj:
                ga = ga - torch.einsum("im,mr,mn->irn", q * c, b, vhat)
            got["lora_A"] = (self.scale * ga).reshape(h.shape[1], -1)
        return got

    forward_is_linear = True  # the jet path may use weight() for this layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias0)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", detach_norm=True" if self.detach_norm else "")
