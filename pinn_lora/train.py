"""The one training loop, used by pretraining and adaptation alike:
sample → residual terms → loss → method step → monitors → checkpoint."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from pinn_lora.derivatives import ENGINES, provider
from pinn_lora.dynamics import Dynamics
from pinn_lora.problem import SAMPLERS


LBFGS_CHUNK = 10  # L-BFGS iterations per optimizer call (and per record)


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

    def __post_init__(self) -> None:
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


def residual_losses(problem: Any, net: nn.Module, points: torch.Tensor, causal_eps: float = 0.0,
                    causal_bins: int = 32, derivatives: str = "auto") -> dict[str, torch.Tensor]:
    """Normalised mean-square residual per term. With ``causal_eps`` > 0 and a
    time variable, points are binned in time and bin i is weighted by
    exp(−ε Σ_{k<i} L_k) (weights not differentiated). ``derivatives``: the engine
    (see :func:`pinn_lora.derivatives.provider`)."""
    return residual_terms(problem, provider(problem, net, points, derivatives), points, causal_eps, causal_bins)


def residual_terms(problem: Any, d: Any, points: torch.Tensor, causal_eps: float = 0.0,
                   causal_bins: int = 32) -> dict[str, torch.Tensor]:
    """:func:`residual_losses` from a derivative provider ``d`` already built on ``points``."""
    scale = problem.residual_scale()
    out = {}
    for name, r in problem.residuals(d).items():
        sq = r.reshape(-1) ** 2 / scale
        if causal_eps > 0 and "t" in problem.variables:
            t = points[:, problem.variables.index("t")]
            lo, hi = problem.lower[problem.variables.index("t")], problem.upper[problem.variables.index("t")]
            idx = ((t - lo) / (hi - lo) * causal_bins).long().clamp(0, causal_bins - 1)
            sums = torch.zeros(causal_bins, dtype=sq.dtype, device=sq.device).index_add_(0, idx, sq)
            counts = torch.zeros(causal_bins, dtype=sq.dtype, device=sq.device).index_add_(
                0, idx, torch.ones_like(sq)).clamp_min(1)
            per_bin = sums / counts
            before = torch.cumsum(per_bin.detach(), 0) - per_bin.detach()
            w = torch.exp(-causal_eps * before)
            out[name] = (w * per_bin).mean()
        else:
            out[name] = sq.mean()
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
    no Trainer internals, only the model and the records (see :mod:`pinn_lora.monitors`)."""

    def on_start(self, model: nn.Module, problem: Any) -> None: ...

    def on_record(self, record: dict[str, Any]) -> None: ...

    def on_end(self, history: History) -> None: ...

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


