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

from pinn_lora.adapters.lora import LoRALinear


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

    forward_is_linear = True  # the jet path may use weight() for this layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias0)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", detach_norm=True" if self.detach_norm else "")
