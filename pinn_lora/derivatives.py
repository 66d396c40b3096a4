"""Derivative provider: ``u`` and its partial derivatives from one network call.

Residuals are written against this object (``d.u``, ``d.u_x``, ``d.u_t``,
``d.u_xx`` …), so the same residual definition serves any engine that can
provide those names. Every derivative is computed at most once per provider:
all first derivatives come from one reverse pass, each second derivative
``u_vv`` from one more.
"""
from __future__ import annotations

from typing import Callable

import torch


class Derivatives:
    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                 variables: tuple[str, ...]) -> None:
        self.variables = variables
        self.points = points if points.requires_grad else points.detach().requires_grad_(True)
        self.u = net(self.points)
        self._first: torch.Tensor | None = None
        self._cache: dict[str, torch.Tensor] = {}

    def column(self, name: str) -> torch.Tensor:
        """The input column ``name`` (e.g. ``d.column("x")``), shape (N, 1)."""
        return self.points[:, self.variables.index(name)].unsqueeze(1)

    def _grad(self) -> torch.Tensor:
        if self._first is None:
            (self._first,) = torch.autograd.grad(self.u.sum(), self.points, create_graph=True)
        return self._first

    def __getattr__(self, name: str) -> torch.Tensor:
        if not name.startswith("u_") or "_cache" not in self.__dict__:
            raise AttributeError(name)
        cache = self._cache
        if name in cache:
            return cache[name]
        wrt = name[2:]
        if not wrt or any(v not in self.variables for v in wrt) or len(wrt) > 2:
            raise AttributeError(f"unknown derivative {name!r} for variables {self.variables}")
        if len(wrt) == 1:
            out = self._grad()[:, self.variables.index(wrt)].unsqueeze(1)
        else:
            first = getattr(self, "u_" + wrt[0])
            (g,) = torch.autograd.grad(first.sum(), self.points, create_graph=True)
            out = g[:, self.variables.index(wrt[1])].unsqueeze(1)
        cache[name] = out
        return out