class Trainer:
    """Runs a method's dynamics on a PINN loss. One instance per run."""

    def __init__(self, problem: Any, model: nn.Module, dynamics: Dynamics | None, cfg: TrainConfig,
                 monitors: Sequence[Monitor] = (), after_step: Callable[[int, nn.Module, Dynamics], None] | None = None,
                 checkpoint_path: str | Path | None = None, method: Any = None,
                 resume_from: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        """``method`` (its running state goes into checkpoints), ``resume_from`` (a checkpoint's
        (network state, resume state), :func:`pinn_lora.resume.load`: the run continues at its step;
        ``history.records`` must already hold the records written before it) and ``settings``
        (stored in checkpoints, compared on resume by the caller)."""
        self.problem, self.model, self.dynamics, self.cfg = problem, model, dynamics, cfg
        self.monitors = list(monitors)
        self.after_step = after_step
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.method, self.resume_from, self.settings = method, resume_from, settings or {}
        ref = next(iter(model.parameters()), None)
        ref = ref if ref is not None else next(iter(model.buffers()))
        self.dtype, self.device = ref.dtype, ref.device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rng = np.random.default_rng(cfg.seed)
        self._draw_state: dict[str, Any] | None = None  # the generator's state before the last draw of points
        self.history = History()
        self.graph_captured = False  # set when the steps ran from a CUDA graph

    def points(self, n: int) -> torch.Tensor:
        self._draw_state = self.rng.bit_generator.state
        seed = int(self.rng.integers(2**31 - 1))
        pts = self.problem.sample(n, seed=seed, sampler=self.cfg.sampler)
        return torch.as_tensor(pts, dtype=self.dtype, device=self.device)

    def _loss_terms(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms on ``points``; the loss is their sum."""
        return residual_losses(self.problem, self.model, points, self.cfg.causal_eps, self.cfg.causal_bins,
                               self.cfg.derivatives)

    def _gradient_stats(self, stash: dict[str, Any]) -> None:
        """After the step's first backward: the gradient norm for its record."""
        stash["grad_norm"] = _norm(self.params)

    def _closure(self, points: torch.Tensor, stash: dict[str, Any]) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            for p in self.params:
                p.grad = None
            terms = self._loss_terms(points)
            loss = sum(terms.values())
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
        cfg, hist = self.cfg, self.history
        for m in self.monitors:
            m.on_start(self.model, self.problem)
        self._start = time.perf_counter()
        self._initial: float | None = None
        self._good: list[torch.Tensor] | None = None  # the last parameters whose loss passed the check
        start, phase = (0, "train") if self.resume_from is None else self._restore(*self.resume_from)
        bar = _progress(cfg.steps + cfg.lbfgs_steps, cfg.progress)
        if bar is not None and hist.steps:
            bar.update(hist.steps)
        points = None
        try:
            static = self._static_mode() if phase == "train" else None
            if static is not None:
                if not self._run_static(capture=static, bar=bar, start=start):
                    return hist
            elif phase == "train":
                for step in range(start, cfg.steps):
                    pending = self._capture_state(step) if self._checkpoint_due(step, step + 1) else None
                    if points is None or step % cfg.resample_every == 0:
                        points = self.points(cfg.n_points)
                    self.dynamics.set_progress(step / max(cfg.steps, 1))
                    stash: dict[str, Any] = {}
                    current = self._snapshot()
                    loss = float(self.dynamics.step(self._closure(points, stash)))
                    lr = self.dynamics.lr  # after the step: an adaptive scheme reports the step size it took
                    rec = self._record(step, "train", loss, lr, stash)
                    if self._check(loss, current, step):
                        self._finish_diverged(rec, bar)
                        return hist
                    hist.steps += 1
                    if self.after_step is not None:
                        self.after_step(step, self.model, self.dynamics)
                    if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                        rec["rel_l2"] = self.evaluate()
                    self._emit(rec, bar)
                    self._write_checkpoint(pending)  # the state before this step, verified by its loss
                if cfg.steps and not self._verify_end(points, cfg.steps - 1, bar):
                    return hist
            if cfg.lbfgs_steps:
                if phase == "train" and self.checkpoint_path is not None and cfg.checkpoint_every:
                    # the verified end of the method's steps: a run killed during the finish restarts it here
                    self._write_checkpoint(self._capture_state(cfg.steps, "lbfgs"))
                self._lbfgs(cfg.steps, bar)
        finally:
            hist.wall_time = time.perf_counter() - self._start
            if bar is not None:
                bar.close()
            for m in self.monitors:
                m.on_end(hist)
        return hist

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
            _say_once(f"cuda_graph: eager steps ({why})")
        if self.cfg.sync_every and not self._static_unsafe_reason():
            return False
        return None

    def _static_unsafe_reason(self) -> str:
        if self.after_step is not None:
            return "the method changes the model between steps (merges, restarts or basis refreshes)"
        return self.dynamics.graph_unsafe_reason()

    def graph_unsafe_reason(self) -> str:
        """'' when the step can be captured in a CUDA graph, else why not."""
        if self.device.type != "cuda":
            return f"the model is on {self.device.type}, not CUDA"
        return self._static_unsafe_reason()

    def _sync_every(self) -> int:
        return self.cfg.sync_every or self.cfg.eval_every

    def _run_static(self, capture: bool, bar: Any = None, warmup: int = 3, start: int = 0) -> bool:
        """The method's steps from a static step function: fixed buffers for the points and the
        per-step results (loss, terms, gradient norm), written on the device into a ring of
        ``sync_every`` rows; the host reads the ring every ``sync_every`` steps, then checks
        divergence (restoring the state at the start of that block), evaluates and emits the
        records. With ``capture`` the step is captured in a CUDA graph after ``warmup`` eager
        steps (run on a side stream, as capture requires) and replayed; a capture that fails
        falls back to calling the step function, saying why once. Points are drawn on the host
        exactly as the eager loop draws them, so both loops see the same batches. Returns False
        if the run diverged (the last good state restored)."""
        cfg, hist = self.cfg, self.history
        block = self._sync_every()
        names = None
        static_pts = self.points(cfg.n_points)
        cursor = torch.zeros((), dtype=torch.long, device=self.device)
        ring: list[torch.Tensor] = []

        def step_fn() -> None:
            nonlocal names
            stash: dict[str, Any] = {}
            loss = self.dynamics.step(self._closure(static_pts, stash))
            if names is None:
                names = list(stash["terms"])
            row = torch.stack([loss.reshape(()).to(self.dtype), *(stash["terms"][k].reshape(()) for k in names),
                               stash["grad_norm"].reshape(()).to(self.dtype)])
            if not ring:
                ring.append(torch.zeros(block, row.numel(), dtype=self.dtype, device=self.device))
            ring[0].index_copy_(0, cursor.reshape(1) % block, row.unsqueeze(0))
            cursor.add_(1)

        graph = None
        if self.device.type == "cuda":  # the same (capturable) optimiser with or without the graph
            self.dynamics.prepare_capture(self.device)
        start_state = self._snapshot()
        done = start
        while done < cfg.steps:
            n = min(block - done % block, cfg.steps - done)
            # a checkpoint due in this block holds the block's start, verified by the block's first loss
            pending = None
            if self._checkpoint_due(done, done + n):  # the generator as before this step's own draw
                drawn_here = done == start and done % cfg.resample_every == 0
                pending = self._capture_state(done, rng=self._draw_state if drawn_here else None)
            for i in range(n):
                step = done + i
                if step != start and step % cfg.resample_every == 0:
                    static_pts.copy_(self.points(cfg.n_points), non_blocking=True)
                self.dynamics.set_progress(step / max(cfg.steps, 1))
                if capture and graph is None and step >= warmup:
                    graph = self._capture(step_fn)
                    capture = graph is not None
                if graph is not None:
                    graph.replay()
                    self.dynamics.count_replays(1)
                elif capture:
                    side = torch.cuda.Stream(self.device)
                    side.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(side):
                        step_fn()
                    torch.cuda.current_stream(self.device).wait_stream(side)
                else:
                    step_fn()
            rows = ring[0][:n].tolist()  # the one host sync of the block
            cursor.zero_()
            for i, row in enumerate(rows):
                step = done + i
                loss = row[0]
                rec = {"step": step, "phase": "train", "loss": loss,
                       **{f"loss_{k}": v for k, v in zip(names, row[1:-1])}, "grad_norm": row[-1],
                       "lr": self.dynamics.lr, "evaluations": hist.evaluations + self.dynamics.evaluations_per_step,
                       "time": time.perf_counter() - self._start}
                hist.evaluations = rec["evaluations"]
                # the block's start state is verified by the block's first loss; a blow-up restores it
                # (or, when that first loss is already bad, the previous block's start)
                if self._check(loss, start_state, step):
                    hist.message += (f" (graph mode: the start of its block of {block} graph steps, or of the "
                                     "block before when the block's first loss is bad)")
                    self._finish_diverged(rec, bar)
                    return False
                hist.steps += 1
                last = i == n - 1
                if not last:
                    rec["between_syncs"] = True
                if last and ((step + 1) // cfg.eval_every > done // cfg.eval_every or step + 1 == cfg.steps):
                    rec["rel_l2"] = self.evaluate()
                self._emit(rec, bar)
                if i == 0:
                    self._write_checkpoint(pending)
            done += n
            start_state = self._snapshot()
        return self._verify_end(static_pts, cfg.steps - 1, bar)

    def _capture(self, step_fn: Callable[[], None]) -> Any:
        """A CUDA graph of ``step_fn``, or None (and why, once) when capture fails."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                step_fn()
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
            _say_once(f"cuda_graph: capture failed, eager steps from here ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''})")
            torch.cuda.synchronize(self.device)
            return None
        self.graph_captured = True
        return graph

    # -- divergence: the loss of a step is measured at the parameters *before* it, so each
    # -- step's result is verified by the next loss; the last one by one extra evaluation.
    def _snapshot(self) -> list[torch.Tensor]:
        # parameters and buffers: chained methods merge into frozen weights and move selectors
        # (tiny networks: a copy costs microseconds)
        return [t.detach().clone() for t in self._state_tensors()]

    def _state_tensors(self) -> list[torch.Tensor]:
        return self.params + [b for b in self.model.buffers()]

    def _check(self, loss: float, current: list[torch.Tensor], step: int) -> bool:
        """Accept ``current`` (whose loss is ``loss``) as good, or restore the last good state."""
        self._initial = loss if self._initial is None else self._initial
        bad = _diverged(loss, self._initial, self.cfg.divergence_factor)
        if not bad:
            self._good = current
            return False
        with torch.no_grad():
            for t, g in zip(self._state_tensors(), self._good if self._good is not None else current):
                t.copy_(g)
        self.history.status = "diverged"
        spikes = next((m for m in self.monitors if hasattr(m, "first_spike_step")), None)
        warned = (f"; the Stability monitor saw the first loss spike at step {spikes.first_spike_step}"
                  if spikes is not None and spikes.first_spike_step is not None else "")
        self.history.message = (f"divergence check (loss > {self.cfg.divergence_factor:g} x the first loss, or "
                                f"non-finite) fired at step {step}: {bad}{warned}; kept the last state with a "
                                f"good loss (step {max(step - 1, 0)})")
        return True

    def _finish_diverged(self, rec: dict[str, Any], bar: Any) -> None:
        rec["rel_l2"] = self.evaluate()  # of the restored state
        self._emit(rec, bar)

    def _verify_end(self, points: torch.Tensor, step: int, bar: Any = None) -> bool:
        """Check the state the last step produced; False (and the last good state restored,
        with a closing ``check`` record) if it diverged."""
        current = self._snapshot()
        loss = float(self._closure(points, {})())
        self.history.evaluations += 1
        if not self._check(loss, current, step + 1):
            return True
        self._emit({"step": step + 1, "phase": "check", "loss": loss, "evaluations": self.history.evaluations,
                    "time": time.perf_counter() - self._start, "rel_l2": self.evaluate()}, bar, advance=0)
        return False

    def _record(self, step: int, phase: str, loss: float, lr: float, stash: dict[str, Any]) -> dict[str, Any]:
        self.history.evaluations += stash["evals"]
        return {"step": step, "phase": phase, "loss": loss,
                **{f"loss_{k}": float(v) for k, v in stash["terms"].items()},
                "grad_norm": float(stash["grad_norm"]), "lr": lr, "evaluations": self.history.evaluations,
                "time": time.perf_counter() - self._start}

    def _lbfgs(self, offset: int, bar: Any) -> None:
        """L-BFGS finish (strong Wolfe line search) on one fixed batch, in calls of ``LBFGS_CHUNK``
        iterations (each call re-evaluates its starting point, so one-iteration calls would
        cost an extra evaluation per iteration); one record per call."""
        cfg = self.cfg
        points = self.points(cfg.lbfgs_points or cfg.n_points)
        # max_eval must be set explicitly, or torch derives int(1.25 * max_iter), which for one
        # iteration leaves the line search no evaluations (the step is then 0)
        opt = torch.optim.LBFGS(self.params, lr=1.0, max_iter=LBFGS_CHUNK, max_eval=25 * LBFGS_CHUNK,
                                history_size=50, line_search_fn="strong_wolfe", tolerance_grad=1e-15,
                                tolerance_change=1e-16)
        done = 0
        while done < cfg.lbfgs_steps:
            n = min(LBFGS_CHUNK, cfg.lbfgs_steps - done)
            opt.param_groups[0].update(max_iter=n, max_eval=25 * n)
            stash: dict[str, Any] = {}
            current = self._snapshot()
            loss = float(opt.step(self._closure(points, stash)))
            rec = self._record(offset + done, "lbfgs", loss, 1.0, stash)
            if self._check(loss, current, offset + done):
                self._finish_diverged(rec, bar)
                return
            before, done = done, done + n
            self.history.steps += n
            if done // cfg.eval_every > before // cfg.eval_every or done == cfg.lbfgs_steps:
                rec["rel_l2"] = self.evaluate()
            self._emit(rec, bar, advance=n)
        self._verify_end(points, offset + cfg.lbfgs_steps - 1, bar)

    # -- checkpoints: everything needed to continue at a step, captured before that step runs and
    # -- written once the step's loss has verified it (a step's own result is verified only by the next loss)
    def _checkpoint_due(self, first: int, end: int) -> bool:
        """Whether a checkpoint falls in steps ``first`` … ``end − 1`` (one after every ``checkpoint_every``)."""
        every = self.cfg.checkpoint_every
        return self.checkpoint_path is not None and every > 0 and (end // every) > (first // every)

    def _capture_state(self, step: int, phase: str = "train",
                       rng: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], Any]:
        """Everything to continue at ``step``, captured before it runs (``rng``: the points generator's
        state before the step's own draw, when that draw has already happened)."""
        from pinn_lora import resume

        hist = self.history
        state = {
            "phase": phase, "step": step, "records": len(hist.records), "evaluations": hist.evaluations,
            "steps_done": hist.steps, "initial": self._initial, "wall_time": time.perf_counter() - self._start,
            "rng": rng if rng is not None else self.rng.bit_generator.state, "draw_rng": self._draw_state, "torch_rng": torch.get_rng_state(),
            "dynamics": self.dynamics.state_dict() if self.dynamics is not None else {},
            "method": self.method.state_dict() if self.method is not None else {},
            "monitors": [m.state_dict() for m in self.monitors], "settings": self.settings,
        }
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}, resume.capture(state)

    def _write_checkpoint(self, pending: tuple[dict[str, torch.Tensor], Any] | None) -> None:
        if pending is None:
            return
        from pinn_lora import resume

        for m in self.monitors:  # the records before the checkpoint must be on disk with it
            flush = getattr(m, "flush", None)
            if callable(flush):
                flush()
        resume.save(self.checkpoint_path, *pending)

    def _restore(self, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> tuple[int, str]:
        """Continue from a checkpoint: the network, dynamics, method, monitors, generators and
        counters as they were before its step. Returns (step, phase)."""
        self.model.load_state_dict(model_state, strict=True)
        if self.dynamics is not None:
            self.dynamics.load_state_dict(state["dynamics"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        if len(state["monitors"]) != len(self.monitors):
            raise ValueError(f"resume: the checkpoint was written with {len(state['monitors'])} monitors, "
                             f"this run has {len(self.monitors)}")
        for m, ms in zip(self.monitors, state["monitors"]):
            m.load_state_dict(ms)
        torch.set_rng_state(state["torch_rng"])
        step, phase = int(state["step"]), state["phase"]
        # mid-block: rewind to the draw of the block's points, so the loop draws the same points again
        redraw = phase == "train" and step % self.cfg.resample_every and state["draw_rng"] is not None
        self.rng.bit_generator.state = state["draw_rng"] if redraw else state["rng"]
        hist = self.history
        hist.evaluations, hist.steps = int(state["evaluations"]), int(state["steps_done"])
        self._initial = state["initial"]
        self._start = time.perf_counter() - float(state["wall_time"])
        return step, phase

    def _emit(self, rec: dict[str, Any], bar: Any, advance: int = 1) -> None:
        self.history.records.append(rec)
        for m in self.monitors:
            m.on_record(rec)
        if bar is not None:
            post = {"loss": f"{rec['loss']:.3e}"}
            if "rel_l2" in rec:
                post["L2"] = f"{rec['rel_l2']:.2e}"
            elif self.history.last("rel_l2") is not None:
                post["L2"] = f"{self.history.last('rel_l2'):.2e}"
            bar.set_postfix(post, refresh=False)
            bar.update(advance)


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

