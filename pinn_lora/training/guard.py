"""The divergence check: each step's loss verifies the state before it; a failed check restores the
best verified state (:class:`Guard`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from pinn_lora.training.records import History, Monitor

GUARD_POINTS = 1024  # the fixed points (pinn_lora.training.verdict's construction, its own rotation) ranking verified states


@dataclass
class Candidate:
    """A verified state the Guard may keep: its step (the state before that step), its residual on the
    fixed point set, its tensors."""

    step: int
    score: float
    tensors: list[torch.Tensor]


class Guard:
    """Divergence: a step's loss is measured at the state *before* it, so each state is verified
    by the next loss (the last one by one extra evaluation). A failed check restores the best
    verified state and says which.

    The best verified state: at the start and at every evaluation the state is scored by ``score``
    (the residual on :data:`GUARD_POINTS` fixed points built like :mod:`pinn_lora.training.verdict`'s set,
    but not its points: the verdict's set never picks a state); once the next loss verifies it, it is a candidate; once its record is written, a
    candidate whose record the Stability monitor flagged (a ``spike``) is dropped, and the lowest
    score is kept. Without ``score`` (or before any candidate) the last verified state is kept."""

    def __init__(self, tensors: Callable[[], list[torch.Tensor]], factor: float, history: History,
                 monitors: Sequence[Monitor], score: Callable[[], float] | None = None) -> None:
        self.tensors, self.factor, self.history, self.monitors = tensors, factor, history, monitors
        self.score = score
        self.initial: float | None = None  # the first loss (the scale of the check)
        self.good: list[torch.Tensor] | None = None  # the last state whose loss passed
        self.proposed: Candidate | None = None  # the live state, scored, not verified yet
        self.verified: list[Candidate] = []  # verified, their records not judged yet
        self.best: Candidate | None = None  # the lowest score of the verified, unflagged states
        self.flagged = 0  # candidates dropped because the Stability monitor flagged their record

    def snapshot(self) -> list[torch.Tensor]:
        # parameters and buffers: chained methods merge into frozen weights and move selectors
        # (tiny networks: a copy costs microseconds)
        return [t.detach().clone() for t in self.tensors()]

    def propose(self, step: int) -> None:
        """Score the live state (the state before ``step``); the next passing check verifies it."""
        if self.score is None:
            return
        value = self.score()
        self.proposed = Candidate(step, value, self.snapshot()) if math.isfinite(value) else None

    def _settle(self, step: int) -> None:
        """Judge the verified candidates whose records are written (those before ``step``)."""
        keep = []
        for c in self.verified:
            if c.step >= step:
                keep.append(c)
                continue
            rec = next((r for r in reversed(self.history.records) if r.get("step") == c.step), {})
            if rec.get("spike") is not None:
                self.flagged += 1
            elif self.best is None or c.score < self.best.score:
                self.best = c
        self.verified = keep

    def check(self, loss: float, current: list[torch.Tensor], step: int) -> bool:
        """Accept ``current`` (whose loss is ``loss``) as good, or restore the best verified state (True)."""
        self.initial = loss if self.initial is None else self.initial
        bad = _diverged(loss, self.initial, self.factor)
        self._settle(step)
        if not bad:
            self.good = current
            if self.proposed is not None and self.proposed.step <= step:
                self.verified.append(self.proposed)
                self.proposed = None
            return False
        kept = self.best
        with torch.no_grad():
            restore = kept.tensors if kept is not None else self.good if self.good is not None else current
            for t, g in zip(self.tensors(), restore):
                t.copy_(g)
        self.history.status = "diverged"
        flagged = next((s for s in (m.warning_step() for m in self.monitors) if s is not None), None)
        warned = "" if flagged is None else f"; the Stability monitor saw the first loss spike at step {flagged}"
        if kept is not None:
            dropped = f", {self.flagged} flagged by the Stability monitor left out" if self.flagged else ""
            which = (f"kept the best verified state (step {kept.step}: residual {kept.score:.3e} on "
                     f"{GUARD_POINTS} fixed points, the lowest of the states scored{dropped})")
        else:
            which = f"kept the last state with a good loss (step {max(step - 1, 0)})"
        self.history.message = (f"divergence check (loss > {self.factor:g} x the first loss, or non-finite) fired "
                                f"at step {step}: {bad}{warned}; {which}")
        return True

    def state_dict(self) -> dict[str, Any]:
        """The candidates, for checkpoints (a resumed run keeps the same best state)."""
        pack = lambda c: None if c is None else {"step": c.step, "score": c.score, "tensors": c.tensors}  # noqa: E731
        return {"best": pack(self.best), "verified": [pack(c) for c in self.verified],
                "proposed": pack(self.proposed), "flagged": self.flagged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unpack = lambda c: None if c is None else Candidate(int(c["step"]), float(c["score"]), list(c["tensors"]))  # noqa: E731
        self.best, self.proposed = unpack(state.get("best")), unpack(state.get("proposed"))
        self.verified = [unpack(c) for c in state.get("verified", [])]
        self.flagged = int(state.get("flagged", 0))


def _diverged(loss: float, initial: float, factor: float) -> str:
    if not math.isfinite(loss):
        return "non-finite loss"
    if loss > factor * max(initial, 1e-300):
        return f"loss {loss:.3e} > {factor:g} × initial {initial:.3e}"
    return ""
