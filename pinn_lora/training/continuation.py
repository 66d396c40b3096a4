"""Continuation: the stage list and its rule. Problems of the same family at intermediate coefficients
are trained first, in order, each for at most ``stage_steps`` steps (fewer once a step starts at a loss
<= ``stage_tol``); the remaining steps train the target."""
from __future__ import annotations

import math
from typing import Any, Sequence


class Continuation:
    """Which problem a step trains (:attr:`physics`), and when a stage ends. ``stage``: the current
    stage (``len(stages)``: the target); ``start``: the step it started at; ``loss``: the loss at
    the start of its last step. Without stages every step trains the target."""

    def __init__(self, target: Any, stages: Sequence[Any] = (), stage_steps: int = 3, stage_tol: float = 1e-3) -> None:
        self.target, self.stages = target, list(stages)
        self.stage_steps, self.stage_tol = stage_steps, stage_tol
        self.stage, self.start = 0, 0
        self.loss = math.inf

    @property
    def physics(self) -> Any:
        """The problem whose residuals the current step trains (a stage, or the target)."""
        return self.stages[self.stage] if self.stage < len(self.stages) else self.target

    def done(self, step: int) -> bool:
        """Whether the current stage is over before ``step``."""
        if self.stage >= len(self.stages) or step <= self.start:
            return False
        return step - self.start >= self.stage_steps or self.loss <= self.stage_tol

    def advance(self, step: int) -> bool:
        """Move to the next stage when the current one is over before ``step`` (True: it moved)."""
        if not self.done(step):
            return False
        self.stage, self.start, self.loss = self.stage + 1, step, math.inf
        return True

    def observe(self, record: dict[str, Any], loss: float) -> None:
        """A verified step of the method: its record carries the stage, its loss may end the stage."""
        if self.stages and record.get("phase") == "train":
            record["stage"] = self.stage
            self.loss = loss

    def state(self) -> list[Any]:
        """[stage, start, loss] for checkpoints (an infinite loss as None)."""
        return [self.stage, self.start, self.loss if math.isfinite(self.loss) else None]

    def load(self, state: Sequence[Any] | None) -> None:
        self.stage, self.start, loss = state if state is not None else (0, 0, None)
        self.loss = math.inf if loss is None else float(loss)
