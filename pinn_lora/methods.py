"""Adaptation methods: each is a parameterisation (how ΔW is built, what
trains) × a dynamics (how the trainable tensors move) + schedule hooks.

Methods are registered by name in :data:`pinn_lora.registry.METHODS`; the
built-in ones through the ``pinn_lora.methods`` entry-point group like any
third-party method. Options are validated against each method's defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from pinn_lora.adapters import LoRALinear, adapter_layers, attach_adapters
from pinn_lora.adapters.base import resolve_targets
from pinn_lora.adapters.lora import layer_rank
from pinn_lora.dynamics import Dynamics, GradientDynamics
from pinn_lora.dynamics.base import SCHEDULES
from pinn_lora.dynamics.odelora import INITS, PRECONDITIONERS, ODELoRADynamics, balanced_factors
from pinn_lora.dynamics.runge_kutta import TABLEAUS


class MethodOptionError(ValueError):
    """A method option is unknown or has a bad value."""


@dataclass
class AttachContext:
    """What a method may use when attaching: the target problem, a loss of any
    network on a fixed batch of collocation points, and a seed."""

    problem: Any
    loss_fn: Callable[[nn.Module], torch.Tensor]
    seed: int


class Method:
    """Base class. Subclasses set ``name``, ``summary``, ``defaults`` (option →
    default value; its type is the option's type) and ``choices``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "schedule": "cosine", "final_ratio": 0.1}
    choices: ClassVar[dict[str, tuple]] = {"schedule": SCHEDULES}
    positive: ClassVar[tuple[str, ...]] = ("lr", "final_ratio")

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise MethodOptionError(f"method {self.name}: unknown option {', '.join(unknown)}; "
                                    f"options are: {', '.join(sorted(self.defaults))}")
        self.options = {k: self._check(k, options.get(k, v)) for k, v in self.defaults.items()}

    def _check(self, key: str, value: Any) -> Any:
        default = self.defaults[key]
        bad = f"method {self.name}: option {key}={value!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise MethodOptionError(f"{bad} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise MethodOptionError(f"{bad} must be an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MethodOptionError(f"{bad} must be a finite number")
            value = float(value)
        if key == "targets":
            named = ("all", "hidden", "output")
            ok = value in named if isinstance(value, str) else (
                isinstance(value, (list, tuple)) and len(value) > 0
                and all(isinstance(t, int) and not isinstance(t, bool) for t in value))
            if not ok:
                raise MethodOptionError(f"{bad} must be one of {', '.join(named)} or a list of layer indices")
            return value if isinstance(value, str) else [int(t) for t in value]
        if key in self.choices and value not in self.choices[key]:
            raise MethodOptionError(f"{bad} is not one of: {', '.join(map(str, self.choices[key]))}")
        if key in self.positive and not value > 0:
            raise MethodOptionError(f"{bad} must be > 0")
        if key == "damping" and value < 0:
            raise MethodOptionError(f"{bad} must be >= 0")
        return value

    def __getattr__(self, key: str) -> Any:
        opts = self.__dict__.get("options", {})
        if key in opts:
            return opts[key]
        raise AttributeError(key)

    # -- the three choices --------------------------------------------------------
    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        """Return the model to train (``net`` may be modified in place)."""
        raise NotImplementedError

    def dynamics(self, model: nn.Module) -> Dynamics:
        return GradientDynamics([p for p in model.parameters() if p.requires_grad], lr=self.lr,
                                schedule=self.schedule, final_ratio=self.final_ratio)

    def after_step(self, step: int, model: nn.Module, dynamics: Dynamics) -> None:
        """Schedule hook, called after every step (merges, restarts …)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    def label(self) -> str:
        """Name and the options that matter most, for one-line summaries."""
        keys = [k for k in ("rank", "lr", "scheme", "precondition") if k in self.options]
        return f"{self.name}(" + ", ".join(f"{k}={self.options[k]:g}" if isinstance(self.options[k], float)
                                           else f"{k}={self.options[k]}" for k in keys) + ")"


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Scratch(Method):
    name = "scratch"
    summary = "a freshly initialised network trained on the target (the reference adaptation must beat)"

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        net.reset_parameters(torch.Generator().manual_seed(ctx.seed + 7919))
        for p in net.parameters():
            p.requires_grad_(True)
        return net


class Full(Method):
    name = "full"
    summary = "full fine-tuning: every base weight and bias trainable"

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        for p in net.parameters():
            p.requires_grad_(True)
        return net


class LoRA(Method):
    name = "lora"
    summary = "LoRA (Hu et al. 2021): W0 + (alpha/r)·B·A, B = 0, A Kaiming-uniform, Adam"
    defaults = {**Method.defaults, "rank": 4, "alpha": 4.0, "targets": "all", "lr": 3e-3}
    positive = Method.positive + ("rank", "alpha")

    def check_rank(self, net: nn.Module) -> None:
        layers = [net.linears[i] for i in resolve_targets(len(net.linears), self.targets)]
        limit = max(min(lin.in_features, lin.out_features) for lin in layers)
        if self.rank > limit:
            raise MethodOptionError(f"method {self.name}: rank={self.rank} is larger than any adapted layer "
                                    f"allows (at most {limit}; each layer uses min(rank, out, in))")

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        gen = torch.Generator().manual_seed(ctx.seed)
        return attach_adapters(net, lambda i, lin: LoRALinear(lin, self.rank, self.alpha, generator=gen),
                               self.targets)


class ODELoRA(LoRA):
    name = "odelora"
    summary = ("ODELoRA (Gao & Tan 2026): balanced factors follow the projected full-FT gradient flow, "
               "integrated by a Runge–Kutta tableau (lr = time step h)")
    defaults = {**LoRA.defaults, "lr": 0.05, "schedule": "constant", "scheme": "euler", "damping": 1e-8,
                "rebalance": True, "init": "gradient", "init_scale": 0.1, "precondition": "none"}
    choices = {**LoRA.choices, "scheme": tuple(TABLEAUS), "init": INITS, "precondition": PRECONDITIONERS}
    positive = LoRA.positive + ("init_scale",)

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        idx = resolve_targets(len(net.linears), self.targets)
        grads = dict(zip(idx, weight_gradients(net, idx, ctx.loss_fn))) if self.init == "gradient" else {}
        gen = torch.Generator().manual_seed(ctx.seed)

        def make(i: int, lin: nn.Linear) -> LoRALinear:
            scale = self.alpha / self.rank
            factors = balanced_factors(self.init, lin.weight.detach(), grads.get(i), layer_rank(self.rank, lin),
                                       scale, self.init_scale, gen)
            return LoRALinear(lin, self.rank, self.alpha, factors=factors)

        return attach_adapters(net, make, self.targets)

    def dynamics(self, model: nn.Module) -> Dynamics:
        layers = [lay for _, lay in adapter_layers(model)]
        return ODELoRADynamics(layers, lr=self.lr, scheme=self.scheme, damping=self.damping,
                               rebalance=self.rebalance, schedule=self.schedule, final_ratio=self.final_ratio,
                               precondition=self.precondition)


def weight_gradients(net: nn.Module, indices: list[int], loss_fn: Callable[[nn.Module], torch.Tensor]
                     ) -> list[torch.Tensor]:
    """∂L/∂W of the linear layers ``indices`` at the current network."""
    ws = [net.linears[i].weight for i in indices]
    flags = [w.requires_grad for w in ws]
    for w in ws:
        w.requires_grad_(True)
    try:
        grads = torch.autograd.grad(loss_fn(net), ws)
    finally:
        for w, f in zip(ws, flags):
            w.requires_grad_(f)
    return [g.detach() for g in grads]


def get_method(name: str, **options: Any) -> Method:
    """The method ``name`` with ``options`` (validated against its defaults)."""
    from pinn_lora.registry import METHODS

    return METHODS.get(name)(**options)
