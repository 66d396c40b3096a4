"""The loops. Each takes steps of a :class:`~pinn_lora.methods.dynamics.base.Step` over the run's
objective and yields one :class:`~pinn_lora.training.records.Outcome` per step (or per call of several
L-BFGS iterations); the Trainer verifies each by its loss, records it, evaluates and writes due
checkpoints (:meth:`pinn_lora.training.trainer.Trainer.run`). A loop sees only a :class:`LoopContext`
(objective, sampler, guard, checkpointer, recorder, the step); it keeps ``points`` (the batch of its last
step, for the closing check) and ``end`` (its step count)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from pinn_lora.methods.dynamics.base import Step
from pinn_lora.training.checkpointer import Checkpointer
from pinn_lora.training.guard import Guard
from pinn_lora.training.objective import PhysicsObjective
from pinn_lora.training.records import Outcome, Recorder
from pinn_lora.training.sampling import Sampler

LBFGS_CHUNK = 10  # L-BFGS iterations per optimizer call (and per record)


@dataclass
class GraphMode:
    """Whether the steps ran from a CUDA graph, and (on CUDA) why they did not."""

    captured: bool = False
    why: str = ""


@dataclass
class LoopContext:
    """What a loop works with: the run's ``objective``, the ``sampler`` of its points, the ``guard``
    (snapshots of the state a step starts from), the ``checkpointer``, the ``recorder`` (records,
    history, clock), the method's ``dynamics``, its ``steps``, the method's in-place ``hook`` (graph
    mode runs it between replays), the run's ``device``, ``dtype`` and ``graph`` report."""

    objective: PhysicsObjective
    sampler: Sampler
    guard: Guard
    checkpointer: Checkpointer
    recorder: Recorder
    dynamics: Step | None
    steps: int
    device: torch.device
    dtype: torch.dtype
    hook: Callable[[int], None] | None = None
    graph: GraphMode = field(default_factory=GraphMode)

    def pending(self, step: int) -> tuple[dict[str, torch.Tensor], Any] | None:
        """The checkpoint to write once ``step``'s loss verifies the state before it, if one is due."""
        return self.checkpointer.capture(step) if self.checkpointer.due(step, step + 1) else None


