"""Monitors: observers of the training loop. This module holds the metric
writer; the stability monitors build on the same hook (``on_record``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, IO

from torch import nn

from pinn_lora.train import History, Monitor

# metrics.jsonl: one JSON object per step with
#   step (int), phase ("train" | "lbfgs" | "check"), loss (float, normalised total),
#   loss_<term> (each residual term, normalised), grad_norm, lr (step size),
#   evaluations (gradient evaluations so far), time (s since start),
#   rel_l2 (relative L2 error vs the reference; every eval_every steps and at the end).
METRICS_SCHEMA = {
    "step": "int", "phase": "train | lbfgs | check (a diverged final state)", "loss": "float", "loss_<term>": "float", "grad_norm": "float",
    "lr": "float", "evaluations": "int", "time": "float", "rel_l2": "float (every eval_every steps)",
}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them readable
    return value


class MetricsWriter(Monitor):
    """Appends every record to ``metrics.jsonl`` (flushed every ``flush_every`` records)."""

    def __init__(self, path: str | Path, flush_every: int = 50) -> None:
        self.path = Path(path)
        self.flush_every = flush_every
        self._fh: IO[str] | None = None
        self._n = 0

    def on_start(self, model: nn.Module, problem: Any) -> None:
        self._fh = open(self.path, "a", encoding="utf-8")

    def on_record(self, record: dict[str, Any]) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._n += 1
        if self._n % self.flush_every == 0:
            self._fh.flush()

    def on_end(self, history: History) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
