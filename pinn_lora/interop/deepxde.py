"""pinn_lora inside DeepXDE.

- :func:`deepxde_pde`: a pinn_lora problem's residuals as DeepXDE's ``pde(x, y)``, evaluated
  through DeepXDE's own derivative operators (``dde.grad``).
- Methods on a ``deepxde.nn.FNN``: :func:`pinn_lora.attach` works on it directly (it has
  ``linears``); the base weights become buffers, so the ``net.requires_grad_()`` that ``Model``
  calls at every evaluation cannot unfreeze them. :func:`data_loss` gives attach the loss of a
  DeepXDE data object. (``PFNN``'s nested layer lists are not supported.)
- :func:`optimizer`: a method's dynamics as a ``torch.optim.Optimizer`` for
  ``Model.compile(optimizer=...)``; ODELoRA's Runge–Kutta stages go through the closure
  DeepXDE passes to ``step``.
- :class:`MonitorCallback`: pinn_lora monitors as a DeepXDE callback.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pinn_lora.core.dde import deepxde
from pinn_lora.model.derivatives import derivative_indices


class DeepXDEDerivatives:
    """The derivative-provider interface (``d.u``, ``d.u_x``, ``d.u_xx`` …) on
    top of ``dde.grad.jacobian``/``hessian`` for DeepXDE's ``pde(x, y)`` calls."""

    def __init__(self, inputs: torch.Tensor, outputs: torch.Tensor, variables: tuple[str, ...]) -> None:
        self.points, self.u, self.variables = inputs, outputs, variables
        self._grad = deepxde().grad

    def column(self, name: str) -> torch.Tensor:
        return self.points[:, self.variables.index(name)].unsqueeze(1)

    def __getattr__(self, name: str) -> torch.Tensor:
        if not name.startswith("u_"):
            raise AttributeError(name)
        idx = derivative_indices(name, self.variables)
        if len(idx) == 1:
            return self._grad.jacobian(self.u, self.points, i=0, j=idx[0])
        return self._grad.hessian(self.u, self.points, i=idx[0], j=idx[1])


def deepxde_pde(problem: Any) -> Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    """``pde(x, y)`` for ``dde.data.PDE``/``TimePDE``: the problem's residual
    terms, unnormalised, in DeepXDE's calling convention."""

    def pde(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        return list(problem.residuals(DeepXDEDerivatives(x, y, problem.variables)).values())

    return pde


# ----------------------------------------------------------------------------- methods inside dde.Model
def data_loss(data: Any, loss: str = "MSE") -> Callable[[nn.Module], torch.Tensor]:
    """``loss_fn(net)``: the sum of a DeepXDE data object's training losses (PDE residuals and
    boundary/initial conditions, unweighted) of ``net`` on the data's training points — what
    ``Model.train`` minimises. For :func:`pinn_lora.attach`'s loss-dependent starts (ODELoRA's
    default ``init="gradient"``) when the problem is a DeepXDE one."""
    dde = deepxde()
    fn = dde.losses.get(loss)
    x, y, _ = data.train_next_batch()

    def loss_fn(net: nn.Module) -> torch.Tensor:
        like = next(iter(net.buffers()), None)
        like = like if like is not None else next(iter(net.parameters()))
        inputs = torch.as_tensor(x, dtype=like.dtype, device=like.device).requires_grad_()
        targets = None if y is None else torch.as_tensor(y, dtype=like.dtype, device=like.device)
        dde.grad.clear()
        losses = data.losses_train(targets, net(inputs), fn, inputs, SimpleNamespace(net=net))
        dde.grad.clear()
        return torch.stack([torch.as_tensor(v) for v in losses]).sum()

    return loss_fn


class DynamicsOptimizer(torch.optim.Optimizer):
    """A pinn_lora method's dynamics as a ``torch.optim.Optimizer``, for
    ``dde.Model.compile(optimizer=...)`` (or any loop that calls ``step(closure)``).

    ``step(closure)`` runs the method's update rule, calling the closure as often as it needs —
    once for Adam-based methods, once per Runge–Kutta stage for ODELoRA (DeepXDE's closure zeroes
    the gradients, evaluates the loss on the same batch and back-propagates, which is exactly the
    contract of :class:`~pinn_lora.methods.dynamics.Dynamics`) — then the method's schedule hook (chain
    merges, OD-LoRA refreshes). The learning-rate schedule follows ``total_steps`` (without it the
    schedule stays at its start). After each step: ``last_loss`` (at the step's start),
    ``last_grad_norm``, ``evaluations`` and ``steps``."""

    def __init__(self, method: Any, model: nn.Module, total_steps: int | None = None) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"method {method.name}: the model has no trainable tensors; attach the method first "
                             "(pinn_lora.attach)")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1 (or None)")
        super().__init__(params, {})
        self.method, self.model, self.total_steps = method, model, total_steps
        self.dynamics = method.dynamics(model)
        self.hook = method.step_hook()
        self.steps = self.evaluations = 0
        self.last_loss = self.last_grad_norm = math.nan

    @property
    def lr(self) -> float:
        return self.dynamics.lr

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        from pinn_lora.training.objective import gradient_norm as _norm

        if closure is None:
            raise RuntimeError(f"{self.method.name}'s dynamics evaluate the loss themselves: call step(closure) "
                               "with a closure that zeroes the gradients, computes the loss and calls backward()")
        params = [p for g in self.param_groups for p in g["params"]]
        first: dict[str, float] = {}

        def counted() -> torch.Tensor:
            with torch.enable_grad():
                loss = closure()
            self.evaluations += 1
            if not first:
                first["grad_norm"] = float(_norm(params))
            return loss.detach()

        if self.total_steps:
            self.dynamics.set_progress(self.steps / self.total_steps)
        loss = self.dynamics.step(counted)
        self.last_loss, self.last_grad_norm = float(loss), first.get("grad_norm", math.nan)
        if self.hook is not None:
            self.hook(self.steps, self.model, self.dynamics)
        self.steps += 1
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"dynamics": self.dynamics.state_dict(), "steps": self.steps, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        self.dynamics.load_state_dict(state["dynamics"])
        self.steps, self.evaluations = int(state["steps"]), int(state["evaluations"])