class EagerLoop:
    """The method's steps, the host reading each step's loss: any step (first-order, ODELoRA's schemes,
    Levenberg–Marquardt) through the one protocol, ``dynamics.step(objective)`` then
    ``dynamics.report(objective)``."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx, self.end = ctx, ctx.steps
        self.points: torch.Tensor | None = None

    def steps(self, start: int) -> Iterator[Outcome]:
        ctx, dyn = self.ctx, self.ctx.dynamics
        for step in range(start, ctx.steps):
            pending = ctx.pending(step)
            self.points = ctx.sampler.batch(step, self.points)
            dyn.set_progress(step / max(ctx.steps, 1))
            before = ctx.guard.snapshot()
            objective = ctx.objective.at(self.points)
            loss = float(dyn.step(objective))
            report = dyn.report(objective)  # after the step: an adaptive scheme reports the step size it took
            rec = ctx.recorder.step_record(step, "train", loss, ctx.objective.fields(objective.stash), report)
            yield Outcome(step, loss, rec, before, hook=True,
                          evaluate=ctx.recorder.eval_due(step, step + 1, ctx.steps), pending=pending)


class StaticLoop:
    """The method's steps from a static step function: fixed buffers for the points and the
    per-step results (loss, terms, gradient norm), written on the device into a ring of
    ``block`` rows; the host reads the ring every ``block`` steps and yields the block's
    outcomes (each verified against the block's start state). With ``capture`` the step is
    captured in a CUDA graph after ``warmup`` eager steps (run on a side stream, as capture
    requires) and replayed; a capture that fails falls back to calling the step function, saying
    why once. Points are drawn on the host by the sampler exactly as the eager loop draws them, so
    both loops see the same batches."""

    def __init__(self, ctx: LoopContext, capture: bool, block: int, warmup: int = 3) -> None:
        self.ctx, self.capture, self.block, self.warmup, self.end = ctx, capture, block, warmup, ctx.steps
        self.points: torch.Tensor | None = None
        self.layout: list[tuple[str, int]] | None = None  # (name, size) of each statistic in a ring row
        self.ring: list[torch.Tensor] = []
        self.cursor = torch.zeros((), dtype=torch.long, device=ctx.device)

    def _step(self) -> None:
        """One step on the static points, its results written into the ring's next row (on the device)."""
        ctx = self.ctx
        objective = ctx.objective.at(self.points)
        loss = ctx.dynamics.step(objective)
        stats = ctx.objective.step_stats(objective.stash)
        if self.layout is None:
            self.layout = [(k, v.numel()) for k, v in stats.items()]
        row = torch.cat([loss.reshape(1).to(ctx.dtype), *(v.reshape(-1).to(ctx.dtype) for v in stats.values())])
        if not self.ring:
            self.ring.append(torch.zeros(self.block, row.numel(), dtype=ctx.dtype, device=ctx.device))
        self.ring[0].index_copy_(0, self.cursor.reshape(1) % self.block, row.unsqueeze(0))
        self.cursor.add_(1)

    def _run(self, graph: Any, capture: bool) -> None:
        """The step: replayed from ``graph``, on a side stream before a capture, or called."""
        ctx = self.ctx
        if graph is not None:
            graph.replay()
            ctx.dynamics.count_replays(1)
        elif capture:
            side = torch.cuda.Stream(ctx.device)
            side.wait_stream(torch.cuda.current_stream(ctx.device))
            with torch.cuda.stream(side):
                self._step()
            torch.cuda.current_stream(ctx.device).wait_stream(side)
        else:
            self._step()

    def _records(self, done: int, n: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """The block's records from the ring (the one host sync of the block)."""
        ctx, hist = self.ctx, self.ctx.recorder.history
        rows = self.ring[0][:n].tolist()
        self.cursor.zero_()
        for i, row in enumerate(rows):
            stats, at = {}, 1
            for name, size in self.layout:
                stats[name], at = row[at:at + size], at + size
            rec = {"step": done + i, "phase": "train", "loss": row[0], **ctx.objective.stat_fields(stats),
                   "lr": ctx.dynamics.lr, "evaluations": hist.evaluations + ctx.dynamics.evaluations_per_step,
                   "time": ctx.recorder.elapsed()}
            hist.evaluations = rec["evaluations"]
            if i < n - 1:
                rec["between_syncs"] = True
            yield i, rec

    def steps(self, start: int) -> Iterator[Outcome]:
        ctx = self.ctx
        self.points = ctx.sampler.batch(start, None)
        graph, capture = None, self.capture
        if ctx.device.type == "cuda":  # the same (capturable) optimiser with or without the graph
            ctx.dynamics.prepare_capture(ctx.device)
        start_state = ctx.guard.snapshot()
        done = start
        note = (f" (graph mode: the start of its block of {self.block} graph steps, or of the block before when "
                "the block's first loss is bad)")
        while done < ctx.steps:
            n = min(self.block - done % self.block, ctx.steps - done)
            # a checkpoint due in this block holds the block's start, verified by the block's first loss
            pending = None
            if ctx.checkpointer.due(done, done + n):  # the generator as before this step's own draw
                drawn_here = done == start and ctx.sampler.block_position(done) == 0
                pending = ctx.checkpointer.capture(done, rng=ctx.sampler.draw_state if drawn_here else None)
            for step in range(done, done + n):
                if step != start:
                    fresh = ctx.sampler.batch(step, self.points)
                    if fresh is not self.points:
                        self.points.copy_(fresh, non_blocking=True)
                ctx.dynamics.set_progress(step / max(ctx.steps, 1))
                if capture and graph is None and step >= self.warmup:
                    graph = _capture(ctx, self._step)
                    capture = graph is not None
                self._run(graph, capture)
                if ctx.hook is not None:  # an in-place hook (Method.hook_in_place), between replays
                    ctx.hook(step)
            # the block's start state is verified by the block's first loss; a blow-up restores it
            # (or, when that first loss is already bad, the previous block's start)
            for i, rec in self._records(done, n):
                last = i == n - 1
                yield Outcome(done + i, rec["loss"], rec, start_state, note=note, pending=pending if i == 0 else None,
                              evaluate=last and ctx.recorder.eval_due(done, done + n, ctx.steps))
            done += n
            start_state = ctx.guard.snapshot()


def _capture(ctx: LoopContext, step_fn: Callable[[], None]) -> Any:
    """A CUDA graph of ``step_fn``, or None (and why, once) when capture fails."""
    torch.cuda.synchronize(ctx.device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step_fn()
    except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
        ctx.graph.why = f"capture failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        say_once(f"cuda_graph: {ctx.graph.why}, eager steps from here")
        torch.cuda.synchronize(ctx.device)
        return None
    ctx.graph.captured = True
    return graph


class LBFGSLoop:
    """L-BFGS finish (:class:`~pinn_lora.methods.dynamics.lbfgs.LBFGSStep`, strong Wolfe line search) on
    one fixed batch of ``n_points``, in calls of at most ``LBFGS_CHUNK`` iterations (each call
    re-evaluates its starting point, so one-iteration calls would cost an extra evaluation per
    iteration); one outcome per call. Steps are numbered after the method's ``offset`` steps."""

    phase = "lbfgs"

    def __init__(self, ctx: LoopContext, step: Step, offset: int, iterations: int, n_points: int) -> None:
        self.ctx, self.step, self.offset, self.iterations, self.n_points = ctx, step, offset, iterations, n_points
        self.end = offset + iterations
        self.points: torch.Tensor | None = None

    def steps(self, start: int) -> Iterator[Outcome]:
        ctx = self.ctx
        self.points = ctx.sampler.points(self.n_points)
        done = 0
        while done < self.iterations:
            n = min(LBFGS_CHUNK, self.iterations - done)
            self.step.iterations = n
            before = ctx.guard.snapshot()
            objective = ctx.objective.at(self.points)
            loss = float(self.step.step(objective))
            rec = ctx.recorder.step_record(self.offset + done, "lbfgs", loss, ctx.objective.fields(objective.stash),
                                           self.step.report(objective))
            yield Outcome(self.offset + done, loss, rec, before, advance=n,
                          evaluate=ctx.recorder.eval_due(done, done + n, self.iterations))
            done += n


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """A RuntimeWarning, once per message and process."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
