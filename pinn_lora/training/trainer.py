"""The one training loop, used by pretraining and adaptation alike:
sample → residual terms → loss → method step → monitors → checkpoint."""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from pinn_lora.model.derivatives import ENGINES, provider
from pinn_lora.methods.dynamics import Dynamics
from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt
from pinn_lora.pde.problem import SAMPLERS

SOLVERS = ("method", "lm")
SAMPLINGS = ("uniform", "rad", "rar_d")



@dataclass
class TrainConfig:
    """Loop settings (the method's own settings live in the method)."""

    steps: int = 2000
    n_points: int = 2000
    sampler: str = "pseudo"
    resample_every: int = 100
    causal_eps: float = 0.0  # causal weighting in time (Wang, Sankaran & Perdikaris 2022); 0 = off
    causal_bins: int = 32
    lbfgs_steps: int = 0
    lbfgs_points: int = 0  # 0: same as n_points
    eval_every: int = 100
    seed: int = 0
    progress: bool = True
    checkpoint_every: int = 0  # steps between checkpoints (0 = off); needs a checkpoint path
    divergence_factor: float = 1e6  # stop when loss > factor × initial loss
    derivatives: str = "auto"  # autograd | jets | auto (jets on CUDA, autograd on CPU)
    cuda_graph: Any = "auto"  # capture the whole step in a CUDA graph: auto (on CUDA when possible) | True | False
    sync_every: int = 0  # graph mode: steps between host reads of the losses (0: eval_every)
    solver: str = "method"  # method: the method's own dynamics | lm: Levenberg–Marquardt on its parameters
    lm_mu: float = 1.0  # lm: the starting damping μ (the implicit Euler step h = 1/μ)
    lm_adaptive: bool = True  # lm: adapt μ by the trust-region rule (False: a fixed h)
    sampling: str = "uniform"  # uniform | rad | rar_d (residual-based adaptive distribution / refinement, Wu et al. 2023)
    rad_k: float = 1.0  # rad, rar_d: density ∝ |r|^k / mean(|r|^k) + c
    rad_c: float = 1.0
    rad_pool: int = 8  # rad, rar_d: candidates per point drawn
    rar_add: int = 0  # rar_d: points added to the set at each draw (0: n_points // 10; see rar_points)
    stage_steps: int = 3  # continuation: the most steps of each intermediate stage (Trainer ``stages``)
    stage_tol: float = 1e-3  # continuation: a stage ends early once a step starts at a loss <= this

    @property
    def rar_points(self) -> int:
        """RAR-D: the points each draw adds (``rar_add``, or n_points // 10, at least 1)."""
        return self.rar_add or max(self.n_points // 10, 1)

    def __post_init__(self) -> None:
        for key in ("lm_adaptive", "progress"):  # bool("no") is True: a string would silently mean true
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"train: {key}={getattr(self, key)!r} must be true or false")
        if self.cuda_graph not in ("auto", True, False):
            raise ValueError(f"train: cuda_graph={self.cuda_graph!r}; use auto, true or false")
        for keys, low in ((("steps", "lbfgs_steps", "lbfgs_points", "checkpoint_every", "sync_every"), 0),
                          (("n_points", "resample_every", "eval_every", "causal_bins"), 1)):
            for key in keys:
                value = getattr(self, key)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"train: {key}={value!r} must be an integer >= {low}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"train: sampler={self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.derivatives not in ENGINES:
            raise ValueError(f"train: derivatives={self.derivatives!r}; choose one of {', '.join(ENGINES)}")
        if not self.causal_eps >= 0:
            raise ValueError(f"train: causal_eps={self.causal_eps!r} must be >= 0")
        if self.solver not in SOLVERS:
            raise ValueError(f"train: solver={self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"train: sampling={self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if self.solver == "lm" and self.causal_eps > 0:
            raise ValueError("train: solver=lm works on the plain residual vector; causal weights (causal_eps > 0) "
                             "are for first-order steps")
        for key in ("rad_k", "rad_c"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"train: {key}={value!r} must be a finite number >= 0")
        if isinstance(self.rad_pool, bool) or not isinstance(self.rad_pool, int) or self.rad_pool < 1:
            raise ValueError(f"train: rad_pool={self.rad_pool!r} must be an integer >= 1")
        if isinstance(self.rar_add, bool) or not isinstance(self.rar_add, int) or self.rar_add < 0:
            raise ValueError(f"train: rar_add={self.rar_add!r} must be an integer >= 0 (0: n_points // 10)")
        if isinstance(self.stage_steps, bool) or not isinstance(self.stage_steps, int) or self.stage_steps < 1:
            raise ValueError(f"train: stage_steps={self.stage_steps!r} must be an integer >= 1")
        if isinstance(self.stage_tol, bool) or not isinstance(self.stage_tol, (int, float)) or not self.stage_tol >= 0:
            raise ValueError(f"train: stage_tol={self.stage_tol!r} must be a number >= 0")


def residual_losses(problem: Any, net: nn.Module, points: torch.Tensor, causal_eps: float = 0.0,
                    causal_bins: int = 32, derivatives: str = "auto") -> dict[str, torch.Tensor]:
    """Normalised mean-square residual per term. With ``causal_eps`` > 0 and a
    time variable, points are binned in time and bin i is weighted by
    exp(−ε Σ_{k<i} L_k) (weights not differentiated). ``derivatives``: the engine
    (see :func:`pinn_lora.model.derivatives.provider`)."""
    return residual_terms(problem, provider(problem, net, points, derivatives), points, causal_eps, causal_bins)


def residual_terms(problem: Any, d: Any, points: torch.Tensor, causal_eps: float = 0.0,
                   causal_bins: int = 32, copies: int = 0, scale: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """:func:`residual_losses` from a derivative provider ``d`` already built on ``points``.

    ``copies`` = K > 0: ``d`` holds K networks' values at the same ``points`` (network k owns rows
    k·N … (k+1)·N − 1; :class:`pinn_lora.model.derivatives.JetDerivatives` ``stacked``), ``problem``'s
    coefficients may be per-row tensors (:func:`pinn_lora.runs.many.row_problem`) and ``scale`` holds the
    K residual scales, shape (K, 1); every term is then K values, one per network."""
    k = max(copies, 1)
    scale = problem.residual_scale() if scale is None else scale
    out = {}
    for name, r in problem.residuals(d).items():
        sq = r.reshape(k, -1) ** 2 / scale  # (K, N)
        if causal_eps > 0 and "t" in problem.variables:
            t = points[:, problem.variables.index("t")]
            lo, hi = problem.lower[problem.variables.index("t")], problem.upper[problem.variables.index("t")]
            idx = ((t - lo) / (hi - lo) * causal_bins).long().clamp(0, causal_bins - 1)
            sums = torch.zeros(k, causal_bins, dtype=sq.dtype, device=sq.device).index_add_(1, idx, sq)
            counts = torch.zeros(causal_bins, dtype=sq.dtype, device=sq.device).index_add_(
                0, idx, torch.ones_like(t, dtype=sq.dtype)).clamp_min(1)
            per_bin = sums / counts
            before = torch.cumsum(per_bin.detach(), 1) - per_bin.detach()
            w = torch.exp(-causal_eps * before)
            term = (w * per_bin).mean(1)
        else:
            term = sq.mean(1)
        out[name] = term if copies else term[0]
    return out


def residual_loss(problem: Any, net: nn.Module, points: torch.Tensor, causal_eps: float = 0.0,
                  causal_bins: int = 32, derivatives: str = "auto") -> torch.Tensor:
    """The training loss: the sum of :func:`residual_losses`."""
    return sum(residual_losses(problem, net, points, causal_eps, causal_bins, derivatives).values())


@dataclass
class History:
    records: list[dict[str, Any]] = field(default_factory=list)
    status: str = "completed"  # or "diverged"
    message: str = ""
    wall_time: float = 0.0
    evaluations: int = 0
    steps: int = 0  # method steps + L-BFGS iterations taken

    def last(self, key: str) -> Any:
        for rec in reversed(self.records):
            if key in rec:
                return rec[key]
        return None


class Monitor:
    """Observes the loop: ``on_start`` sees the model (and problem) before the first step,
    ``on_record`` every record (a flat dict, the same object kept in ``History.records``),
    ``on_end`` the history (also after a divergence or an exception).

    Monitors run in the order given. One that measures adds its keys to the record in
    ``on_record``, so writers placed after it (``MetricsWriter``) write them. Monitors see
    no Trainer internals, only the model and the records (see :mod:`pinn_lora.training.monitors`)."""

    def on_start(self, model: nn.Module, problem: Any) -> None: ...

    def on_record(self, record: dict[str, Any]) -> None: ...

    def on_end(self, history: History) -> None: ...

    def flush(self) -> None:
        """Write buffered output (called before each checkpoint, so files and checkpoint agree)."""

    def warning_step(self) -> int | None:
        """The step of the first warning this monitor raised (e.g. a loss spike), or None."""
        return None

    # resumable runs: the running state a monitor keeps between records (attributes named in
    # ``state_keys``: tensors, numbers, lists, dicts), saved in checkpoints and restored after
    # ``on_start`` (so baselines taken at the start of the run stay those of the original start)
    state_keys: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.state_keys:
            if k in state:
                setattr(self, k, state[k])


@dataclass
class Outcome:
    """What a loop did in one step (or one call of L-BFGS iterations), for the Trainer to
    verify, record and checkpoint. ``before`` is the state whose loss is ``loss``."""

    step: int
    loss: float
    record: dict[str, Any]
    before: list[torch.Tensor]
    advance: int = 1  # steps this outcome counts for
    evaluate: bool = False  # an evaluation against the reference is due after it
    hook: bool = False  # run the method's ``after_step`` once the step is accepted
    pending: tuple[dict[str, torch.Tensor], Any] | None = None  # a checkpoint to write once recorded
    note: str = ""  # added to the divergence message


class Recorder:
    """The history, the monitors (in order), the progress bar and the evaluation cadence."""

    def __init__(self, history: History, monitors: Sequence[Monitor], eval_every: int, progress: bool) -> None:
        self.history, self.monitors, self.every, self.progress = history, list(monitors), eval_every, progress
        self.bar: Any = None
        self.started = time.perf_counter()

    def open(self, model: nn.Module, problem: Any) -> None:
        for m in self.monitors:
            m.on_start(model, problem)
        self.started = time.perf_counter()

    def show(self, total: int) -> None:
        self.bar = _progress(total, self.progress)
        if self.bar is not None and self.history.steps:
            self.bar.update(self.history.steps)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eval_due(self, before: int, after: int, end: int) -> bool:
        """Whether an evaluation falls after step count ``before`` up to ``after`` (every ``eval_every``
        steps, and at ``end``)."""
        return after // self.every > before // self.every or after == end

    def emit(self, rec: dict[str, Any], advance: int = 1) -> None:
        self.history.records.append(rec)
        for m in self.monitors:
            m.on_record(rec)
        if self.bar is not None:
            post = {"loss": f"{rec['loss']:.3e}"}
            last = rec.get("rel_l2", self.history.last("rel_l2"))
            if last is not None:
                post["L2"] = f"{last:.2e}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(advance)

    def flush(self) -> None:
        for m in self.monitors:
            m.flush()

    def close(self) -> None:
        self.history.wall_time = self.elapsed()
        if self.bar is not None:
            self.bar.close()
        for m in self.monitors:
            m.on_end(self.history)


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


class Checkpointer:
    """Everything needed to continue at a step, captured before that step runs and written once
    the step's loss has verified it (a step's own result is verified only by the next loss)."""

    def __init__(self, trainer: "Trainer", path: Path | None, every: int) -> None:
        self.trainer, self.path, self.every = trainer, path, every
        self.written: int | None = None  # the step of the last checkpoint written

    @property
    def enabled(self) -> bool:
        return self.path is not None and self.every > 0

    def due(self, first: int, end: int) -> bool:
        """Whether a checkpoint falls in steps ``first`` … ``end − 1`` (one after every ``every``), or
        one is wanted now because the run was asked to stop (SIGINT/SIGTERM)."""
        if self.path is not None and self.trainer.stop is not None:
            return True
        return self.enabled and (end // self.every) > (first // self.every)

    def capture(self, step: int, phase: str = "train",
                rng: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], Any]:
        """Everything to continue at ``step``, captured before it runs (``rng``: the points generator's
        state before the step's own draw, when that draw has already happened)."""
        from pinn_lora.store import checkpoints as resume

        t = self.trainer
        hist = t.history
        state = {
            "phase": phase, "step": step, "records": len(hist.records), "evaluations": hist.evaluations,
            "steps_done": hist.steps, "initial": t.guard.initial, "wall_time": t.recorder.elapsed(),
            "rng": rng if rng is not None else t.rng.bit_generator.state, "draw_rng": t._draw_state,
            "torch_rng": torch.get_rng_state(),
            # residual-adaptive points depend on the model that drew them: a resume mid-block takes them as they were
            # (RAR-D's set grows with every draw: it is always stored)
            "points": t.current_points if t.cfg.sampling in ("rad", "rar_d") else None,
            "dynamics": t.dynamics.state_dict() if t.dynamics is not None else {},
            "method": t.method.state_dict() if t.method is not None else {},
            "monitors": [m.state_dict() for m in t.recorder.monitors], "settings": t.settings,
            "stage": [t.stage, t.stage_start, t._stage_loss if math.isfinite(t._stage_loss) else None],
            "guard": t.guard.state_dict(),
            "device": str(t.device),  # where the run's tensors were (resume maps them to the resuming run's)
        }
        return {k: v.detach().clone() for k, v in t.model.state_dict().items()}, resume.capture(state)

    def write(self, pending: tuple[dict[str, torch.Tensor], Any] | None) -> None:
        if pending is None:
            return
        from pinn_lora.store import checkpoints as resume

        self.trainer.recorder.flush()  # the records before the checkpoint must be on disk with it
        resume.save(self.path, *pending)
        self.written = int(pending[1][0]["step"])

    def restore(self, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> tuple[int, str]:
        """Continue from a checkpoint: the network, dynamics, method, monitors, generators and
        counters as they were before its step. Returns (step, phase)."""
        t = self.trainer
        t.model.load_state_dict(model_state, strict=True)
        if t.dynamics is not None:
            t.dynamics.load_state_dict(state["dynamics"])
        if t.method is not None:
            t.method.load_state_dict(state["method"])
        monitors = t.recorder.monitors
        if len(state["monitors"]) != len(monitors):
            raise ValueError(f"resume: the checkpoint was written with {len(state['monitors'])} monitors, "
                             f"this run has {len(monitors)}")
        for m, ms in zip(monitors, state["monitors"]):
            m.load_state_dict(ms)
        torch.set_rng_state(state["torch_rng"])
        step, phase = int(state["step"]), state["phase"]
        if phase == "end" and step < t.cfg.steps:  # the end of fewer steps: the state before the next one
            phase = "train"
        t.stage, t.stage_start, loss = state.get("stage", [0, 0, None])
        t._stage_loss = math.inf if loss is None else float(loss)
        # mid-block: rewind to the draw of the block's points, so the loop draws the same points again
        redraw = (phase == "train" and t.block_position(step) and not t._stage_done(step)
                  and state["draw_rng"] is not None)
        if t.cfg.sampling == "rar_d" and state.get("points") is not None:  # the set the next draw adds to
            t.current_points = state["points"].to(dtype=t.dtype, device=t.device)
        if redraw and state.get("points") is not None:
            t.restored_points = state["points"].to(dtype=t.dtype, device=t.device)
            redraw = False
        t.rng.bit_generator.state = state["draw_rng"] if redraw else state["rng"]
        hist = t.history
        hist.evaluations, hist.steps = int(state["evaluations"]), int(state["steps_done"])
        t.guard.initial = state["initial"]
        t.guard.load_state_dict(state.get("guard") or {})
        t.recorder.started = time.perf_counter() - float(state["wall_time"])
        return step, phase


class Trainer:
    """Runs a method's dynamics on a PINN loss. One instance per run.

    Made of small parts: loops (:mod:`pinn_lora.training.loops`: eager, graph-mode, L-BFGS) that yield an
    :class:`Outcome` per step, a :class:`Guard` (divergence check and restore), a
    :class:`Checkpointer` and a :class:`Recorder` (records, monitors, evaluation cadence, progress)."""

    def __init__(self, problem: Any, model: nn.Module, dynamics: Dynamics | None, cfg: TrainConfig,
                 monitors: Sequence[Monitor] = (), after_step: Callable[[int, nn.Module, Dynamics], None] | None = None,
                 checkpoint_path: str | Path | None = None, method: Any = None,
                 resume_from: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
                 settings: dict[str, Any] | None = None, stages: Sequence[Any] = ()) -> None:
        """``method`` (its running state goes into checkpoints), ``resume_from`` (a checkpoint's
        (network state, resume state), :func:`pinn_lora.store.checkpoints.load`: the run continues at its step;
        ``history.records`` must already hold the records written before it) and ``settings``
        (stored in checkpoints, compared on resume by the caller).

        ``stages``: continuation — problems (the same family at intermediate coefficients) whose
        residuals are trained first, in order, each for at most ``cfg.stage_steps`` steps (fewer once
        a step starts at a loss ≤ ``cfg.stage_tol``); the remaining steps train ``problem``. Each
        stage starts with new points; records carry ``stage`` (``len(stages)``: the target).
        Evaluations always measure the error against ``problem``."""
        self.problem, self.model, self.dynamics, self.cfg = problem, model, dynamics, cfg
        self.stages = list(stages)
        self.stage, self.stage_start = 0, 0  # the current stage and the step it started at
        self._stage_loss = math.inf  # the loss at the start of the stage's last step
        self.after_step = after_step
        self.method, self.resume_from, self.settings = method, resume_from, settings or {}
        ref = next(iter(model.parameters()), None)
        ref = ref if ref is not None else next(iter(model.buffers()))
        self.dtype, self.device = ref.dtype, ref.device
        self.params = [p for p in model.parameters() if p.requires_grad]
        if cfg.solver == "lm" and not isinstance(dynamics, LevenbergMarquardt):
            self.dynamics = (method.second_order(model, cfg.lm_mu, cfg.lm_adaptive) if method is not None
                             else LevenbergMarquardt(self.params, mu=cfg.lm_mu, adaptive=cfg.lm_adaptive))
        self.rng = np.random.default_rng(cfg.seed)
        self._draw_state: dict[str, Any] | None = None  # the generator's state before the last draw of points
        self.current_points: torch.Tensor | None = None  # the last points drawn
        self.restored_points: torch.Tensor | None = None  # a checkpoint's points, for a resume mid-block
        self.history = History()
        self.stop: int | None = None  # the signal (SIGINT/SIGTERM) that asked the run to stop
        self.graph_captured = False  # set when the steps ran from a CUDA graph
        self.graph_why = ""  # on CUDA: why the steps were not captured (unsafe for a graph, or the capture failed)
        self.recorder = Recorder(self.history, monitors, cfg.eval_every, cfg.progress)
        self.guard = Guard(self._state_tensors, cfg.divergence_factor, self.history, self.recorder.monitors,
                           self._guard_score if self.scored else None)
        self.checkpointer = Checkpointer(self, None if checkpoint_path is None else Path(checkpoint_path),
                                         cfg.checkpoint_every)

    scored = True  # the Guard ranks verified states by their residual on fixed points (False: keeps the last)

    @property
    def monitors(self) -> list[Monitor]:
        return self.recorder.monitors

    @property
    def physics(self) -> Any:
        """The problem whose residuals the current step trains (a continuation stage, or the target)."""
        return self.stages[self.stage] if self.stage < len(self.stages) else self.problem

    def _stage_done(self, step: int) -> bool:
        """Whether the current continuation stage is over before ``step``."""
        if self.stage >= len(self.stages) or step <= self.stage_start:
            return False
        return step - self.stage_start >= self.cfg.stage_steps or self._stage_loss <= self.cfg.stage_tol

    def _next_stage(self, step: int) -> bool:
        """Move to the next continuation stage when the current one is over before ``step``."""
        if not self._stage_done(step):
            return False
        self.stage, self.stage_start, self._stage_loss = self.stage + 1, step, math.inf
        return True

    def block_position(self, step: int) -> int:
        """Steps since the last draw of points: every ``resample_every`` steps from the stage's start."""
        return (step - self.stage_start) % self.cfg.resample_every

    def _guard_score(self) -> float:
        """The live model's residual on :data:`GUARD_POINTS` fixed points of the Guard's own (not the verdict's)."""
        from pinn_lora.training.verdict import validation_points, validation_residual

        if getattr(self, "_guard_points", None) is None:
            self._guard_points = validation_points(self.problem, GUARD_POINTS, self.dtype, self.device,
                                                   purpose="guard")
        return validation_residual(self.problem, self.model, self._guard_points)

    def points(self, n: int) -> torch.Tensor:
        self._draw_state = self.rng.bit_generator.state
        seed = int(self.rng.integers(2**31 - 1))
        if self.cfg.sampling == "rad":
            pts = self._rad_points(n, seed)
        elif self.cfg.sampling == "rar_d" and self.current_points is not None:
            pts = torch.cat([self.current_points, self._rad_points(self.cfg.rar_points, seed)])
        else:
            pts = torch.as_tensor(self.physics.sample(n, seed=seed, sampler=self.cfg.sampler), dtype=self.dtype,
                                  device=self.device)
        self.current_points = pts
        return pts

    def batch(self, step: int, current: torch.Tensor | None) -> torch.Tensor:
        """The points of ``step``: new ones every ``resample_every`` steps, else ``current`` (after a
        resume mid-block, the checkpoint's; with uniform sampling they are drawn again instead)."""
        mid = 0 if self._next_stage(step) else self.block_position(step)
        if current is not None and mid:
            return current
        if current is None and mid and self.restored_points is not None:
            current, self.restored_points = self.restored_points, None
            self.current_points = current
            return current
        return self.points(self.cfg.n_points)

    def _rad_points(self, n: int, seed: int) -> torch.Tensor:
        """RAD (Wu et al. 2023): ``n`` of ``rad_pool``·n candidates, drawn without replacement with
        probability ∝ |r|^k / mean(|r|^k) + c (|r|: the model's residual, summed over terms). RAR-D
        adds such a draw to the points it has (the first draw: ``n_points`` from the sampler)."""
        from pinn_lora.model.jacobian import residual_vector

        cfg = self.cfg
        pool = torch.as_tensor(self.physics.sample(n * cfg.rad_pool, seed=seed, sampler=cfg.sampler),
                               dtype=self.dtype, device=self.device)
        r = residual_vector(self.physics, self.model, pool).reshape(-1, pool.shape[0]).abs().sum(0)
        dens = r ** cfg.rad_k
        dens = (dens / dens.mean().clamp_min(1e-300) + cfg.rad_c).double().cpu().numpy()
        if not np.all(np.isfinite(dens)) or dens.sum() <= 0:
            dens = np.ones_like(dens)
        idx = np.random.default_rng(seed).choice(pool.shape[0], size=n, replace=False, p=dens / dens.sum())
        return pool[torch.as_tensor(np.sort(idx), device=self.device)]

    def _loss_terms(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms on ``points``; the loss is their sum."""
        return residual_losses(self.physics, self.model, points, self.cfg.causal_eps, self.cfg.causal_bins,
                               self.cfg.derivatives)

    def _gradient_stats(self, stash: dict[str, Any]) -> None:
        """After the step's first backward: the gradient norm for its record."""
        stash["grad_norm"] = _norm(self.params)

    def _closure(self, points: torch.Tensor, stash: dict[str, Any]) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            for p in self.params:
                p.grad = None
            terms = self._loss_terms(points)
            loss = sum(v.sum() for v in terms.values())  # a batched trainer's terms hold one value per copy
            loss.backward()
            for p in self.params:  # autograd may leave a transposed (non-contiguous) gradient; L-BFGS views it flat
                if p.grad is not None and not p.grad.is_contiguous():
                    p.grad = p.grad.contiguous()
            stash["evals"] = stash.get("evals", 0) + 1
            if "terms" not in stash:  # first evaluation of the step: record it
                stash["terms"] = {k: v.detach() for k, v in terms.items()}
                self._gradient_stats(stash)
            return loss.detach()
        return closure

    def evaluate(self) -> float:
        return self.problem.relative_l2(self.model)

    def run(self) -> History:
        from pinn_lora.training.loops import LBFGSLoop

        cfg = self.cfg
        self.recorder.open(self.model, self.problem)
        start, phase = (0, "train") if self.resume_from is None else self.checkpointer.restore(*self.resume_from)
        self.recorder.show(cfg.steps + cfg.lbfgs_steps)
        restore_signals = self._stop_on_signals()
        if self.resume_from is None:  # a resumed run has its candidates from the checkpoint
            self.guard.propose(0)
        try:
            method_loop = self._method_loop() if phase == "train" else None
            loops = [(method_loop, start)] if method_loop is not None and cfg.steps else []
            loops += [(LBFGSLoop(self, cfg.steps), 0)] if cfg.lbfgs_steps and phase != "end" else []
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
        if self.stages and out.record.get("phase") == "train":
            out.record["stage"] = self.stage
            self._stage_loss = out.loss
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

        def handler(signum: int, _frame: Any) -> None:
            if self.stop is not None or self.checkpointer.path is None:
                self.stop = self.stop or signum
                raise self._interrupted(None)
            self.stop = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(sig, old) for sig, old in previous.items()] and None

    def _method_loop(self) -> Any:
        """The loop for the method's steps: eager, or the static step (graph mode)."""
        from pinn_lora.training.loops import EagerLoop, SecondOrderLoop, StaticLoop

        if isinstance(self.dynamics, LevenbergMarquardt):
            if self.device.type == "cuda" and self.cfg.cuda_graph is not False:
                self.graph_why = "the second-order step (solver=lm) accepts or rejects each proposal on the host"
            return SecondOrderLoop(self)
        static = self._static_mode()
        return EagerLoop(self) if static is None else StaticLoop(self, capture=static)

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
            self.graph_why = why
            _say_once(f"cuda_graph: eager steps ({why})")
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

    def _state_tensors(self) -> list[torch.Tensor]:
        return self.params + [b for b in self.model.buffers()]

    def _finish_diverged(self, rec: dict[str, Any]) -> None:
        rec["rel_l2"] = self.evaluate()  # of the restored state
        self._emit(rec)

    def _verify_end(self, points: torch.Tensor, step: int) -> bool:
        """Check the state the last step produced; False (and the last good state restored,
        with a closing ``check`` record) if it diverged."""
        current = self.guard.snapshot()
        loss = float(self._closure(points, {})())
        self.history.evaluations += 1
        if not self.guard.check(loss, current, step + 1):
            return True
        self._emit({"step": step + 1, "phase": "check", "loss": loss, "evaluations": self.history.evaluations,
                    "time": self.recorder.elapsed(), "rel_l2": self.evaluate()}, advance=0)
        return False

    def _step_stats(self, stash: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The statistics a step's record holds, as tensors on the device (each a scalar or one value
        per copy): the loss terms and the gradient norm."""
        return {**{f"loss_{k}": v for k, v in stash["terms"].items()}, "grad_norm": stash["grad_norm"]}

    def _stat_fields(self, stats: dict[str, list[float]]) -> dict[str, Any]:
        """The record's fields from :meth:`_step_stats` read on the host (each a list of floats)."""
        return {k: v[0] for k, v in stats.items()}

    def _record(self, step: int, phase: str, loss: float, lr: float, stash: dict[str, Any]) -> dict[str, Any]:
        self.history.evaluations += stash["evals"]
        stats = {k: v.detach().reshape(-1).tolist() for k, v in self._step_stats(stash).items()}
        return {"step": step, "phase": phase, "loss": loss, **self._stat_fields(stats), "lr": lr,
                "evaluations": self.history.evaluations, "time": self.recorder.elapsed()}

    def _emit(self, rec: dict[str, Any], advance: int = 1) -> None:
        self.recorder.emit(rec, advance)


def _norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖gradient‖ over ``params`` (those with a gradient), on the device."""
    return torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None))


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _diverged(loss: float, initial: float, factor: float) -> str:
    if not math.isfinite(loss):
        return "non-finite loss"
    if loss > factor * max(initial, 1e-300):
        return f"loss {loss:.3e} > {factor:g} × initial {initial:.3e}"
    return ""


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, mininterval=0.5)

