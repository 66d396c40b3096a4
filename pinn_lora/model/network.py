"""The PINN network: an MLP laid out like ``deepxde.nn.FNN`` (a ``linears``
ModuleList, activation between layers, optional output transform), so a
state dict saved here loads into DeepXDE's FNN and back."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sin": torch.sin,
    "silu": nn.functional.silu,
    "gelu": nn.functional.gelu,
}

Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PINN(nn.Module):
    """Fully connected network ``layers[0] -> ... -> layers[-1]``."""

    def __init__(self, layers: Sequence[int], activation: str = "tanh",
                 output_transform: Transform | None = None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if len(layers) < 2 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers={list(layers)!r}: need at least input and output sizes, all >= 1")
        self.layer_sizes = [int(n) for n in layers]
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.layer_sizes[:-1], self.layer_sizes[1:]))
        self._output_transform = output_transform

    def apply_output_transform(self, transform: Transform | None) -> None:
        self._output_transform = transform

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Glorot-normal weights and zero biases (DeepXDE's 'Glorot normal')."""
        with torch.no_grad():
            for lin in self.linears:
                fan_out, fan_in = lin.weight.shape
                std = (2.0 / (fan_in + fan_out)) ** 0.5
                w = torch.randn(lin.weight.shape, generator=generator, dtype=torch.float64) * std
                lin.weight.copy_(w.to(lin.weight))
                lin.bias.zero_()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        for lin in self.linears[:-1]:
            x = self.activation(lin(x))
        x = self.linears[-1](x)
        if self._output_transform is not None:
            x = self._output_transform(inputs, x)
        return x

    def architecture(self) -> dict:
        return {"layers": list(self.layer_sizes), "activation": self.activation_name}


def build_network(layers: Sequence[int], activation: str, seed: int, *, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu", output_transform: Transform | None = None) -> PINN:
    """A freshly initialised PINN, reproducible from ``seed``."""
    net = PINN(layers, activation, output_transform)
    net.reset_parameters(torch.Generator().manual_seed(int(seed)))
    return net.to(dtype=dtype, device=device)


def to_deepxde(net: PINN):
    """The same network as a ``deepxde.nn.FNN`` (weights copied, transform kept)."""
    from pinn_lora.core.dde import deepxde

    dde = deepxde()
    fnn = dde.nn.FNN(net.layer_sizes, net.activation_name, "Glorot normal")
    p = next(net.parameters(), None)
    ref = p if p is not None else next(net.buffers())
    fnn = fnn.to(dtype=ref.dtype, device=ref.device)
    fnn.load_state_dict(net.state_dict())
    if net._output_transform is not None:
        fnn.apply_output_transform(net._output_transform)
    return fnn
