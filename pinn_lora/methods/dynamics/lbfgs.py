"""L-BFGS (strong Wolfe line search) as a :class:`~pinn_lora.methods.dynamics.base.Step`: the finish the
Trainer runs after the method's steps (``TrainConfig.lbfgs_steps``), on one fixed batch."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from pinn_lora.methods.dynamics.base import Closure, Objective, Step


class LBFGSStep(Step):
    """``iterations`` L-BFGS iterations per ``step`` (one ``torch.optim.LBFGS.step`` call, which
    re-evaluates its starting point; set ``iterations`` before a shorter last call). The
    optimiser's curvature pairs persist from call to call. ``lr`` is 1 (the line search sets the
    step)."""

    def __init__(self, params: Sequence[torch.Tensor], iterations: int = 10, history_size: int = 50) -> None:
        # max_eval must be set explicitly, or torch derives int(1.25 * max_iter), which for one
        # iteration leaves the line search no evaluations (the step is then 0)
        self.optimizer = torch.optim.LBFGS(list(params), lr=1.0, max_iter=iterations, max_eval=25 * iterations,
                                           history_size=history_size, line_search_fn="strong_wolfe",
                                           tolerance_grad=1e-15, tolerance_change=1e-16)
        self.iterations = iterations

    @property
    def lr(self) -> float:
        return 1.0

    def step(self, objective: Objective | Closure) -> torch.Tensor:
        n = self.iterations
        self.optimizer.param_groups[0].update(max_iter=n, max_eval=25 * n)
        return self.optimizer.step(objective)

    def graph_unsafe_reason(self) -> str:
        return "the L-BFGS line search decides on the host"

    def eager_only(self) -> str:
        return self.graph_unsafe_reason()

    def state_dict(self) -> dict[str, Any]:
        return {}
