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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
