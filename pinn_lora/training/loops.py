"""The Trainer's loops. Each takes steps and yields one :class:`~pinn_lora.training.trainer.Outcome` per
step (or per call of several L-BFGS iterations); the Trainer verifies each by its loss, records
it, evaluates and writes due checkpoints (:meth:`pinn_lora.training.trainer.Trainer.run`). A loop keeps
``points`` (the batch of its last step, for the closing check) and ``end`` (its step count)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

if TYPE_CHECKING:
    from pinn_lora.training.trainer import Outcome, Trainer

LBFGS_CHUNK = 10  # L-BFGS iterations per optimizer call (and per record)


class EagerLoop:
    """The method's steps, the host reading each step's loss."""

    def __init__(self, trainer: Trainer) -> None:
        self.t, self.end = trainer, trainer.cfg.steps
        self.points: torch.Tensor | None = None

    def steps(self, start: int) -> Iterator[Outcome]:
        from pinn_lora.training.trainer import Outcome

        t, cfg = self.t, self.t.cfg
        for step in range(start, cfg.steps):
            pending = t.checkpointer.capture(step) if t.checkpointer.due(step, step + 1) else None
            self.points = t.batch(step, self.points)
            t.dynamics.set_progress(step / max(cfg.steps, 1))
            stash: dict[str, Any] = {}
            before = t.guard.snapshot()
            loss = float(t.dynamics.step(t._closure(self.points, stash)))
            lr = t.dynamics.lr  # after the step: an adaptive scheme reports the step size it took
            yield Outcome(step, loss, t._record(step, "train", loss, lr, stash), before, hook=True,
                          evaluate=t.recorder.eval_due(step, step + 1, cfg.steps), pending=pending)


class StaticLoop:
    """The method's steps from a static step function: fixed buffers for the points and the
    per-step results (loss, terms, gradient norm), written on the device into a ring of
    ``sync_every`` rows; the host reads the ring every ``sync_every`` steps and yields the block's
    outcomes (each verified against the block's start state). With ``capture`` the step is
    captured in a CUDA graph after ``warmup`` eager steps (run on a side stream, as capture
    requires) and replayed; a capture that fails falls back to calling the step function, saying
    why once. Points are drawn on the host exactly as the eager loop draws them, so both loops see
    the same batches."""

    def __init__(self, trainer: Trainer, capture: bool, warmup: int = 3) -> None:
        self.t, self.capture, self.warmup, self.end = trainer, capture, warmup, trainer.cfg.steps
        self.points: torch.Tensor | None = None

    def steps(self, start: int) -> Iterator[Outcome]:
        from pinn_lora.training.trainer import Outcome

        t, cfg, hist = self.t, self.t.cfg, self.t.history
        block = cfg.sync_every or cfg.eval_every
        layout: list[tuple[str, int]] | None = None  # (name, size) of each statistic in a ring row
        static_pts = self.points = t.batch(start, None)
        cursor = torch.zeros((), dtype=torch.long, device=t.device)
        ring: list[torch.Tensor] = []

        def step_fn() -> None:
            nonlocal layout
            stash: dict[str, Any] = {}
            loss = t.dynamics.step(t._closure(static_pts, stash))
            stats = t._step_stats(stash)
            if layout is None:
                layout = [(k, v.numel()) for k, v in stats.items()]
            row = torch.cat([loss.reshape(1).to(t.dtype), *(v.reshape(-1).to(t.dtype) for v in stats.values())])
            if not ring:
                ring.append(torch.zeros(block, row.numel(), dtype=t.dtype, device=t.device))
            ring[0].index_copy_(0, cursor.reshape(1) % block, row.unsqueeze(0))
            cursor.add_(1)

        graph, capture = None, self.capture
        if t.device.type == "cuda":  # the same (capturable) optimiser with or without the graph
            t.dynamics.prepare_capture(t.device)
        start_state = t.guard.snapshot()
        done = start
        note = (f" (graph mode: the start of its block of {block} graph steps, or of the block before when the "
                "block's first loss is bad)")
        while done < cfg.steps:
            n = min(block - done % block, cfg.steps - done)
            # a checkpoint due in this block holds the block's start, verified by the block's first loss
            pending = None
            if t.checkpointer.due(done, done + n):  # the generator as before this step's own draw
                drawn_here = done == start and done % cfg.resample_every == 0
                pending = t.checkpointer.capture(done, rng=t._draw_state if drawn_here else None)
            for i in range(n):
                step = done + i
                if step != start and step % cfg.resample_every == 0:
                    static_pts.copy_(t.points(cfg.n_points), non_blocking=True)
                t.dynamics.set_progress(step / max(cfg.steps, 1))
                if capture and graph is None and step >= self.warmup:
                    graph = _capture(t, step_fn)
                    capture = graph is not None
                if graph is not None:
                    graph.replay()
                    t.dynamics.count_replays(1)
                elif capture:
                    side = torch.cuda.Stream(t.device)
                    side.wait_stream(torch.cuda.current_stream(t.device))
                    with torch.cuda.stream(side):
                        step_fn()
                    torch.cuda.current_stream(t.device).wait_stream(side)
                else:
                    step_fn()
                if t.after_step is not None:  # an in-place hook (Method.hook_in_place), between replays
                    t.after_step(step, t.model, t.dynamics)
            rows = ring[0][:n].tolist()  # the one host sync of the block
            cursor.zero_()
            for i, row in enumerate(rows):
                step = done + i
                stats, at = {}, 1
                for name, size in layout:
                    stats[name], at = row[at:at + size], at + size
                rec = {"step": step, "phase": "train", "loss": row[0], **t._stat_fields(stats), "lr": t.dynamics.lr,
                       "evaluations": hist.evaluations + t.dynamics.evaluations_per_step, "time": t.recorder.elapsed()}
                hist.evaluations = rec["evaluations"]
                last = i == n - 1
                if not last:
                    rec["between_syncs"] = True
                # the block's start state is verified by the block's first loss; a blow-up restores it
                # (or, when that first loss is already bad, the previous block's start)
                yield Outcome(step, row[0], rec, start_state, note=note, pending=pending if i == 0 else None,
                              evaluate=last and t.recorder.eval_due(done, step + 1, cfg.steps))
            done += n
            start_state = t.guard.snapshot()


def _capture(t: Trainer, step_fn: Callable[[], None]) -> Any:
    """A CUDA graph of ``step_fn``, or None (and why, once) when capture fails."""
    from pinn_lora.training.trainer import _say_once

    torch.cuda.synchronize(t.device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step_fn()
    except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
        t.graph_why = f"capture failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        _say_once(f"cuda_graph: {t.graph_why}, eager steps from here")
        torch.cuda.synchronize(t.device)
        return None
    t.graph_captured = True
    return graph


class LBFGSLoop:
    """L-BFGS finish (strong Wolfe line search) on one fixed batch, in calls of ``LBFGS_CHUNK``
    iterations (each call re-evaluates its starting point, so one-iteration calls would cost an
    extra evaluation per iteration); one outcome per call. Steps are numbered after the method's
    ``offset`` steps."""

    def __init__(self, trainer: Trainer, offset: int) -> None:
        self.t, self.offset = trainer, offset
        self.end = offset + trainer.cfg.lbfgs_steps
        self.points: torch.Tensor | None = None

    def steps(self, start: int) -> Iterator[Outcome]:
        from pinn_lora.training.trainer import Outcome

        t, cfg = self.t, self.t.cfg
        self.points = t.points(cfg.lbfgs_points or cfg.n_points)
        # max_eval must be set explicitly, or torch derives int(1.25 * max_iter), which for one
        # iteration leaves the line search no evaluations (the step is then 0)
        opt = torch.optim.LBFGS(t.params, lr=1.0, max_iter=LBFGS_CHUNK, max_eval=25 * LBFGS_CHUNK,
                                history_size=50, line_search_fn="strong_wolfe", tolerance_grad=1e-15,
                                tolerance_change=1e-16)
        done = 0
        while done < cfg.lbfgs_steps:
            n = min(LBFGS_CHUNK, cfg.lbfgs_steps - done)
            opt.param_groups[0].update(max_iter=n, max_eval=25 * n)
            stash: dict[str, Any] = {}
            before = t.guard.snapshot()
            loss = float(opt.step(t._closure(self.points, stash)))
            rec = t._record(self.offset + done, "lbfgs", loss, 1.0, stash)
            yield Outcome(self.offset + done, loss, rec, before, advance=n,
                          evaluate=t.recorder.eval_due(done, done + n, cfg.lbfgs_steps))
            done += n


class SecondOrderLoop:
    """Levenberg–Marquardt steps (:class:`~pinn_lora.methods.dynamics.gauss_newton.LevenbergMarquardt`):
    each step builds the residual Jacobian on its points (:mod:`pinn_lora.model.jacobian`) and takes
    one accepted proposal (or none); points are drawn every ``resample_every`` steps."""

    def __init__(self, trainer: Trainer) -> None:
        self.t, self.end = trainer, trainer.cfg.steps
        self.points: torch.Tensor | None = None

    def steps(self, start: int) -> Iterator[Outcome]:
        from pinn_lora.model.jacobian import residual_jacobian, residual_vector, term_names
        from pinn_lora.training.trainer import Outcome

        t, cfg = self.t, self.t.cfg
        names = term_names(t.problem)
        for step in range(start, cfg.steps):
            pending = t.checkpointer.capture(step) if t.checkpointer.due(step, step + 1) else None
            self.points = t.batch(step, self.points)
            physics = t.physics  # the step's problem (a continuation stage, or the target)
            t.dynamics.set_progress(step / max(cfg.steps, 1))
            before = t.guard.snapshot()
            r, jac = residual_jacobian(physics, t.model, self.points)
            pts = self.points

            def trial() -> float:
                v = residual_vector(physics, t.model, pts)
                return float(v @ v)

            loss = t.dynamics.gn_step(r, jac, trial)
            info = t.dynamics.last
            t.history.evaluations += 1 + info["lm_tries"]
            terms = (r.reshape(len(names), -1) ** 2).sum(1).tolist()
            rec = {"step": step, "phase": "train", "loss": loss, **{f"loss_{k}": v for k, v in zip(names, terms)},
                   "grad_norm": t.dynamics.grad_norm, "lr": info.get("lm_h", t.dynamics.lr),
                   "evaluations": t.history.evaluations, "time": t.recorder.elapsed(),
                   **{k: v for k, v in info.items() if k != "lm_h"}}
            yield Outcome(step, loss, rec, before, hook=True, evaluate=t.recorder.eval_due(step, step + 1, cfg.steps),
                          pending=pending)
