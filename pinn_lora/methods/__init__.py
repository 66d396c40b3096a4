"""Adaptation methods: each is a parameterisation (how ΔW is built, what
trains) × a dynamics (how the trainable tensors move) + schedule hooks.

Methods are registered by name in :data:`pinn_lora.core.registry.METHODS`; the
built-in ones through the ``pinn_lora.methods`` entry-point group like any
third-party method. Options are validated against each method's defaults.
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from pinn_lora.model.adapters import LoRALinear, adapter_layers, attach_adapters
from pinn_lora.model.adapters.base import AdapterLinear, resolve_targets
from pinn_lora.model.adapters.dora import DoRALinear
from pinn_lora.model.adapters.lora import layer_rank
from pinn_lora.model.adapters.odlora import ODLoRALinear
from pinn_lora.model.adapters.selector import PaCALinear, SelectorLinear, n_windows, selector_rank, window
from pinn_lora.methods.dynamics import Dynamics, GradientDynamics
from pinn_lora.methods.dynamics.base import SCHEDULES
from pinn_lora.methods.dynamics.odelora import (
    IMPLICIT,
    INITS,
    PRECONDITIONERS,
    ODELoRADynamics,
    balanced_factors,
    implicit_dynamics,
)
from pinn_lora.methods.dynamics.riemannian import RiemannianDynamics
from pinn_lora.methods.dynamics.runge_kutta import TABLEAUS


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
    # options the method's config node leaves null: the problem's recommendation (its adapt.method), else the default
    from_problem: ClassVar[tuple[str, ...]] = ("lr",)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise MethodOptionError(f"method {self.name}: unknown option {', '.join(unknown)}; "
                                    f"options are: {', '.join(sorted(self.defaults))}")
        self.options = {k: self._check(k, options.get(k, v)) for k, v in self.defaults.items()}

    @classmethod
    def config_node(cls, name: str | None = None) -> dict[str, Any]:
        """The method's node in Hydra's ``method`` group (``python -m pinn_lora.adapt method=<name>``), built from
        ``defaults``: its own options first, then those of every method (lr, schedule, final_ratio); the
        ``from_problem`` ones null."""
        keys = [k for k in cls.defaults if k not in Method.defaults] + [k for k in cls.defaults if k in Method.defaults]
        return {"name": name or cls.name,
                **{k: None if k in cls.from_problem else copy.deepcopy(cls.defaults[k]) for k in keys}}

    def _check(self, key: str, value: Any) -> Any:
        default = self.defaults[key]
        bad = f"method {self.name}: option {key}={value!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise MethodOptionError(f"{bad} must be true or false")
        elif isinstance(default, int):  # numpy integers too (np.int64(4))
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise MethodOptionError(f"{bad} must be an integer")
            value = int(value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise MethodOptionError(f"{bad} must be a finite number")
            value = float(value)
        if key == "targets":
            named = ("all", "hidden", "output")
            ok = value in named if isinstance(value, str) else (
                isinstance(value, (list, tuple)) and len(value) > 0
                and all(isinstance(t, int) and not isinstance(t, bool) for t in value))
            if not ok:
                raise MethodOptionError(f"{bad} must be one of {', '.join(named)} or a list of layer indices "
                                        "(negative ones count from the output layer, -1)")
            return value if isinstance(value, str) else [int(t) for t in value]
        if key in self.choices and value not in self.choices[key]:
            raise MethodOptionError(f"{bad} is not one of: {', '.join(map(str, self.choices[key]))}")
        if key in self.positive and not value > 0:
            raise MethodOptionError(f"{bad} must be > 0")
        if key in ("damping", "metric_floor") and value < 0:
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

    # -- the second-order step (solver=lm): one mechanism for every method
    def second_order(self, model: nn.Module, mu: float, adaptive: bool = True) -> Dynamics:
        """Levenberg–Marquardt on the method's trainable parameters (a method with a metric of
        its own, like ODELoRA, passes it)."""
        from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt

        return LevenbergMarquardt([p for p in model.parameters() if p.requires_grad], mu=mu, adaptive=adaptive)

    def step_for(self, model: nn.Module, solver: str = "method", mu: float = 1.0, adaptive: bool = True) -> Dynamics:
        """The step a run takes, decided once: ``solver="lm"``: :meth:`second_order` (starting damping
        ``mu``), else the method's own :meth:`dynamics`."""
        return self.second_order(model, mu, adaptive) if solver == "lm" else self.dynamics(model)

    lm_by_default: ClassVar[bool] = True  # the problem's solver=lm recommendation applies to this method

    def solver_for(self, requested: str, explicit: bool) -> str:
        """The solver this method runs with when ``requested`` (``explicit``: the user asked for it,
        else it is the problem's recommendation): a method that trains every weight takes first-order
        steps unless solver=lm is asked for (its 12 737 parameters then take the step's kernel form,
        :mod:`pinn_lora.methods.dynamics.gauss_newton`; the recommendations were measured for adapters)."""
        if requested == "lm" and not self.lm_by_default and not explicit:
            return "method"
        return requested

    # True: ``after_step`` changes tensors only in place (``+=``, ``copy_``, ``zero_``, optimiser moments zeroed)
    # and never the forward's structure, so the static step (and its CUDA graph) stays valid across it; the
    # hook then runs between graph replays
    hook_in_place: ClassVar[bool] = False

    def step_hook(self) -> Callable[[int, nn.Module, Dynamics], None] | None:
        """``after_step`` when this method overrides it, else None (no hook: the step can be a
        static, graph-captured one). The hook's ``in_place`` is :attr:`hook_in_place`."""
        if type(self).after_step is Method.after_step:
            return None

        def hook(step: int, model: nn.Module, dynamics: Dynamics) -> None:
            self.after_step(step, model, dynamics)

        hook.in_place = self.hook_in_place  # type: ignore[attr-defined]
        return hook

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    # -- resumable runs: what changes while training, besides the model and the dynamics
    state_keys: ClassVar[tuple[str, ...]] = ()  # plain attributes to keep (e.g. c3la's visited windows)

    def state_dict(self) -> dict[str, Any]:
        """The method's own running state: its random generators' states and ``state_keys``."""
        gens = {k: v.get_state() for k, v in vars(self).items() if isinstance(v, torch.Generator)}
        return {"generators": gens, **{k: getattr(self, k) for k in self.state_keys if hasattr(self, k)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, st in state.get("generators", {}).items():
            getattr(self, k).set_state(st)
        for k in self.state_keys:
            if k in state:
                setattr(self, k, state[k])

    def label(self, solver: str = "method") -> str:
        """Name and the options that matter most, for one-line summaries; under ``solver="lm"`` the
        step size and preconditioner of the method's own dynamics are not used, so not shown."""
        shown = ("rank",) if solver == "lm" else ("rank", "lr", "scheme", "precondition")
        keys = [k for k in shown if k in self.options]
        return f"{self.name}(" + ", ".join(f"{k}={self.options[k]:g}" if isinstance(self.options[k], float)
                                           else f"{k}={self.options[k]}" for k in keys) + ")"


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Scratch(Method):
    name = "scratch"
    summary = "a freshly initialised network trained on the target (the reference adaptation must beat)"
    lm_by_default = False

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        net.reset_parameters(torch.Generator().manual_seed(ctx.seed + 7919))
        for p in net.parameters():
            p.requires_grad_(True)
        return net


class Full(Method):
    name = "full"
    summary = "full fine-tuning: every base weight and bias trainable"
    lm_by_default = False

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

    def scale(self) -> float:
        """s in ΔW = s·B·A: α/r (LoRA's)."""
        return self.alpha / self.rank

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        return LoRALinear(lin, self.rank, self.alpha, generator=gen, scale=self.scale())

    def second_order(self, model: nn.Module, mu: float, adaptive: bool = True) -> Dynamics:
        """Where every trainable tensor is a factor of a plain LoRA layer (B and A both trained),
        the Levenberg–Marquardt damping is the weight-space metric ‖s(δB·A + B·δA)‖²_F — how far
        the step moves W, not the factor coordinates — and the factors are rebalanced after each
        step (BᵀB = AAᵀ, W unchanged). Marquardt's diagonal scaling leaves the gauge directions
        (BX, −XA) almost undamped, and the step took the Burgers target error above the base's on
        the way (docs/adaptation.md, "LoRA under solver=lm"). Other layouts: the plain step."""
        layers = [lay for _, lay in adapter_layers(model)]
        if layers and all(type(lay) is LoRALinear for lay in layers):
            factors = {id(t) for lay in layers for t in lay.factors()}
            if factors == {id(p) for p in model.parameters() if p.requires_grad}:  # B and A trained, nothing else
                return implicit_dynamics(layers, mu=mu, adaptive=adaptive, rebalance_factors=True)
        return super().second_order(model, mu, adaptive)

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        return attach_adapters(net, lambda i, lin: self.make_layer(lin, self.generator), self.targets)


class RSLoRA(LoRA):
    name = "rslora"
    summary = "rank-stabilised LoRA (Kalajdzievski 2023, arXiv 2312.03732): scale alpha/sqrt(r) instead of alpha/r"

    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank)


class LoRAPlus(LoRA):
    name = "loraplus"
    summary = "LoRA+ (Hayou, Ghosh & Yu 2024, arXiv 2402.12354): learning rate of B = lr_ratio x that of A"
    defaults = {**LoRA.defaults, "lr_ratio": 16.0}
    positive = LoRA.positive + ("lr_ratio",)

    def dynamics(self, model: nn.Module) -> Dynamics:
        groups = {"B": [], "other": []}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups["B" if name.endswith("lora_B") else "other"].append(p)
        return GradientDynamics([{"params": groups["B"], "lr_mult": self.lr_ratio}, {"params": groups["other"]}],
                                lr=self.lr, schedule=self.schedule, final_ratio=self.final_ratio)


class PiSSA(LoRA):
    name = "pissa"
    summary = ("PiSSA (Meng, Wang & Zhang 2024, arXiv 2404.02948): B, A from W0's top-r SVD "
               "(s·B·A = U_r S_r V_rᵀ), the residual kept frozen, Adam")

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        r = layer_rank(self.rank, lin)
        factors = balanced_factors("pissa", lin.weight.detach(), None, r, self.scale(), 1.0, gen)
        return LoRALinear(lin, self.rank, self.alpha, factors=factors, scale=self.scale())


class DoRA(LoRA):
    name = "dora"
    summary = ("DoRA (Liu et al. 2024, arXiv 2402.09353): W = m * (W0 + sBA)/||W0 + sBA|| per output unit, "
               "trainable magnitude m and LoRA direction")
    defaults = {**LoRA.defaults, "detach_norm": False}

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        return DoRALinear(lin, self.rank, self.alpha, generator=gen, scale=self.scale(),
                          detach_norm=self.detach_norm)


class AsymLoRA(LoRA):
    name = "asymlora"
    summary = ("Asym-LoRA (Zhu et al. 2024, arXiv 2402.16842): A frozen at its random (Kaiming-uniform) init, "
               "only B trained")

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        return LoRALinear(lin, self.rank, self.alpha, generator=gen, scale=self.scale(), train_a=False)


class Chained:
    """Mixin of the chained methods: every ``chain_every`` steps each adapted layer
    takes its chain step (merge into W0 and restart), then the optimiser's
    moments are reset. The network's function is unchanged by a chain step."""

    hook_in_place = True  # merges and restarts write W0, B, A and the selector's columns in place

    def chain_step(self, index: int, layer: AdapterLinear) -> None:
        layer.restart(self.generator)

    def after_step(self, step: int, model: nn.Module, dynamics: Dynamics) -> None:
        if (step + 1) % self.chain_every == 0:
            for i, lay in adapter_layers(model):
                self.chain_step(i, lay)
            dynamics.reset_state()


CHAIN_DEFAULTS = {"chain_every": 100}


class CoLA(Chained, LoRA):
    name = "cola"
    summary = ("CoLA, chain of LoRA (Xia, Qin & Hazan 2024, arXiv 2401.04151): every chain_every steps merge "
               "s·B·A into W0, restart from B = 0 and a fresh A, reset Adam")
    defaults = {**LoRA.defaults, **CHAIN_DEFAULTS}
    positive = LoRA.positive + ("chain_every",)


class RAC(Chained, AsymLoRA):
    name = "rac"
    summary = ("RAC, chained Asym-LoRA (Cadenhead et al. 2026, arXiv 2606.13767): Asym-LoRA that every "
               "chain_every steps merges, draws a new frozen A, zeroes B and resets Adam")
    defaults = {**LoRA.defaults, **CHAIN_DEFAULTS}
    positive = LoRA.positive + ("chain_every",)


class CLA(LoRA):
    name = "cla"
    summary = ("cLA (Cadenhead et al. 2026, arXiv 2606.13767): A a fixed 0/1 selector of the first r input "
               "columns (applied as a gather), only B trained")

    def check_rank(self, net: nn.Module) -> None:
        pass  # a selector is clipped to each layer's input width; any rank >= 1 is valid

    def first_columns(self, index: int, lin: nn.Linear) -> torch.Tensor:
        return torch.arange(selector_rank(self.rank, lin))

    def make_layer_at(self, index: int, lin: nn.Linear) -> AdapterLinear:
        return SelectorLinear(lin, self.rank, self.scale(), self.first_columns(index, lin))

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.generator = torch.Generator().manual_seed(ctx.seed)
        return attach_adapters(net, self.make_layer_at, self.targets)


class RandomCLA(CLA):
    name = "rcla"
    summary = "random cLA (Cadenhead et al. 2026): the r selected input columns are a random subset drawn once"

    def first_columns(self, index: int, lin: nn.Linear) -> torch.Tensor:
        r = selector_rank(self.rank, lin)
        return torch.randperm(lin.in_features, generator=self.generator)[:r].sort().values


class C3LA(Chained, CLA):
    name = "c3la"
    summary = ("c³LA, chained cLA (Cadenhead et al. 2026): every chain_every steps merge s·B into W0, shift the "
               "selector window by r columns (wrapping), zero B, reset Adam")
    defaults = {**LoRA.defaults, **CHAIN_DEFAULTS}
    positive = LoRA.positive + ("chain_every",)

    state_keys = ("visits",)

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.visits: dict[int, int] = {}  # layer index -> chain steps taken
        return super().attach(net, ctx)

    def window_index(self, index: int, visit: int, n_win: int) -> int:
        """The window a layer uses after ``visit`` chain steps: shifted by r columns per
        visit (``window`` wraps the columns around mod n)."""
        return visit

    def first_columns(self, index: int, lin: nn.Linear) -> torch.Tensor:
        r = selector_rank(self.rank, lin)
        return window(self.window_index(index, 0, n_windows(r, lin.in_features)), r, lin.in_features)

    def chain_step(self, index: int, layer: AdapterLinear) -> None:
        visit = self.visits[index] = self.visits.get(index, 0) + 1
        n_win = n_windows(layer.rank, layer.in_features)
        layer.move_to(window(self.window_index(index, visit, n_win), layer.rank, layer.in_features))


class RandomC3LA(C3LA):
    name = "rc3la"
    summary = ("random c³LA (Cadenhead et al. 2026): c³LA visiting the windows in a random order without "
               "replacement (a new order each cycle)")

    state_keys = ("visits", "orders")

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.orders: dict[int, list[int]] = {}  # layer index -> window order of each cycle so far
        return super().attach(net, ctx)

    def window_index(self, index: int, visit: int, n_win: int) -> int:
        order = self.orders.setdefault(index, [])
        while len(order) <= visit:
            order.extend(torch.randperm(n_win, generator=self.generator).tolist())
        return order[visit]


class PaCA(RandomCLA):
    name = "paca"
    summary = ("PaCA, partial connection adaptation (Woo et al. 2025, arXiv 2503.01905): a fixed random set "
               "of r input columns of W0 trained directly")
    defaults = {k: v for k, v in LoRA.defaults.items() if k != "alpha"}
    positive = tuple(k for k in LoRA.positive if k != "alpha")

    def make_layer_at(self, index: int, lin: nn.Linear) -> AdapterLinear:
        return PaCALinear(lin, self.rank, self.first_columns(index, lin))  # random columns, drawn as rcla's


class ODELoRA(LoRA):
    name = "odelora"
    summary = ("ODELoRA (Gao & Tan 2026): balanced factors follow the projected full-FT gradient flow, "
               "integrated by a Runge–Kutta tableau (lr = time step h; bs23/dopri5 adapt h to rtol/atol)")
    defaults = {**LoRA.defaults, "lr": 0.05, "schedule": "constant", "scheme": "auto", "damping": 1e-8,
                "rebalance": True, "init": "gradient", "init_scale": 0.1, "precondition": "none", "metric_floor": 0.1,
                "rtol": 1e-3, "atol": 1e-6, "h_max_ratio": 10.0}
    choices = {**LoRA.choices, "scheme": (*TABLEAUS, *IMPLICIT), "init": INITS, "precondition": PRECONDITIONERS}
    positive = LoRA.positive + ("init_scale", "rtol", "atol", "h_max_ratio")
    from_problem = ("lr", "precondition")

    def solver_for(self, requested: str, explicit: bool) -> str:
        """``scheme=implicit`` runs as solver=lm; an explicit tableau as solver=method (asking for
        both is refused); ``auto`` follows the solver."""
        if self.scheme == "implicit":
            return "lm"
        if self.scheme != "auto" and requested == "lm":
            if explicit:
                raise MethodOptionError(f"method odelora: scheme={self.scheme} is an explicit scheme, run by "
                                        "solver=method; solver=lm takes ODELoRA's implicit step (scheme=implicit "
                                        "or auto)")
            return "method"
        return super().solver_for(requested, explicit)

    def step_for(self, model: nn.Module, solver: str = "method", mu: float = 1.0, adaptive: bool = True) -> Dynamics:
        """``scheme=implicit``: its own implicit step with h = lr (:meth:`dynamics`), whatever the solver."""
        if self.scheme == "implicit":
            return self.dynamics(model)
        return super().step_for(model, solver, mu, adaptive)

    def second_order(self, model: nn.Module, mu: float, adaptive: bool = True) -> Dynamics:
        """ODELoRA's implicit scheme (:func:`pinn_lora.methods.dynamics.odelora.implicit_dynamics`)."""
        return implicit_dynamics([lay for _, lay in adapter_layers(model)], mu=mu, adaptive=adaptive,
                                 rebalance_factors=self.rebalance)

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
        if self.scheme == "implicit":
            return self.second_order(model, mu=1.0 / self.lr)
        return ODELoRADynamics(layers, lr=self.lr, scheme="euler" if self.scheme == "auto" else self.scheme,
                               damping=self.damping,
                               rebalance=self.rebalance, schedule=self.schedule, final_ratio=self.final_ratio,
                               precondition=self.precondition, metric_floor=self.metric_floor,
                               rtol=self.rtol, atol=self.atol,
                               h_max=self.h_max_ratio * self.lr)


class Riemannian(LoRA):
    """LoRA's parameterisation and start (B = 0, A Kaiming-uniform) trained with the r×r
    Riemannian (ScaledGD) preconditioner of Zhang & Pilanci 2024, :mod:`pinn_lora.methods.dynamics.riemannian`."""

    name = "riemannian"
    summary = ("Riemannian-preconditioned LoRA (Zhang & Pilanci 2024, ScaledGD): gradients g_B (AAᵀ+λI)⁻¹ "
               "and (BᵀB+λI)⁻¹ g_A, then Adam or SGD")
    defaults = {**LoRA.defaults, "optimizer": "adam", "damping": 1e-6}
    choices = {**LoRA.choices, "optimizer": tuple(RiemannianDynamics.OPTIMIZERS)}
    positive = LoRA.positive + ("damping",)

    def dynamics(self, model: nn.Module) -> Dynamics:
        layers = [lay for _, lay in adapter_layers(model)]
        return RiemannianDynamics(layers, lr=self.lr, optimizer=self.optimizer, damping=self.damping,
                                  schedule=self.schedule, final_ratio=self.final_ratio)


class ODLoRA(LoRA):
    """OD-LoRA (ICLR 2026 submission 3878; same idea as SDS-LoRA, arXiv 2606.16454).

    ``warmup`` steps of plain LoRA, then a function-preserving split into
    ΔW = s·(Q_B A + B Q_Aᵀ) with orthonormal bases, whose factor gradients are
    the projections s·Q_Bᵀ G and s·G Q_A (see :mod:`pinn_lora.model.adapters.odlora`).
    The bases are refreshed after ``refresh_every`` more steps, then at intervals
    growing by ``refresh_growth`` (a schedule that gets sparser over training;
    ``refresh_every: 0`` never refreshes). Trained with Adam (the base dynamics).

    The optimiser moments are reset after the split and after every refresh:
    both re-express A and B in new coordinates (rotated, rescaled bases), so
    the old first/second moments would point in meaningless directions.

    ``warmup: 0`` splits at attach time. B = 0 then, so the core is zero:
    Q_A comes from A's (Kaiming) row space, Q_B is a random orthonormal basis
    (seeded), and A = B = 0; training starts from the projections directly
    (they do not depend on the factors, so the zero start is not a saddle).
    """

    name = "odlora"
    summary = ("OD-LoRA (ICLR 2026 sub. 3878 / SDS-LoRA): LoRA warm-up, then W0 + s(Q_B A + B Q_A^T) with "
               "orthonormal bases refreshed on a growing schedule, Adam")
    defaults = {**LoRA.defaults, "warmup": 10, "refresh_every": 100, "refresh_growth": 2.0}
    hook_in_place = True  # the split and refreshes write the bases, factors and W0 in place

    def _check(self, key: str, value: Any) -> Any:
        value = super()._check(key, value)
        if key in ("warmup", "refresh_every") and value < 0:
            raise MethodOptionError(f"method {self.name}: option {key}={value!r} must be >= 0")
        if key == "refresh_growth" and not value >= 1:
            raise MethodOptionError(f"method {self.name}: option {key}={value!r} must be >= 1")
        return value

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        gen = torch.Generator().manual_seed(ctx.seed)
        model = attach_adapters(net, lambda i, lin: ODLoRALinear(lin, self.rank, self.alpha, generator=gen),
                                self.targets)
        if self.warmup == 0:
            self._split(model)
        return model

    def refresh_steps(self, until: int) -> list[int]:
        """Step counts (steps completed) ≤ ``until`` after which the bases are refreshed:
        warmup + refresh_every, then intervals refresh_every·growth^k (rounded, ≥ 1)."""
        out, t, k = [], self.warmup, 0
        if self.refresh_every == 0:
            return out
        while True:
            gap = self.refresh_every * self.refresh_growth**k
            if not gap < 2**62:  # grown past any run length
                return out
            t += max(1, round(gap))
            if t > until:
                return out
            out.append(t)
            k += 1

    def _is_refresh(self, t: int) -> bool:
        cache = self.__dict__.setdefault("_refresh_cache", (0, frozenset()))
        if t > cache[0]:  # extend the cached schedule geometrically (O(log) work per run)
            until = max(t, 2 * cache[0])
            cache = (until, frozenset(self.refresh_steps(until)))
            self.__dict__["_refresh_cache"] = cache
        return t in cache[1]

    @staticmethod
    def _split(model: nn.Module) -> None:
        for _, lay in adapter_layers(model):
            if not lay.split_done:
                lay.split()

    def after_step(self, step: int, model: nn.Module, dynamics: Dynamics) -> None:
        t = step + 1  # steps completed
        if t == self.warmup:
            self._split(model)
            dynamics.reset_state()
        elif t > self.warmup and self._is_refresh(t):
            self._split(model)  # no-op unless a layer missed its split
            for _, lay in adapter_layers(model):
                lay.refresh()
            dynamics.reset_state()


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
    from pinn_lora.core.registry import METHODS

    return METHODS.get(name)(**options)


def method_table() -> str:
    """Every registered method with its one-line summary and options (``python -m pinn_lora.methods``)."""
    from pinn_lora.core.registry import METHODS

    lines = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        opts = ", ".join(f"{k}={v}" for k, v in cls.defaults.items())
        lines += [f"{name:<11} {cls.summary}", f"{'':<11} options: {opts}"]
    return "\n".join(lines)

