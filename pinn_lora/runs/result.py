"""What one adaptation gives back: :class:`AdaptResult` (the adapted model, its history, the errors and the
verdict), its summary and summary line, and how it is written to a run directory."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from pinn_lora.methods import Method
from pinn_lora.runs.adapter_io import save_adapter
from pinn_lora.store import rundir
from pinn_lora.store.tensors import write_json
from pinn_lora.training.monitors import json_safe
from pinn_lora.training.trainer import History

VERDICTS = {"completed": "", "no_improvement": " | NO IMPROVEMENT: the result's validation residual is not below the "
                                                "base model's; the adaptation did not improve on the base",
            "diverged": " [diverged]"}


@dataclass
class AdaptResult:
    problem: Any
    method: Method
    model: nn.Module
    history: History
    base_error: float
    error: float
    trainable: int
    base_card: dict[str, Any]
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] | None = None  # Stability.summary() of the run (default monitors)
    validation_base: float = float("nan")  # the base's residual on the validation set (pinn_lora.training.verdict)
    validation: float = float("nan")  # the result's

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.history.records

    def summary(self) -> dict[str, Any]:
        return {
            "problem": self.problem.name,
            "coefficients": dict(self.problem.coefficients),
            "base_coefficients": self.base_card.get("coefficients"),
            "method": self.method.describe(),
            "trainable_parameters": self.trainable,
            "steps": self.history.steps,
            "evaluations": self.history.evaluations,
            "wall_time_s": round(self.history.wall_time, 3),
            "base_error": self.base_error,
            "adapted_error": self.error,
            "improvement": (self.base_error / self.error if math.isfinite(self.error) and self.error > 0
                            else float("nan")),
            "validation_residual_base": self.validation_base,
            "validation_residual": self.validation,
            "status": self.history.status,
            "message": self.history.message,
            **({} if self.stability is None else {"stability": {
                k: json_safe(v) for k, v in self.stability.items() if k not in ("status", "message")}}),
            **self.extra,
        }

    def summary_line(self) -> str:
        s = self.summary()
        run = s.get("settings", {})
        how = ""
        if run.get("solver") == "lm":
            how = f"solver=lm(mu0={run.get('lm_mu'):g}) sampling={run.get('sampling')} "
        if s.get("continuation"):
            how += f"stages={len(s['continuation']) - 1} "
        return (f"{s['problem']} {_fmt_coeffs(s['coefficients'])} | "
                f"method={self.method.label(run.get('solver', 'method'))} {how}"
                f"trainable={s['trainable_parameters']} steps={s['steps']} time={s['wall_time_s']:.1f}s | "
                f"rel. L2 on target: base {s['base_error']:.3e} -> adapted {s['adapted_error']:.3e} "
                f"({s['improvement']:.1f}x) | validation residual: base {s['validation_residual_base']:.3e} -> "
                f"{s['validation_residual']:.3e}{VERDICTS.get(s['status'], ' [' + s['status'] + ']')}")

    def save(self, run_dir: str | Path, plots: bool = True) -> Path:
        """Write summary.json, adapter.safetensors + card.json (:func:`pinn_lora.runs.adapter_io.save_adapter`;
        reload with :func:`pinn_lora.load_adapter`) and plots into ``run_dir``, which is claimed for
        it unless this process owns it already (:mod:`pinn_lora.store.rundir`: nothing is overwritten)."""
        run_dir = Path(run_dir)
        if not rundir.owned(run_dir):
            with rundir.claim(run_dir):
                return self.save(run_dir, plots)
        save_adapter(self.model, run_dir, self.method, self.problem, overwrite=True)  # in its own directory
        write_json(run_dir / "summary.json", self.summary())
        if plots:
            from pinn_lora.runs.report import plot_losses, plot_solution

            rundir.make_dirs(run_dir / "plots")  # through no symbolic link
            title = f"{self.method.name} on {self.problem!r}"
            plot_losses(self.metrics, run_dir / "plots" / "loss.png", title, base_error=self.base_error)
            plot_solution(self.problem, self.model, run_dir / "plots" / "solution.png", title)
        return run_dir


def _fmt_coeffs(c: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in c.items())


def stage_summary(problems: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per continuation stage: its coefficients, first step, steps taken and losses at the start
    of its first and last step (from the records' ``stage``)."""
    out = []
    for i, p in enumerate(problems):
        mine = [r for r in records if r.get("stage") == i and r.get("phase") == "train"]
        out.append({"stage": i, "coefficients": dict(p.coefficients), "first_step": mine[0]["step"] if mine else None,
                    "steps": len(mine), "loss_first": mine[0]["loss"] if mine else None,
                    "loss_last": mine[-1]["loss"] if mine else None})
    return out
