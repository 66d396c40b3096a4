"""Checkpoints of a run in progress (:class:`Checkpointer`) and the stop on SIGINT/SIGTERM
(:class:`Interrupted`). A checkpoint is captured before its step runs and written once that step's
loss has verified it; :func:`pinn_lora.store.checkpoints.load` reads it back."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pinn_lora.training.continuation import Continuation
from pinn_lora.training.guard import Guard
from pinn_lora.training.records import Recorder
from pinn_lora.training.sampling import Sampler


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM. With a checkpoint path the Trainer first
    wrote a checkpoint of the last verified state (``step``: the step it continues at, None when
    none was written); the run can be resumed from it. ``run_status`` is what the run directory's
    claim records (:meth:`pinn_lora.store.rundir.Claim.fail`)."""

    run_status = "interrupted"

    def __init__(self, signum: int, step: int | None = None, path: Path | None = None, at: int | None = None) -> None:
        self.signum, self.step, self.path, self.at = signum, step, path, at
        name = signal.Signals(signum).name
        where = "" if at is None else f" at step {at}"
        saved = (f"the checkpoint {path} holds the last verified state (step {step})" if step is not None
                 else "no checkpoint was written")
        super().__init__(f"interrupted by {name}{where}; {saved}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class RunState:
    """What a checkpoint holds besides the network, as the run's parts: the trainable model, its
    dynamics (a :class:`~pinn_lora.methods.dynamics.base.Step`), the method (its running state), the
    recorder (history, monitors, clock), the guard, the sampler, the continuation, the run's settings
    and its device."""

    model: nn.Module
    dynamics: Any
    method: Any
    recorder: Recorder
    guard: Guard
    sampler: Sampler
    continuation: Continuation
    settings: dict[str, Any]
    device: torch.device


class Checkpointer:
    """Everything needed to continue at a step, captured before that step runs and written once
    the step's loss has verified it (a step's own result is verified only by the next loss).
    ``stop``: the signal (SIGINT/SIGTERM) that asked the run to stop (a checkpoint is then due at once)."""

    def __init__(self, run: RunState, path: Path | None, every: int, steps: int = 0) -> None:
        self.run, self.path, self.every = run, path, every
        self.steps = steps  # the method's steps of the run (an "end" checkpoint of fewer resumes as "train")
        self.written: int | None = None  # the step of the last checkpoint written
        self.stop: int | None = None

    @property
    def enabled(self) -> bool:
        return self.path is not None and self.every > 0

    def due(self, first: int, end: int) -> bool:
        """Whether a checkpoint falls in steps ``first`` … ``end − 1`` (one after every ``every``), or
        one is wanted now because the run was asked to stop (SIGINT/SIGTERM)."""
        if self.path is not None and self.stop is not None:
            return True
        return self.enabled and (end // self.every) > (first // self.every)

    def capture(self, step: int, phase: str = "train",
                rng: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], Any]:
        """Everything to continue at ``step``, captured before it runs (``rng``: the points generator's
        state before the step's own draw, when that draw has already happened)."""
        from pinn_lora.store import checkpoints as resume

        run = self.run
        hist = run.recorder.history
        points = run.sampler.state(rng)
        state = {
            "phase": phase, "step": step, "records": len(hist.records), "evaluations": hist.evaluations,
            "steps_done": hist.steps, "initial": run.guard.initial, "wall_time": run.recorder.elapsed(),
            "rng": points["rng"], "draw_rng": points["draw_rng"], "torch_rng": torch.get_rng_state(),
            "points": points["points"],
            "dynamics": run.dynamics.state_dict() if run.dynamics is not None else {},
            "method": run.method.state_dict() if run.method is not None else {},
            "monitors": [m.state_dict() for m in run.recorder.monitors], "settings": run.settings,
            "stage": run.continuation.state(),
            "guard": run.guard.state_dict(),
            "device": str(run.device),  # where the run's tensors were (resume maps them to the resuming run's)
        }
        return {k: v.detach().clone() for k, v in run.model.state_dict().items()}, resume.capture(state)

    def write(self, pending: tuple[dict[str, torch.Tensor], Any] | None) -> None:
        if pending is None:
            return
        from pinn_lora.store import checkpoints as resume

        self.run.recorder.flush()  # the records before the checkpoint must be on disk with it
        resume.save(self.path, *pending)
        self.written = int(pending[1][0]["step"])

    def restore(self, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> tuple[int, str]:
        """Continue from a checkpoint: the network, dynamics, method, monitors, generators and
        counters as they were before its step. Returns (step, phase)."""
        run = self.run
        run.model.load_state_dict(model_state, strict=True)
        if run.dynamics is not None:
            run.dynamics.load_state_dict(state["dynamics"])
        if run.method is not None:
            run.method.load_state_dict(state["method"])
        monitors = run.recorder.monitors
        if len(state["monitors"]) != len(monitors):
            raise ValueError(f"resume: the checkpoint was written with {len(state['monitors'])} monitors, "
                             f"this run has {len(monitors)}")
        for m, ms in zip(monitors, state["monitors"]):
            m.load_state_dict(ms)
        torch.set_rng_state(state["torch_rng"])
        step, phase = int(state["step"]), state["phase"]
        if phase == "end" and step < self.steps:  # the end of fewer steps (stages ended early): the state before
            phase = "train"                        # the next one
        run.continuation.load(state.get("stage"))
        run.sampler.restore(state, step, phase)
        hist = run.recorder.history
        hist.evaluations, hist.steps = int(state["evaluations"]), int(state["steps_done"])
        run.guard.initial = state["initial"]
        run.guard.load_state_dict(state.get("guard") or {})
        run.recorder.started = time.perf_counter() - float(state["wall_time"])
        return step, phase
