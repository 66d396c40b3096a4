"""Explicit Runge–Kutta schemes as data (Butcher tableaus) and one stepper.

A tableau checks itself when built (row sums equal the nodes, weights sum to
one, embedded error weights sum to zero), so a wrong tableau fails at import.

Embedded pairs (``bs23``, ``dopri5``) carry ``b_err = b − b̂``: the same stages
give the propagated solution (weights ``b``, order ``order``) and, through
:func:`error_estimate`, the local error of the embedded solution (order
``embedded_order``). :func:`adaptive_step` drives :func:`rk_step` with a
step-size controller (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
    embedded_order: int | None = None  # order of b_hat (the controller's q); set iff b_err is
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
        if (self.b_err is None) != (self.embedded_order is None):
            raise ValueError(f"{self.name}: an embedded pair needs both b_err and embedded_order")
        if self.embedded_order is not None and not 1 <= self.embedded_order < self.order:
            raise ValueError(f"{self.name}: embedded_order must be in 1..{self.order - 1}")

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        """True for an embedded pair (it can estimate its local error)."""
        return self.b_err is not None


def _pair(name: str, order: int, embedded_order: int, c: Sequence[float], a: Sequence[Sequence[float]],
          b: Sequence[float], b_hat: Sequence[float], doc: str) -> ButcherTableau:
    return ButcherTableau(name, order, tuple(c), tuple(tuple(r) for r in a), tuple(b),
                          tuple(x - y for x, y in zip(b, b_hat)), embedded_order, doc)


EULER = ButcherTableau("euler", 1, (0.0,), ((),), (1.0,), doc="forward Euler, 1 stage, order 1")
HEUN = ButcherTableau("heun", 2, (0.0, 1.0), ((), (1.0,)), (0.5, 0.5), doc="Heun's method, 2 stages, order 2")
MIDPOINT = ButcherTableau("midpoint", 2, (0.0, 0.5), ((), (0.5,)), (0.0, 1.0),
                          doc="explicit midpoint, 2 stages, order 2")
RK4 = ButcherTableau("rk4", 4, (0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                     (1 / 6, 1 / 3, 1 / 3, 1 / 6), doc="classical Runge–Kutta, 4 stages, order 4")

# Bogacki & Shampine, "A 3(2) pair of Runge–Kutta formulas", Appl. Math. Lett. 2 (1989) 321–325.
BS23 = _pair("bs23", 3, 2, (0.0, 1 / 2, 3 / 4, 1.0),
             ((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
             (2 / 9, 1 / 3, 4 / 9, 0.0), (7 / 24, 1 / 4, 1 / 3, 1 / 8),
             doc="Bogacki–Shampine 3(2), 4 stages, order 3 propagated, order-2 error estimate")
# Dormand & Prince, "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6 (1980) 19–26.
DOPRI5 = _pair("dopri5", 5, 4, (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
               ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
                (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
                (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
                (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
               (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
               (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
               doc="Dormand–Prince 5(4), 7 stages, order 5 propagated, order-4 error estimate")

TABLEAUS: dict[str, ButcherTableau] = {t.name: t for t in (EULER, HEUN, MIDPOINT, RK4, BS23, DOPRI5)}


def get_tableau(name: str) -> ButcherTableau:
    if name not in TABLEAUS:
        raise ValueError(f"unknown scheme {name!r}; choose one of {', '.join(TABLEAUS)}")
    return TABLEAUS[name]


def rk_step(y0: Sequence[torch.Tensor], f: Field, h: float, tableau: ButcherTableau,
            k0: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """One explicit RK step of ``y' = f(y)`` from ``y0`` with step ``h``.

    ``k0`` (the field at ``y0``) may be passed in when the caller already has
    it. Returns the new state and the stage derivatives; for an embedded pair,
    :func:`error_estimate` turns those same stages into the local error."""
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


def error_estimate(ks: Sequence[Sequence[torch.Tensor]], h: float, tableau: ButcherTableau) -> list[torch.Tensor]:
    """``y1 − ŷ1 = h·Σ b_err_i k_i`` from the stages of :func:`rk_step` (no new evaluation)."""
    if tableau.b_err is None:
        raise ValueError(f"{tableau.name} is not an embedded pair; it has no error estimate")
    err = [torch.zeros_like(k) for k in ks[0]]
    for ei, k in zip(tableau.b_err, ks):
        if ei:
            for e, ki in zip(err, k):
                e.add_(ki, alpha=h * ei)
    return err


def error_norm(err: Sequence[torch.Tensor], y0: Sequence[torch.Tensor], y1: Sequence[torch.Tensor],
               rtol: float, atol: float) -> float:
    """RMS over every entry of every tensor of ``err / (atol + rtol·max(|y0|, |y1|))``;
    a step is acceptable when this is ≤ 1 (non-finite values give ``inf``)."""
    total = torch.zeros((), dtype=torch.float64, device=err[0].device)
    count = 0
    for e, a, b in zip(err, y0, y1):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        total = total + ((e / scale).double() ** 2).sum()
        count += e.numel()
    value = math.sqrt(float(total) / max(count, 1))  # the one host sync of an adaptive step
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class StepController:
    """Elementary (I-)controller of an embedded pair: accept when the error
    norm ``e ≤ 1``; the next step is ``h·clamp(safety·e^(−1/(q+1)), min_factor,
    max_factor)`` with ``q`` the embedded (lower) order, capped at ``h_max``;
    after a rejection the factor is also capped at 1 and the step is retried
    from ``y0``. After ``max_rejections`` rejections in one step the next
    attempt is accepted whatever its error (counted as ``forced``)."""

    rtol: float = 1e-3
    atol: float = 1e-6
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 5.0
    h_max: float = math.inf
    max_rejections: int = 10

    def __post_init__(self) -> None:
        if not (self.rtol >= 0 and self.atol >= 0 and self.rtol + self.atol > 0):
            raise ValueError(f"rtol={self.rtol!r}, atol={self.atol!r}: both must be >= 0, not both 0")
        if not 0 < self.min_factor <= 1 <= self.max_factor or not 0 < self.safety <= 1:
            raise ValueError("need 0 < min_factor <= 1 <= max_factor and 0 < safety <= 1")
        if not self.h_max > 0 or self.max_rejections < 0:
            raise ValueError(f"h_max={self.h_max!r} must be > 0 and max_rejections >= 0")

    def factor(self, err: float, q: int, accepted: bool) -> float:
        raw = self.max_factor if err == 0 else self.safety * err ** (-1.0 / (q + 1))
        top = self.max_factor if accepted else min(1.0, self.max_factor)
        return min(max(raw, self.min_factor), top)


class AdaptiveStep(NamedTuple):
    y: list[torch.Tensor]  # the accepted state
    h: float  # the step that produced it
    h_next: float  # the controller's proposal for the next step
    error: float  # its error norm (≤ 1 unless forced)
    rejected: int  # attempts rejected before it
    forced: bool  # accepted only because max_rejections was reached
    evaluations: int  # calls of f made here (k0, when given, is not counted)


def adaptive_step(y0: Sequence[torch.Tensor], f: Field, h: float, tableau: ButcherTableau,
                  controller: StepController, k0: list[torch.Tensor] | None = None) -> AdaptiveStep:
    """Take one accepted step of an embedded pair from ``y0``, trying ``h`` first.

    Each attempt is one :func:`rk_step` (stages 2..s are new evaluations; the
    first stage ``f(y0)`` is computed once and reused by every retry), so a
    step costs ``1 + (s − 1)·attempts`` evaluations of ``f`` when ``k0`` is not
    given and ``(s − 1)·attempts`` when it is. The last stage of ``bs23`` and
    ``dopri5`` is ``f(y1)`` (FSAL); it is not reused for the next step because
    the caller may move ``y1`` (ODELoRA's rebalance) before stepping again."""
    if tableau.b_err is None or tableau.embedded_order is None:
        raise ValueError(f"{tableau.name} is not an embedded pair; use rk_step")
    if not h > 0:
        raise ValueError(f"step h={h!r} must be > 0")
    evaluations = 0
    if k0 is None:
        k0 = f(list(y0))
        evaluations += 1
    h = min(h, controller.h_max)
    rejected = 0
    while True:
        y1, ks = rk_step(y0, f, h, tableau, k0=k0)
        evaluations += tableau.stages - 1
        err = error_norm(error_estimate(ks, h, tableau), y0, y1, controller.rtol, controller.atol)
        ok = err <= 1.0
        forced = not ok and rejected >= controller.max_rejections
        factor = controller.factor(err, tableau.embedded_order, ok or forced)
        if ok or forced:
            return AdaptiveStep(y1, h, min(h * factor, controller.h_max), err, rejected, forced, evaluations)
        rejected += 1
        h *= factor
