"""What a run keeps and shows: the :class:`History` of records, the :class:`Monitor` base class, a
loop's :class:`Outcome` per step and the :class:`Recorder` (records, monitors, evaluation cadence,
progress bar)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


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

    def step_record(self, step: int, phase: str, loss: float, fields: dict[str, Any],
                    report: dict[str, Any]) -> dict[str, Any]:
        """A step's record: its loss, the objective's ``fields`` (loss terms, gradient norm …) and the
        step's ``report`` (:meth:`pinn_lora.methods.dynamics.base.Step.report`: its step size ``lr``, the
        evaluations it spent, which the history counts, and fields of its own, e.g. ``grad_norm``)."""
        own = dict(report)
        lr, spent = own.pop("lr"), own.pop("evaluations")
        self.history.evaluations += spent
        grad = {"grad_norm": own.pop("grad_norm")} if "grad_norm" in own else {}
        return {"step": step, "phase": phase, "loss": loss, **fields, **grad, "lr": lr,
                "evaluations": self.history.evaluations, "time": self.elapsed(), **own}

    def flush(self) -> None:
        for m in self.monitors:
            m.flush()

    def close(self) -> None:
        self.history.wall_time = self.elapsed()
        if self.bar is not None:
            self.bar.close()
        for m in self.monitors:
            m.on_end(self.history)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, mininterval=0.5)

