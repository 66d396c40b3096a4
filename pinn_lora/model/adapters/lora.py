"""LoRA (Hu et al., arXiv 2106.09685): ΔW = s·B·A with B (out × r), A (r × in).

Initialisations: ``kaiming`` (B = 0, A Kaiming-uniform, the paper's), or any
factors given explicitly (ODELoRA's balanced starts). When the initial factors
are non-zero, ``s·B0·A0`` is subtracted from the frozen weight so the adapted
layer starts exactly at the base layer."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pinn_lora.model.adapters.base import AdapterLinear, factor_gradients


def check_rank(rank: int) -> int:
    """``rank`` as an int, or a ValueError unless it is an integer >= 1."""
    r = int(rank)
    if isinstance(rank, bool) or r != rank or r < 1:
        raise ValueError(f"rank={rank!r}: must be an integer >= 1")
    return r


def layer_rank(rank: int, base: nn.Linear) -> int:
    """The rank used on ``base``: ``rank`` clipped to min(out, in). PINN input
    and output layers are thin (2 → 64, 64 → 1), where a larger rank is
    impossible; the scale α/rank still uses the configured rank."""
    return min(check_rank(rank), base.in_features, base.out_features)


def kaiming_factors(rank: int, in_features: int, out_features: int, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA's start (float64): B = 0 (out × r), A Kaiming-uniform (r × in) with bound 1/sqrt(in),
    as nn.Linear's and PEFT's kaiming_uniform_(a=sqrt(5))."""
    bound = 1.0 / math.sqrt(in_features)
    a = (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return torch.zeros(out_features, rank, dtype=torch.float64), a


class LoRALinear(AdapterLinear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, *, generator: torch.Generator | None = None,
                 factors: tuple[torch.Tensor, torch.Tensor] | None = None, scale: float | None = None,
                 train_a: bool = True) -> None:
        super().__init__(base)
        self.rank = layer_rank(rank, base)
        self.scale = float(alpha) / int(rank) if scale is None else float(scale)
        like = dict(dtype=self.weight0.dtype, device=self.weight0.device)
        if factors is None:
            b, a = kaiming_factors(self.rank, self.in_features, self.out_features, generator)
        else:
            b, a = factors
            with torch.no_grad():
                self.weight0 -= self.scale * (b.to(**like) @ a.to(**like))
        self.lora_B = nn.Parameter(b.to(**like).clone())
        if train_a:
            self.lora_A = nn.Parameter(a.to(**like).clone())
        else:  # a buffer, not a frozen parameter: DeepXDE's requires_grad_() would unfreeze it
            self.register_buffer("lora_A", a.to(**like).clone())
        self.capture_weight_grad = False  # set by dynamics that need G = dL/dW itself
        self.weight_grad: torch.Tensor | None = None

    @torch.no_grad()
    def restart(self, generator: torch.Generator | None) -> None:
        """Merge s·B·A into the frozen weight and start again from B = 0 and a fresh A
        (chained methods: CoLA, RAC). The layer's function is unchanged."""
        self.weight0 += self.delta_weight()
        b, a = kaiming_factors(self.rank, self.in_features, self.out_features, generator)
        self.lora_B.copy_(b)
        self.lora_A.copy_(a)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_B, self.lora_A

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def point_gradients(self, delta: torch.Tensor, h: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """For W = W0 + s·B·A: ∂rᵢ/∂B = s Σ_s δ[s,i] (A h[s,i])ᵀ, ∂rᵢ/∂A = s Σ_s (Bᵀ δ[s,i]) h[s,i]ᵀ."""
        b, a = (t.detach() for t in self.factors())
        return factor_gradients(delta, h, names, b, a, self.scale)

    forward_is_linear = True  # both branches compute F.linear(x, weight(), bias0): the jet path may use weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.capture_weight_grad or not torch.is_grad_enabled():
            return super().forward(x)
        # materialise W so a hook sees the full gradient G = dL/dW, summed over every use of the
        # layer in the residual's derivative graph (cheap for PINN-sized layers)
        w = self.weight()
        if w.requires_grad:
            w.register_hook(self._store_weight_grad)
        return F.linear(x, w, self.bias0)

    def _store_weight_grad(self, grad: torch.Tensor) -> None:
        self.weight_grad = grad.detach()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}"
