"""A reference-free verdict: the residual on a fixed validation set.

Every adaptation evaluates the normalised residual (the training loss's definition, without
causal weights) on ``VALIDATION_POINTS`` quasi-random points that depend only on the problem
family — never on the run's seed, its training points or their resampling — for the base
network at the target and for the result. A result whose validation residual is not below the
base's is reported as ``no_improvement``: without a reference solution, that is the evidence a
scientist has that adaptation did not help. The set is used for this verdict only: never to pick a
state or to stop early. (After a divergence the Guard of :mod:`pinn_lora.training.trainer` ranks the verified
states it may keep on 1024 points of its own: the same construction with another rotation,
``purpose="guard"``, so no validation point ever decides which state a run returns.)"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

VALIDATION_POINTS = 20000


def validation_points(problem: Any, n: int = VALIDATION_POINTS, dtype: torch.dtype = torch.float64,
                      device: torch.device | str = "cpu", purpose: str = "validation") -> torch.Tensor:
    """``n`` Halton points of the problem's domain, shifted by a rotation seeded by the family's name
    and ``purpose`` (another purpose, another set: the verdict's points are never the Guard's).
    Drawn once per family, domain, ``n`` and purpose, whatever the coefficients (20 000 Halton points
    take about a second); each call gets its own copy."""
    # the points depend on the family and its domain, not on the coefficients: one draw serves them all
    key = (type(problem), problem.name, tuple(problem.lower), tuple(problem.upper), int(n), purpose)
    points = _CACHE.get(key)
    if points is None:
        points = _halton_points(problem, n, purpose)
        if len(_CACHE) >= 32:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = points
    return torch.tensor(points, dtype=dtype, device=device)


_CACHE: dict[tuple, np.ndarray] = {}


def _halton_points(problem: Any, n: int, purpose: str = "validation") -> np.ndarray:
    seed = zlib.crc32(f"pinn_lora {purpose} {problem.name}".encode())
    points = np.asarray(problem.sample(n, seed=seed, sampler="Halton"))
    points.setflags(write=False)
    return points


def validation_residual(problem: Any, model: nn.Module, points: torch.Tensor) -> float:
    """Σ_terms mean(r²)/scale of ``model`` on ``points`` (the training loss's normalisation)."""
    from pinn_lora.model.jacobian import residual_vector

    r = residual_vector(problem, model, points)
    return float(r @ r)


def judge(history: Any, base: float, result: float, n_points: int) -> None:
    """The verdict on a finished run's ``history``: a completed run whose validation residual
    ``result`` is not below the base's becomes ``no_improvement`` (a diverged run's message says so too, its
    status stays ``diverged``); both numbers go into the last
    record (metrics keep one record per step)."""
    worse = (f"the validation residual ({result:.3e} on {n_points} fixed points) is not below the base "
             f"model's ({base:.3e}): the adaptation did not improve on the base")
    if history.status == "completed" and not result < base:
        history.status = "no_improvement"
        history.message = worse
    elif history.status == "diverged" and not result < base:  # the state kept is no better than the base either
        history.message += f"; {worse}"
    if history.records:
        history.records[-1].update(validation_residual_base=base, validation_residual=result)