def optimizer(method: Any, model: nn.Module, total_steps: int | None = None, **options: Any) -> DynamicsOptimizer:
    """The dynamics of ``method`` (a name with ``options`` or a Method) for the attached ``model``
    as a ``torch.optim.Optimizer``; pass the same Method object you attached with, so its options
    (and chained methods' state) are the ones in use."""
    from pinn_lora.methods import Method, get_method

    meth = method if isinstance(method, Method) else get_method(method, **options)
    return DynamicsOptimizer(meth, model, total_steps)


# ----------------------------------------------------------------------------- monitors as callbacks
def _callback_base() -> type:
    return deepxde().callbacks.Callback


class MonitorCallback:
    """pinn_lora monitors (:mod:`pinn_lora.training.monitors`) as a DeepXDE callback:
    ``model.train(..., callbacks=[MonitorCallback([UpdateNorm(), Stability(), MetricsWriter(path)], problem)])``.

    Each training step becomes one record (``step``, ``phase``, ``loss``, ``grad_norm``, ``lr``,
    ``evaluations``, ``time``), read from a :class:`DynamicsOptimizer` when the model uses one, else
    from DeepXDE's ``train_state`` (then only at its display steps, when it computes the loss).
    With ``problem`` (a pinn_lora Problem with a reference) every ``eval_every`` steps adds
    ``rel_l2``. A non-finite loss stops training (``model.stop_training``) and sets ``status`` to
    ``"diverged"`` with a message naming the step. ``history`` holds the records afterwards."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "MonitorCallback":
        # DeepXDE's Callback base is only importable once deepxde is configured (pinn_lora.core.dde)
        if not issubclass(cls, _callback_base()):
            cls = type(cls.__name__, (cls, _callback_base()), {"__doc__": cls.__doc__})
        return object.__new__(cls)

    def __init__(self, monitors: Sequence[Any] = (), problem: Any = None, eval_every: int = 100) -> None:
        _callback_base().__init__(self)
        self.monitors, self.problem, self.eval_every = list(monitors), problem, int(eval_every)
        self.status, self.message = "completed", ""

    def on_train_begin(self) -> None:
        from pinn_lora.training.records import History

        self.history = History()
        self._start = time.perf_counter()
        for m in self.monitors:
            m.on_start(self.model.net, self.problem)

    def on_batch_end(self) -> None:
        state, opt = self.model.train_state, self.model.opt
        step = state.step - 1
        if isinstance(opt, DynamicsOptimizer):
            rec = {"step": step, "phase": "train", "loss": opt.last_loss, "grad_norm": opt.last_grad_norm,
                   "lr": opt.lr, "evaluations": opt.evaluations}
        elif state.loss_train is not None and state.step % self.model.display_every == 0:
            lr = opt.param_groups[0]["lr"] if opt is not None and opt.param_groups else math.nan
            rec = {"step": step, "phase": "train", "loss": float(sum(state.loss_train)), "lr": float(lr)}
        else:
            return
        rec["time"] = time.perf_counter() - self._start
        if self.problem is not None and (step + 1) % self.eval_every == 0:
            rec["rel_l2"] = self.problem.relative_l2(self.model.net)
        self.history.records.append(rec)
        self.history.steps = step + 1
        for m in self.monitors:
            m.on_record(rec)
        if not math.isfinite(rec["loss"]):
            self.status, self.message = "diverged", f"the loss became {rec['loss']} at step {step}"
            self.history.status, self.history.message = self.status, self.message
            self.model.stop_training = True

    def on_train_end(self) -> None:
        self.history.wall_time = time.perf_counter() - self._start
        for m in self.monitors:
            m.on_end(self.history)
