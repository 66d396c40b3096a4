"""What a run would refuse once it is under way, found before it claims its directory, so bad input
creates and changes nothing (:mod:`pinn_lora.store.rundir`): ``cuda_graph=true`` where no graph can be
captured, a Levenberg–Marquardt Jacobian that cannot be solved densely or does not fit in memory, and
a resume whose checkpoint or ``metrics.jsonl`` does not fit the run (checked on copies: nothing is
written)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch


class PreflightError(ValueError):
    """A setting the run would refuse after it started."""


from pinn_lora.core.runtime import SettingError, check_bools, check_device  # noqa: E402,F401  (their home)


def _one_line(text: str) -> str:
    return "; ".join(ln.strip() for ln in str(text).splitlines() if ln.strip())


def check_graph(trainer: Any) -> None:
    """``cuda_graph=true`` on a run whose steps cannot be captured (on a CPU, say)."""
    from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt

    if trainer.cfg.cuda_graph is not True or not trainer.cfg.steps:
        return
    if isinstance(trainer.dynamics, LevenbergMarquardt):
        why = "the second-order step (solver=lm) accepts or rejects each proposal on the host"
    else:
        why = trainer.graph_unsafe_reason()
    if why:
        raise PreflightError(f"cuda_graph=true: {why}; use cuda_graph=auto or false")


def check_jacobian(trainer: Any) -> None:
    """``solver=lm``: the residual Jacobian (at least n_points rows × the trainable parameters) must be one
    the dense step solves, and fit in the device's memory."""
    from pinn_lora.methods.dynamics.gauss_newton import MAX_DENSE, LevenbergMarquardt
    from pinn_lora.model.memory import _size, device_memory

    if not isinstance(trainer.dynamics, LevenbergMarquardt) or not trainer.cfg.steps:
        return
    rows, n = trainer.cfg.n_points, sum(p.numel() for p in trainer.params)
    if trainer.cfg.sampling == "rar_d":
        rows += trainer.cfg.rar_points  # the set grows; its first draws at least
    if min(rows, n) > MAX_DENSE:
        raise PreflightError(f"solver=lm: n_points={trainer.cfg.n_points} residual rows (at least) and {n} trainable "
                             f"parameters; the dense Gauss-Newton step needs one of them <= {MAX_DENSE} (fewer "
                             "points, or solver=method)")
    itemsize = torch.empty((), dtype=trainer.dtype).element_size()
    need, have = rows * n * itemsize * 2, device_memory(trainer.device)  # the Jacobian and its scaled copy
    if have is not None and need > have:
        raise PreflightError(f"solver=lm: the residual Jacobian on n_points={trainer.cfg.n_points} points x {n} "
                             f"trainable parameters needs at least {_size(need)}, more than the {_size(have)} of "
                             f"{trainer.device.type}; use fewer points, or solver=method")


def metrics_prefix(path: str | Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` records of ``metrics.jsonl`` (read only); a :class:`~pinn_lora.store.tensors.CheckpointError`
    when there are fewer or they are not JSON lines."""
    from pinn_lora.store.tensors import CheckpointError

    path = Path(path)
    lines = [x for x in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []) if x.strip()]
    if len(lines) < n:
        raise CheckpointError(f"resume: {path} has {len(lines)} records, the checkpoint expects at least {n}")
    try:
        return [json.loads(x) for x in lines[:n]]
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"resume: {path} is not valid JSON lines ({exc})") from None


def check_resume(trainer: Any, saved: tuple[dict[str, torch.Tensor], dict[str, Any]] | None, checkpoint: Path,
                 metrics: Path) -> None:
    """A resume's checkpoint restored into a copy of ``trainer`` (network, dynamics, method, monitors,
    generators) and its records found in ``metrics``: a checkpoint that lacks a key, a tensor or a
    shape of this run is refused before anything is written."""
    from pinn_lora.store.tensors import CheckpointError

    if saved is None:
        return
    metrics_prefix(metrics, int(saved[1]["records"]))
    rng = torch.get_rng_state()
    try:
        copy.deepcopy(trainer).checkpointer.restore(*copy.deepcopy(saved))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        what = f"{type(exc).__name__}: {_one_line(exc)}" if not isinstance(exc, KeyError) else f"it lacks {exc}"
        raise CheckpointError(f"resume: the checkpoint {checkpoint} does not fit this run ({what[:300]}); it is "
                              "damaged or was written by another version: start the run again in a new "
                              "directory") from None
    finally:
        torch.set_rng_state(rng)


def check_run(trainer: Any, saved: Any = None, checkpoint: Path | None = None, metrics: Path | None = None) -> None:
    """Every check above, for a run about to claim its directory."""
    check_graph(trainer)
    check_jacobian(trainer)
    if saved is not None:
        check_resume(trainer, saved, Path(checkpoint), Path(metrics))


