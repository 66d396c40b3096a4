"""The dynamics contract and the plain-optimiser dynamics (Adam, SGD)."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

Closure = Callable[[], torch.Tensor]
SCHEDULES = ("constant", "cosine", "exponential")


def damped_cholesky(s: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Cholesky factor of S + λI for a symmetric positive semi-definite r×r S, in float64, without a
    host sync (``cholesky_ex``: a failure gives NaN, which the loop's divergence check catches)."""
    eye = torch.eye(s.shape[0], dtype=torch.float64, device=s.device)
    chol, _ = torch.linalg.cholesky_ex(s.double() + lam * eye)
    return chol


def lr_factor(schedule: str, progress: float, final_ratio: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "exponential":
        return final_ratio**p
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


class Dynamics:
    """How trainable tensors move. ``step(closure)`` evaluates the closure
    (which zeroes gradients, computes the loss on a fixed batch, runs backward
    and returns the loss) as often as the rule needs and updates the tensors;
    it returns the loss at the start of the step."""

    evaluations_per_step: int = 1

    def __init__(self, lr: float, schedule: str = "constant", final_ratio: float = 1.0) -> None:
        lr_factor(schedule, 0.0, final_ratio)  # validates the schedule's name
        self.base_lr, self.schedule, self.final_ratio = float(lr), schedule, float(final_ratio)
        self.progress = 0.0

    @property
    def lr(self) -> float:
        return self.base_lr * lr_factor(self.schedule, self.progress, self.final_ratio)

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def step(self, closure: Closure) -> torch.Tensor:
        raise NotImplementedError

    def reset_state(self) -> None:
        """Forget optimiser moments (used by schedules that restart)."""

    # -- CUDA graphs (see pinn_lora.training.loops.StaticLoop) --
    def graph_unsafe_reason(self) -> str:
        """'' when ``step`` reads nothing back to the host (no ``.item()``, no checked solver) and
        keeps its tensors in place, so it can be captured in a CUDA graph; else why not."""
        return f"{type(self).__name__} has not been checked for graph capture"

    def prepare_capture(self, device: torch.device) -> None:
        """Switch to capturable state (device-side step counters, tensor learning rates) before
        the first step."""

    def count_replays(self, n: int) -> None:
        """Host-side bookkeeping that a replayed graph does not run (counters)."""

    def state_dict(self) -> dict[str, Any]:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.progress = state["progress"]


class GradientDynamics(Dynamics):
    """A ``torch.optim`` optimiser (Adam by default) with a learning-rate schedule."""

    OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}

    def __init__(self, params: Iterable[Any], lr: float, optimizer: str = "adam", schedule: str = "constant",
                 final_ratio: float = 0.1, **options: Any) -> None:
        super().__init__(lr, schedule, final_ratio)
        if optimizer not in self.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(self.OPTIMIZERS)}")
        self._cls, self._options = self.OPTIMIZERS[optimizer], options
        self.param_groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        self.param_groups = _merge_plain_groups(self.param_groups)
        self.optimizer = self._make()

    def _make(self) -> torch.optim.Optimizer:
        groups = [{**g, "lr": self.base_lr * g.get("lr_mult", 1.0)} for g in self.param_groups]
        return self._cls(groups, lr=self.base_lr, **self._options)

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        for g in self.optimizer.param_groups:
            value = self.lr * g.get("lr_mult", 1.0)
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(value)  # in place: a captured graph reads this tensor
            else:
                g["lr"] = value

    def step(self, closure: Closure) -> torch.Tensor:
        loss = closure()
        self.optimizer.step()
        return loss

    def graph_unsafe_reason(self) -> str:
        if self._cls is not torch.optim.Adam and self.schedule != "constant":
            return f"a {self.schedule} schedule with {self._cls.__name__} would be frozen into the graph"
        return ""

    def prepare_capture(self, device: torch.device) -> None:
        """Adam with ``capturable=True`` and each group's learning rate a device tensor, updated
        in place by the schedule (a Python float would be frozen into the graph)."""
        if self._cls is torch.optim.Adam and device.type == "cuda":
            self._options = {**self._options, "capturable": True}
            saved = self.optimizer.state_dict() if self.optimizer.state else None  # a resumed run's moments
            self.optimizer = self._make()
            if saved is not None:
                self.optimizer.load_state_dict(saved)
            for g in self.optimizer.param_groups:
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)

    def reset_state(self) -> None:
        """Adam's moments and step counts are zeroed in place: what a fresh state holds, so the next step is
        the same as after dropping it, and a captured graph that reads these tensors stays valid. Other
        optimisers' state is dropped (SGD's momentum starts from the gradient, not from zero)."""
        if self._cls is torch.optim.Adam:
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
            return
        self.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])


def _merge_plain_groups(groups: list[dict]) -> list[dict]:
    """Fold single-tensor groups without options into one group."""
    plain = [p for g in groups if set(g) == {"params"} for p in g["params"]]
    rich = [g for g in groups if set(g) != {"params"}]
    return ([{"params": plain}] if plain else []) + rich
