"""Use pinn_lora problems inside DeepXDE: the same residual definitions,
evaluated through DeepXDE's own derivative operators (``dde.grad``)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from pinn_lora._dde import deepxde


class DeepXDEDerivatives:
    """The derivative-provider interface (``d.u``, ``d.u_x``, ``d.u_xx`` …) on
    top of ``dde.grad.jacobian``/``hessian`` for DeepXDE's ``pde(x, y)`` calls."""

    def __init__(self, inputs: torch.Tensor, outputs: torch.Tensor, variables: tuple[str, ...]) -> None:
        self.points, self.u, self.variables = inputs, outputs, variables
        self._grad = deepxde().grad

    def column(self, name: str) -> torch.Tensor:
        return self.points[:, self.variables.index(name)].unsqueeze(1)

    def __getattr__(self, name: str) -> torch.Tensor:
        if not name.startswith("u_"):
            raise AttributeError(name)
        wrt = name[2:]
        if not wrt or len(wrt) > 2 or any(v not in self.variables for v in wrt):
            raise AttributeError(f"unknown derivative {name!r} for variables {self.variables}")
        idx = [self.variables.index(v) for v in wrt]
        if len(idx) == 1:
            return self._grad.jacobian(self.u, self.points, i=0, j=idx[0])
        return self._grad.hessian(self.u, self.points, i=idx[0], j=idx[1])


def deepxde_pde(problem: Any) -> Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    """``pde(x, y)`` for ``dde.data.PDE``/``TimePDE``: the problem's residual
    terms, unnormalised, in DeepXDE's calling convention."""

    def pde(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        return list(problem.residuals(DeepXDEDerivatives(x, y, problem.variables)).values())

    return pde
