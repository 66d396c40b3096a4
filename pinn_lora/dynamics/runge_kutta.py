"""Explicit Runge–Kutta schemes as data (Butcher tableaus) and one stepper.

A tableau checks itself when built (row sums equal the nodes, weights sum to
one, embedded error weights sum to zero), so a wrong tableau fails at import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Field = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass(frozen=True)
class ButcherTableau:
    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # strictly lower triangular rows; row i has i entries
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None = None  # b - b_hat of an embedded pair (sums to 0)
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(f"{self.name}: c, a, b must all have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"{self.name}: row {i} of a must have {i} entries (explicit scheme)")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"{self.name}: row {i} of a sums to {sum(row)}, not c[{i}]={self.c[i]}")
        if abs(sum(self.b) - 1) > 1e-12:
            raise ValueError(f"{self.name}: weights b sum to {sum(self.b)}, not 1")
        if self.b_err is not None and (len(self.b_err) != s or abs(sum(self.b_err)) > 1e-12):
            raise ValueError(f"{self.name}: error weights must have {s} entries summing to 0")

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = ButcherTableau("euler", 1, (0.0,), ((),), (1.0,), doc="forward Euler, 1 stage, order 1")
HEUN = ButcherTableau("heun", 2, (0.0, 1.0), ((), (1.0,)), (0.5, 0.5), doc="Heun's method, 2 stages, order 2")
MIDPOINT = ButcherTableau("midpoint", 2, (0.0, 0.5), ((), (0.5,)), (0.0, 1.0),
                          doc="explicit midpoint, 2 stages, order 2")
RK4 = ButcherTableau("rk4", 4, (0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                     (1 / 6, 1 / 3, 1 / 3, 1 / 6), doc="classical Runge–Kutta, 4 stages, order 4")

TABLEAUS: dict[str, ButcherTableau] = {t.name: t for t in (EULER, HEUN, MIDPOINT, RK4)}


def get_tableau(name: str) -> ButcherTableau:
    if name not in TABLEAUS:
        raise ValueError(f"unknown scheme {name!r}; choose one of {', '.join(TABLEAUS)}")
    return TABLEAUS[name]


def rk_step(y0: Sequence[torch.Tensor], f: Field, h: float, tableau: ButcherTableau,
            k0: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """One explicit RK step of ``y' = f(y)`` from ``y0`` with step ``h``.

    ``k0`` (the field at ``y0``) may be passed in when the caller already has
    it. Returns the new state and the stage derivatives."""
    ks: list[list[torch.Tensor]] = []
    for i in range(tableau.stages):
        if i == 0 and k0 is not None:
            ks.append(k0)
            continue
        y = [y.clone() for y in y0]
        for j, aij in enumerate(tableau.a[i]):
            if aij:
                for yi, kj in zip(y, ks[j]):
                    yi.add_(kj, alpha=h * aij)
        ks.append(f(y))
    y1 = [y.clone() for y in y0]
    for bi, k in zip(tableau.b, ks):
        if bi:
            for yi, ki in zip(y1, k):
                yi.add_(ki, alpha=h * bi)
    return y1, ks
