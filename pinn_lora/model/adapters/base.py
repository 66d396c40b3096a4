"""The adapter contract: wrap a linear layer, keep its weights as frozen
buffers, and build the weight update from one formula.

Frozen weights are *buffers*, not parameters with ``requires_grad=False``:
DeepXDE's ``Model`` calls ``requires_grad_()`` on the whole network at every
evaluation, which would silently unfreeze them.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class AdapterLinear(nn.Module):
    """Base of every adapted linear layer: ``y = W0 x + b + delta(x)``."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_buffer("weight0", base.weight.detach().clone())
        self.register_buffer("bias0", None if base.bias is None else base.bias.detach().clone())

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in), the one formula every other method derives from."""
        raise NotImplementedError

    def weight(self) -> torch.Tensor:
        """W = W0 + ΔW, the weight the layer computes with."""
        return self.weight0 + self.delta_weight()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta_weight())

    materialise = True  # False: always the factored W0·x + delta(x) (a selector's column gather, say)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        if self.materialise and rows * (self.in_features + self.out_features) >= self.in_features * self.out_features:
            # W = W0 + ΔW once, then one product: cheaper than W0·x beside the factored delta(x) whenever
            # the rows outnumber in·out/(in + out) (32 for a 64×64 layer), i.e. for every PINN batch
            return F.linear(x, self.weight(), self.bias0)
        return F.linear(x, self.weight0, self.bias0) + self.delta(x)

    def merged(self) -> nn.Linear:
        """A plain linear layer with ΔW folded into the weight."""
        with torch.no_grad():
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias0 is not None)
            lin = lin.to(dtype=self.weight0.dtype, device=self.weight0.device)
            lin.weight.copy_(self.weight())
            if self.bias0 is not None:
                lin.bias.copy_(self.bias0)
        return lin

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def point_gradients(self, delta: torch.Tensor, h: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor] | None:
        """Per-point gradients for the structured residual Jacobian (:mod:`pinn_lora.model.jacobian`):
        ``delta`` (S, N, out) is ∂rᵢ/∂z for each of the S jet slots' outputs z = W·h, ``h`` (S, N, in)
        the slots' inputs, so the per-point ∂rᵢ/∂W is Σ_s δ[s,i] h[s,i]ᵀ. Returns {parameter name:
        (N, numel)} for the parameters in ``names``, written through the layer's own formula without
        forming that m×n matrix per point, or None: the caller then contracts the per-point ∂rᵢ/∂W
        with ∂W/∂θ (correct for any layer, N·m·n·p operations). A subclass that changes ``weight``
        or ``delta_weight`` must write its own (the engine checks that it did)."""
        return None


def factor_gradients(delta: torch.Tensor, h: torch.Tensor, names: set[str], left: torch.Tensor, right: torch.Tensor,
                     scale: float) -> dict[str, torch.Tensor]:
    """``lora_B``'s and ``lora_A``'s per-point gradients (those in ``names``) for
    ΔW = scale·(left·A + B·right): LoRA's ΔW = s·B·A (left = B, right = A, as each factor sees the other),
    OD-LoRA's split ΔW = s(Q_B·A + B·Q_Aᵀ)."""
    got = {}
    if "lora_B" in names:
        got["lora_B"] = outer_gradients(delta, h, None, right, scale)
    if "lora_A" in names:
        got["lora_A"] = outer_gradients(delta, h, left, None, scale)
    return got


def outer_gradients(delta: torch.Tensor, h: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None,
                    scale: float = 1.0) -> torch.Tensor:
    """Per point, scale·Σ_s (leftᵀ δ[s,i]) (right h[s,i])ᵀ flattened to (N, ·): the gradient of a
    factor X in ΔW = scale·L·X·R (``left`` = L, ``right`` = R; None for an identity)."""
    d = delta if left is None else delta @ left
    x = h if right is None else h @ right.T
    return scale * torch.einsum("sip,siq->ipq", d, x).reshape(h.shape[1], -1)


def resolve_targets(n_layers: int, targets: str | Sequence[int]) -> list[int]:
    """Indices of the linear layers to adapt: 'all', 'hidden' (all but the
    output layer), 'output', or a list of indices (negative allowed)."""
    if isinstance(targets, str):
        named = {"all": range(n_layers), "hidden": range(n_layers - 1), "output": [n_layers - 1]}
        if targets not in named:
            raise ValueError(f"targets={targets!r}: use 'all', 'hidden', 'output' or a list of layer indices "
                             f"0..{n_layers - 1}")
        return list(named[targets])
    out = []
    for t in targets:
        i = int(t)
        if not -n_layers <= i < n_layers:
            raise ValueError(f"targets: layer index {t} out of range; the network has {n_layers} linear layers")
        out.append(i % n_layers)
    if not out:
        raise ValueError("targets: the list of layers to adapt is empty")
    return sorted(set(out))


def attach_adapters(net: nn.Module, make: Callable[[int, nn.Linear], AdapterLinear],
                    targets: str | Sequence[int] = "all") -> nn.Module:
    """Freeze ``net`` and wrap the chosen ``net.linears`` with ``make(index, layer)``.

    Every parameter of ``net`` becomes a buffer of the same name (state-dict keys unchanged), so
    ``net.requires_grad_()`` — which DeepXDE's ``Model`` calls at every evaluation — cannot
    unfreeze a layer left out of ``targets``; only the adapters' own tensors are parameters."""
    freeze_as_buffers(net)
    for i in resolve_targets(len(net.linears), targets):
        net.linears[i] = make(i, net.linears[i])
    return net


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a buffer with the same name and values (in place)."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, p.detach().requires_grad_(False))
    return module


def adapter_layers(net: nn.Module) -> Iterator[tuple[int, AdapterLinear]]:
    for i, lin in enumerate(net.linears):
        if isinstance(lin, AdapterLinear):
            yield i, lin


def merge_adapters(net: nn.Module) -> nn.Module:
    """Replace every adapter in ``net`` by its merged linear layer (in place)."""
    for i, lin in list(adapter_layers(net)):
        net.linears[i] = lin.merged()
    return net
