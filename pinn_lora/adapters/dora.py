"""DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353):
``W = m ⊙ V/‖V‖`` with ``V = W0 + s·B·A`` and a trainable magnitude ``m``.

The norm is taken per output unit (over the input dimension of torch's
out × in weight), the convention of PEFT's implementation; m starts at
‖W0‖ per output unit, B at 0, so the layer starts at the base layer. The norm
is differentiated exactly (the paper's memory-saving detach is not used:
PINN layers are small and the exact gradient is the method's definition).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pinn_lora.adapters.lora import LoRALinear


class DoRALinear(LoRALinear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, *, generator: torch.Generator | None = None,
                 scale: float | None = None) -> None:
        super().__init__(base, rank, alpha, generator=generator, scale=scale)
        self.magnitude = nn.Parameter(torch.linalg.vector_norm(self.weight0, dim=1))

    def direction(self) -> torch.Tensor:
        """V/‖V‖ per output unit, V = W0 + s·B·A."""
        v = self.weight0 + super().delta_weight()  # LoRA's ΔW = s·B·A
        return v / torch.linalg.vector_norm(v, dim=1, keepdim=True)

    def weight(self) -> torch.Tensor:
        return self.magnitude[:, None] * self.direction()

    def delta_weight(self) -> torch.Tensor:
        return self.weight() - self.weight0

    forward_is_linear = True  # the jet path may use weight() for this layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias0)
