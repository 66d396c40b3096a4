"""The one training loop, used by pretraining and adaptation alike:
sample → objective → step → guard → monitors → checkpoint.

The :class:`Trainer` puts a run together from small parts and runs its loops: a step
(:class:`~pinn_lora.methods.dynamics.base.Step`, the method's dynamics) over the run's objective
(:mod:`pinn_lora.training.objective`), the :class:`~pinn_lora.training.sampling.Sampler` of its points,
the :class:`~pinn_lora.training.continuation.Continuation` of its stages, the
:class:`~pinn_lora.training.guard.Guard`, the :class:`~pinn_lora.training.checkpointer.Checkpointer` and
the :class:`~pinn_lora.training.records.Recorder`. The loops (:mod:`pinn_lora.training.loops`) see only
a :class:`~pinn_lora.training.loops.LoopContext` of those parts.

This module also re-exports the names other code imports from it (``TrainConfig``, ``Monitor``,
``History``, ``residual_loss`` …), which live in the modules named above."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pinn_lora.methods.dynamics.base import Dynamics, Step
from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt
from pinn_lora.methods.dynamics.lbfgs import LBFGSStep
from pinn_lora.training.checkpointer import Checkpointer, Interrupted, RunState
from pinn_lora.training.config import SAMPLINGS, SOLVERS, TrainConfig
from pinn_lora.training.continuation import Continuation
from pinn_lora.training.guard import GUARD_POINTS, Candidate, Guard
from pinn_lora.training.loops import LBFGS_CHUNK, EagerLoop, GraphMode, LBFGSLoop, LoopContext, StaticLoop, say_once
from pinn_lora.training.losses import residual_loss, residual_losses, residual_terms
from pinn_lora.training.objective import PhysicsObjective, gradient_norm
from pinn_lora.training.records import History, Monitor, Outcome, Recorder
from pinn_lora.training.sampling import Sampler
from pinn_lora.training.verdict import validation_points, validation_residual

__all__ = ["Trainer", "TrainConfig", "SOLVERS", "SAMPLINGS", "Monitor", "History", "Outcome", "Recorder", "Guard",
           "Candidate", "GUARD_POINTS", "Checkpointer", "Interrupted", "residual_loss", "residual_losses",
           "residual_terms"]

_norm = gradient_norm  # the name other modules import


class Trainer:
    """Runs a method's dynamics on a PINN loss. One instance per run.

    Made of small parts: loops (:mod:`pinn_lora.training.loops`: eager, graph-mode, L-BFGS) that yield an
    :class:`Outcome` per step, a :class:`Guard` (divergence check and restore), a
    :class:`Checkpointer`, a :class:`Recorder` (records, monitors, evaluation cadence, progress), a
    :class:`~pinn_lora.training.sampling.Sampler` and a :class:`~pinn_lora.training.continuation.Continuation`.

    A subclass may change the objective's parts (:meth:`_loss_terms`, :meth:`_gradient_stats`,
    :meth:`_step_stats`, :meth:`_stat_fields`), :meth:`evaluate` and :meth:`_emit`
    (:class:`pinn_lora.runs.many.BatchTrainer`)."""

    def __init__(self, problem: Any, model: nn.Module, dynamics: Step | None, cfg: TrainConfig,
                 monitors: Sequence[Monitor] = (), after_step: Callable[[int, nn.Module, Dynamics], None] | None = None,
                 checkpoint_path: str | Path | None = None, method: Any = None,
                 resume_from: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
                 settings: dict[str, Any] | None = None, stages: Sequence[Any] = ()) -> None:
        """``dynamics``: the step the method decided on (with ``cfg.solver="lm"`` and a step that does not
        read residuals, the Levenberg–Marquardt step of ``method``, :meth:`Method.second_order`, or of the
        trainable parameters). ``method`` (its running state goes into checkpoints), ``resume_from`` (a
        checkpoint's (network state, resume state), :func:`pinn_lora.store.checkpoints.load`: the run
        continues at its step; ``history.records`` must already hold the records written before it) and
        ``settings`` (stored in checkpoints, compared on resume by the caller).

        ``stages``: continuation — problems (the same family at intermediate coefficients) whose
        residuals are trained first, in order, each for at most ``cfg.stage_steps`` steps (fewer once
        a step starts at a loss ≤ ``cfg.stage_tol``); the remaining steps train ``problem``. Each
        stage starts with new points; records carry ``stage`` (``len(stages)``: the target).
        Evaluations always measure the error against ``problem``."""
        self.problem, self.model, self.cfg = problem, model, cfg
        self.after_step = after_step
        self.method, self.resume_from, self.settings = method, resume_from, settings or {}
        ref = next(iter(model.parameters()), None)
        ref = ref if ref is not None else next(iter(model.buffers()))
        self.dtype, self.device = ref.dtype, ref.device
        self.params = [p for p in model.parameters() if p.requires_grad]
        if cfg.solver == "lm" and not getattr(dynamics, "residual_step", False):
            dynamics = (method.second_order(model, cfg.lm_mu, cfg.lm_adaptive) if method is not None
                        else LevenbergMarquardt(self.params, mu=cfg.lm_mu, adaptive=cfg.lm_adaptive))
        self.dynamics = dynamics
        self.continuation = Continuation(problem, stages, cfg.stage_steps, cfg.stage_tol)
        self.sampler = Sampler(cfg, self.continuation, model, self.dtype, self.device)
        self.history = History()
        self.graph = GraphMode()
        self.recorder = Recorder(self.history, monitors, cfg.eval_every, cfg.progress)
        self.guard = Guard(self._state_tensors, cfg.divergence_factor, self.history, self.recorder.monitors,
                           self._guard_score if self.scored else None)
        self.objective = PhysicsObjective(lambda: self.continuation.physics, model, self.params, self._loss_terms,
                                          self._gradient_stats, self._step_stats, self._stat_fields)
        run = RunState(model, self.dynamics, method, self.recorder, self.guard, self.sampler, self.continuation,
                       self.settings, self.device)
        self.checkpointer = Checkpointer(run, None if checkpoint_path is None else Path(checkpoint_path),
                                         cfg.checkpoint_every, cfg.steps)
        self._guard_points: torch.Tensor | None = None

    scored = True  # the Guard ranks verified states by their residual on fixed points (False: keeps the last)

    # -- the parts, by the names other code reads
    @property
    def monitors(self) -> list[Monitor]:
        return self.recorder.monitors

    @property
    def physics(self) -> Any:
        """The problem whose residuals the current step trains (a continuation stage, or the target)."""
        return self.continuation.physics

    @property
    def stages(self) -> list[Any]:
        return self.continuation.stages

    @property
    def stop(self) -> int | None:
        """The signal (SIGINT/SIGTERM) that asked the run to stop."""
        return self.checkpointer.stop

    @property
    def graph_captured(self) -> bool:
        """Whether the steps ran from a CUDA graph."""
        return self.graph.captured

    @property
    def graph_why(self) -> str:
        """On CUDA: why the steps were not captured (unsafe for a graph, or the capture failed)."""
        return self.graph.why

    def points(self, n: int) -> torch.Tensor:
        """A new draw of ``n`` points (:meth:`pinn_lora.training.sampling.Sampler.points`)."""
        return self.sampler.points(n)

    # -- the objective's parts (a batched trainer changes them)
    def _loss_terms(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms on ``points``; the loss is their sum."""
        return residual_losses(self.physics, self.model, points, self.cfg.causal_eps, self.cfg.causal_bins,
                               self.cfg.derivatives)

    def _gradient_stats(self, stash: dict[str, Any]) -> None:
        """After the step's first backward: the gradient norm for its record."""
        stash["grad_norm"] = gradient_norm(self.params)

    def _step_stats(self, stash: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The statistics a step's record holds, as tensors on the device (each a scalar or one value
        per copy): the loss terms and (a first-order step's) gradient norm."""
        return PhysicsObjective.default_step_stats(stash)

    def _stat_fields(self, stats: dict[str, list[float]]) -> dict[str, Any]:
        """The record's fields from :meth:`_step_stats` read on the host (each a list of floats)."""
        return PhysicsObjective.default_stat_fields(stats)

    def _guard_score(self) -> float:
        """The live model's residual on :data:`GUARD_POINTS` fixed points of the Guard's own (not the verdict's)."""
        if self._guard_points is None:
            self._guard_points = validation_points(self.problem, GUARD_POINTS, self.dtype, self.device,
                                                   purpose="guard")
        return validation_residual(self.problem, self.model, self._guard_points)

    def evaluate(self) -> float:
        return self.problem.relative_l2(self.model)

    def _state_tensors(self) -> list[torch.Tensor]:
        return self.params + [b for b in self.model.buffers()]

    # -- the run
    def _context(self) -> LoopContext:
        hook = None
        if self.after_step is not None:
            def hook(step: int) -> None:
                self.after_step(step, self.model, self.dynamics)
        return LoopContext(self.objective, self.sampler, self.guard, self.checkpointer, self.recorder, self.dynamics,
                           self.cfg.steps, self.device, self.dtype, hook, self.graph)

    def run(self) -> History:
        cfg = self.cfg
        self.recorder.open(self.model, self.problem)
        start, phase = (0, "train") if self.resume_from is None else self.checkpointer.restore(*self.resume_from)
        self.recorder.show(cfg.steps + cfg.lbfgs_steps)
        restore_signals = self._stop_on_signals()
        if self.resume_from is None:  # a resumed run has its candidates from the checkpoint
            self.guard.propose(0)
        try:
            ctx = self._context()
            method_loop = self._method_loop(ctx) if phase == "train" else None
            loops = [(method_loop, start)] if method_loop is not None and cfg.steps else []
            if cfg.lbfgs_steps and phase != "end":
                finish = LBFGSStep(self.params, LBFGS_CHUNK)
                loops.append((LBFGSLoop(ctx, finish, cfg.steps, cfg.lbfgs_steps, cfg.lbfgs_points or cfg.n_points), 0))
            for loop, first in loops:
                if isinstance(loop, LBFGSLoop) and phase == "train" and self.checkpointer.enabled:
                    # the verified end of the method's steps: a run killed during the finish restarts it here
                    self.checkpointer.write(self.checkpointer.capture(cfg.steps, "lbfgs"))
                for out in loop.steps(first):
                    if not self._take(out):
                        return self.history
                if not self._verify_end(loop.points, loop.end - 1):
                    return self.history
            if phase == "train" and loops and not cfg.lbfgs_steps and self.checkpointer.enabled:
                # the verified end of the steps: a run stopped during its end (validation, save) resumes from here
                self.checkpointer.write(self.checkpointer.capture(cfg.steps, "end"))
        finally:
            restore_signals()
            self.recorder.close()
        return self.history

    def _take(self, out: Outcome) -> bool:
        """Verify one outcome by its loss, run the method's hook, evaluate, record and write a
        due checkpoint; False (the last good state restored, a closing record) when it diverged."""
        if self.guard.check(out.loss, out.before, out.step):
            self.history.message += out.note
            self._finish_diverged(out.record)
            return False
        self.history.steps += out.advance
        self.continuation.observe(out.record, out.loss)
        if out.hook and self.after_step is not None:
            self.after_step(out.step, self.model, self.dynamics)
        if out.evaluate:
            out.record["rel_l2"] = self.evaluate()
            self.guard.propose(out.step + out.advance)
        self._emit(out.record, out.advance)
        self.checkpointer.write(out.pending)
        if self.stop is not None and (out.pending is not None or self.checkpointer.path is None
                                      or out.record.get("phase") == "lbfgs"):
            raise self._interrupted(out.step)  # L-BFGS: no checkpoints inside it; the one at its start stays
        return True

    def _interrupted(self, at: int | None) -> Interrupted:
        ck = self.checkpointer
        return Interrupted(self.stop or signal.SIGINT, ck.written, ck.path if ck.written is not None else None, at)

    def _stop_on_signals(self) -> Callable[[], None]:
        """While the loop runs (main thread only): the first SIGINT/SIGTERM asks the run to stop once the
        next checkpoint of a verified state is written (the loops capture one before their next step, and
        that step's loss verifies it); a second one, or one without a checkpoint path, stops at once
        (:class:`Interrupted`). Returns what puts the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        ck = self.checkpointer

        def handler(signum: int, _frame: Any) -> None:
            if ck.stop is not None or ck.path is None:
                ck.stop = ck.stop or signum
                raise self._interrupted(None)
            ck.stop = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(sig, old) for sig, old in previous.items()] and None

    def _method_loop(self, ctx: LoopContext) -> EagerLoop | StaticLoop:
        """The loop for the method's steps: eager, or the static step (graph mode) where the step allows."""
        eager_only = self.dynamics.eager_only() if self.dynamics is not None else ""
        if eager_only:
            if self.device.type == "cuda" and self.cfg.cuda_graph is not False:
                self.graph.why = eager_only
            return EagerLoop(ctx)
        static = self._static_mode()
        return EagerLoop(ctx) if static is None else StaticLoop(ctx, static, self.cfg.sync_every or self.cfg.eval_every)

    # -- graph mode: a static step, replayed from a CUDA graph, the host reading results every N steps
    def _static_mode(self) -> bool | None:
        """None: the eager loop (a host read every step); True: the static step captured in a CUDA
        graph; False: the static step without capture (``sync_every`` > 0 where no graph is used)."""
        want, why = self.cfg.cuda_graph, self.graph_unsafe_reason()
        if want is True and why:
            raise ValueError(f"cuda_graph=true: {why}")
        if not self.cfg.steps:
            return None
        if want is not False and not why:
            return True
        if want == "auto" and self.device.type == "cuda":
            self.graph.why = why
            say_once(f"cuda_graph: eager steps ({why})")
        if self.cfg.sync_every and not self._static_unsafe_reason():
            return False
        return None

    def _static_unsafe_reason(self) -> str:
        if self.cfg.sampling == "rar_d":
            return "sampling=rar_d grows the point set (a static step needs a fixed one)"
        if self.stages:
            return "continuation changes the residual between stages"
        if self.after_step is not None and not getattr(self.after_step, "in_place", False):
            return "the method changes the model between steps (merges, restarts or basis refreshes)"
        return self.dynamics.graph_unsafe_reason()

    def graph_unsafe_reason(self) -> str:
        """'' when the step can be captured in a CUDA graph, else why not."""
        if self.device.type != "cuda":
            return f"the model is on {self.device.type}, not CUDA"
        return self._static_unsafe_reason()

    def _finish_diverged(self, rec: dict[str, Any]) -> None:
        rec["rel_l2"] = self.evaluate()  # of the restored state
        self._emit(rec)

    def _verify_end(self, points: torch.Tensor, step: int) -> bool:
        """Check the state the last step produced; False (and the last good state restored,
        with a closing ``check`` record) if it diverged."""
        current = self.guard.snapshot()
        loss = float(self.objective.at(points)())
        self.history.evaluations += 1
        if not self.guard.check(loss, current, step + 1):
            return True
        self._emit({"step": step + 1, "phase": "check", "loss": loss, "evaluations": self.history.evaluations,
                    "time": self.recorder.elapsed(), "rel_l2": self.evaluate()}, advance=0)
        return False

    def _emit(self, rec: dict[str, Any], advance: int = 1) -> None:
        self.recorder.emit(rec, advance)
