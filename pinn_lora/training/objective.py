"""The objective the loops train: the physics loss of the model at a step's points, with its gradient,
and the residual vector with its Jacobian (:class:`~pinn_lora.methods.dynamics.base.Objective`).

:class:`PhysicsObjective` is the loss of a run (which problem, which model, how the loss terms and
their statistics are computed); :meth:`PhysicsObjective.at` gives the :class:`PointsObjective` of one
step's points, which a step (:class:`~pinn_lora.methods.dynamics.base.Step`) evaluates and which keeps
what the step's record needs (the loss terms and gradient norm of its first evaluation, the
evaluations spent)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from pinn_lora.methods.dynamics.base import Objective
from pinn_lora.model import jacobian


def gradient_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖gradient‖ over ``params`` (those with a gradient), on the device."""
    return torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None))


Terms = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class PhysicsObjective:
    """The loss of a run. ``physics()``: the problem the current step trains (a continuation stage, or
    the target); ``terms(points)``: the loss terms on ``points`` (the loss is their sum; a batched run's
    terms hold one value per copy); ``gradient_stats(stash)``: the gradient statistics of a step's first
    evaluation, put into ``stash``; ``step_stats(stash)``: the statistics a record holds, as tensors on
    the device; ``stat_fields(stats)``: the record's fields from those read on the host (lists of
    floats). The defaults: one network's residual losses and gradient norm."""

    def __init__(self, physics: Callable[[], Any], model: nn.Module, params: Sequence[torch.Tensor], terms: Terms,
                 gradient_stats: Callable[[dict[str, Any]], None] | None = None,
                 step_stats: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None,
                 stat_fields: Callable[[dict[str, list[float]]], dict[str, Any]] | None = None) -> None:
        self.physics, self.model, self.params, self.terms = physics, model, list(params), terms
        self.gradient_stats = gradient_stats or self.default_gradient_stats
        self.step_stats = step_stats or self.default_step_stats
        self.stat_fields = stat_fields or self.default_stat_fields

    def at(self, points: torch.Tensor) -> PointsObjective:
        return PointsObjective(self, self.physics(), points)

    def fields(self, stash: dict[str, Any]) -> dict[str, Any]:
        """A step's record fields from its objective's ``stash`` (one host read of the statistics)."""
        return self.stat_fields({k: v.detach().reshape(-1).tolist() for k, v in self.step_stats(stash).items()})

    def default_gradient_stats(self, stash: dict[str, Any]) -> None:
        stash["grad_norm"] = gradient_norm(self.params)

    @staticmethod
    def default_step_stats(stash: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The loss terms and (a first-order step's) gradient norm."""
        grad = {"grad_norm": stash["grad_norm"]} if "grad_norm" in stash else {}
        return {**{f"loss_{k}": v for k, v in stash["terms"].items()}, **grad}

    @staticmethod
    def default_stat_fields(stats: dict[str, list[float]]) -> dict[str, Any]:
        return {k: v[0] for k, v in stats.items()}


class PointsObjective(Objective):
    """The run's loss on fixed ``points``, for ``problem`` (the step's). Calling it is the closure (zero
    the gradients, the loss, backward, the loss); ``residual()`` and ``residual_jacobian()`` give ρ
    (‖ρ‖² the loss, without causal weights) and J. ``stash`` keeps the first evaluation's loss terms
    (and, after a backward, the gradient statistics) and ``evals``, the closure calls."""

    def __init__(self, owner: PhysicsObjective, problem: Any, points: torch.Tensor) -> None:
        self.owner, self.problem, self.points = owner, problem, points
        self.stash: dict[str, Any] = {}

    @property
    def evaluations(self) -> int:
        return self.stash.get("evals", 0)

    def __call__(self) -> torch.Tensor:
        params, stash = self.owner.params, self.stash
        for p in params:
            p.grad = None
        terms = self.owner.terms(self.points)
        loss = sum(v.sum() for v in terms.values())  # a batched run's terms hold one value per copy
        loss.backward()
        for p in params:  # autograd may leave a transposed (non-contiguous) gradient; L-BFGS views it flat
            if p.grad is not None and not p.grad.is_contiguous():
                p.grad = p.grad.contiguous()
        stash["evals"] = stash.get("evals", 0) + 1
        if "terms" not in stash:  # first evaluation of the step: record it
            stash["terms"] = {k: v.detach() for k, v in terms.items()}
            self.owner.gradient_stats(stash)
        return loss.detach()

    def residual(self) -> torch.Tensor:
        return jacobian.residual_vector(self.problem, self.owner.model, self.points)

    def residual_jacobian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ρ and J at the parameters as they are; the first call records the loss terms (‖ρ_term‖²)."""
        r, jac = jacobian.residual_jacobian(self.problem, self.owner.model, self.points)
        if "terms" not in self.stash:
            names = jacobian.term_names(self.problem)
            terms = (r.reshape(len(names), -1) ** 2).sum(1)
            self.stash["terms"] = {k: terms[i] for i, k in enumerate(names)}
        return r, jac
