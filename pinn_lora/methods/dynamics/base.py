"""The step protocol (:class:`Step` over an :class:`Objective`) and the plain-optimiser dynamics (Adam, SGD)."""
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


class Objective:
    """What a step moves the parameters against: one loss, on a fixed set of points, at the parameters
    as they are set. Calling it is the *closure* of ``torch.optim``: it zeroes the gradients, computes
    the loss, runs backward and returns the loss (detached). ``residual()`` is the residual vector ρ
    with loss ‖ρ‖² (no graph), ``residual_jacobian()`` ρ and J = ∂ρ/∂θ (the columns in the order of
    the trainable parameters), for second-order steps. ``evaluations`` counts the closure calls.

    A plain function (a closure) is an objective without residuals: first-order steps take either."""

    evaluations: int = 0

    def __call__(self) -> torch.Tensor:
        raise NotImplementedError

    def residual(self) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} gives a loss, not a residual vector")

    def residual_jacobian(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} gives a loss, not a residual vector and its Jacobian")

    def trial_loss(self) -> float:
        """‖ρ‖² at the parameters as they are set (a second-order step's trial of a proposal)."""
        v = self.residual()
        return float(v @ v)


class Step:
    """The one protocol every way to move the parameters implements (first-order dynamics, ODELoRA's
    explicit and implicit schemes, Levenberg–Marquardt, L-BFGS): ``step(objective)`` evaluates the
    :class:`Objective` as often as its rule needs, moves the trainable tensors and returns the loss at
    the start of the step; ``report(objective)`` then says what the step's record holds of it (its
    step size ``lr``, the ``evaluations`` it spent, and any fields of its own). The loops
    (:mod:`pinn_lora.training.loops`) know nothing else about a step.

    ``residual_step``: the step reads the residual vector and its Jacobian (not only the loss and
    gradient); ``eager_only()``: '' when the step can run as a static (graph-captured) step, else why
    it must run eagerly (its host decisions)."""

    evaluations_per_step: int = 1
    residual_step: bool = False

    @property
    def lr(self) -> float:
        raise NotImplementedError

    def set_progress(self, progress: float) -> None:
        """The fraction of the run done before the step (schedules read it)."""

    def step(self, objective: Objective | Closure) -> torch.Tensor | float:
        raise NotImplementedError

    def report(self, objective: Objective | Closure) -> dict[str, Any]:
        """The step's part of its record, read right after the step: ``lr`` (the step size it took),
        ``evaluations`` (objective evaluations it spent) and fields of its own."""
        return {"lr": self.lr, "evaluations": getattr(objective, "evaluations", 0)}

    def eager_only(self) -> str:
        return ""

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
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Dynamics(Step):
    """A :class:`Step` with a base learning rate and its schedule. First-order dynamics call the
    objective (the closure: zero gradients, loss on a fixed batch, backward, the loss) as often as
    the rule needs and update the tensors; ``step`` returns the loss at the start of the step."""

    def __init__(self, lr: float, schedule: str = "constant", final_ratio: float = 1.0) -> None:
        lr_factor(schedule, 0.0, final_ratio)  # validates the schedule's name
        self.base_lr, self.schedule, self.final_ratio = float(lr), schedule, float(final_ratio)
        self.progress = 0.0

    @property
    def lr(self) -> float:
        return self.base_lr * lr_factor(self.schedule, self.progress, self.final_ratio)

    def set_progress(self, progress: float) -> None:
        self.progress = progress

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
