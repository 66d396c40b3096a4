"""The method base class and its option declarations.

Every option of a method is declared once, on its class, as an :class:`Option` (default, type, bound, help line)
in :attr:`Method.declared`. The rest is read from there: ``Method.defaults`` (option -> default), the checks of
what a user gives (:meth:`Option.check`, one-line :class:`MethodOptionError` messages), the method's node in the
command line's ``method`` group (:meth:`Method.config_node`), ``python -m pinn_lora.methods`` and the options
tables of ``docs/methods.md`` (:mod:`pinn_lora.methods.catalog`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from pinn_lora.core.recipe import Adaptation as RECIPE
from pinn_lora.methods.dynamics import Dynamics, GradientDynamics
from pinn_lora.methods.dynamics.base import SCHEDULES


class MethodOptionError(ValueError):
    """A method option is unknown or has a bad value."""


class LayerTargets:
    """The kind of a ``targets`` option: which linear layers get an adapter (``all``, ``hidden``, ``output``, or a
    list of layer indices)."""

    name = "targets"
    NAMED = ("all", "hidden", "output")
    allowed = "all, hidden, output or a list of layer indices"

    def convert(self, value: Any) -> Any:
        """``value`` as stored (a name, or a list of ints); MethodOptionError's text when it is neither."""
        ok = value in self.NAMED if isinstance(value, str) else (
            isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in value))
        if not ok:
            raise ValueError(f"must be one of {', '.join(self.NAMED)} or a list of layer indices "
                             "(negative ones count from the output layer, -1)")
        return value if isinstance(value, str) else [int(t) for t in value]


class AnyValue:
    """The kind of an option declared only by its default, when that default is not a bool, int, float or str
    (a third-party method's ``defaults``): any value is taken as it is."""

    name = "any"
    allowed = "any value"

    def convert(self, value: Any) -> Any:
        return value


TARGETS = LayerTargets()
ANY = AnyValue()
PLAIN_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}
TYPE_TEXT = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _num(x: float) -> str:
    """1e-08 -> 1e-8, 0.003 -> 0.003, 1.0 -> 1."""
    return f"{x:g}".replace("e-0", "e-").replace("e+0", "e+")


@dataclass(frozen=True)
class Option:
    """One option of a method: its ``default``, ``type`` (``bool``, ``int``, ``float``, ``str``, or a kind with
    ``name``, ``allowed`` and ``convert`` such as :data:`TARGETS`), a ``help`` line, and what it allows:
    ``minimum`` (value >= minimum), ``above`` (value > above), ``choices`` (one of them). ``from_problem``: the
    method's command-line node leaves it null, so the problem's recommendation applies (else ``default``)."""

    default: Any
    type: Any
    help: str
    minimum: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] | None = None
    from_problem: bool = False

    def __post_init__(self) -> None:
        if self.type not in PLAIN_TYPES and not hasattr(self.type, "convert"):
            raise TypeError(f"Option type {self.type!r}: use bool, int, float, str or a kind with convert()")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def type_name(self) -> str:
        return PLAIN_TYPES.get(self.type) or self.type.name

    def bound(self) -> str:
        """'> 0', '>= 1', '' (no bound)."""
        parts = ([f">= {_num(self.minimum)}"] if self.minimum is not None else []) + (
            [f"> {_num(self.above)}"] if self.above is not None else [])
        return ", ".join(parts)

    def allowed(self) -> str:
        """What a value may be, in words: 'an integer > 0', 'one of: euler, heun, …', 'true or false'."""
        if self.choices is not None:
            return "one of: " + ", ".join(map(str, self.choices))
        if self.type not in PLAIN_TYPES:
            return self.type.allowed
        return " ".join(filter(None, (TYPE_TEXT[self.type], self.bound())))

    def with_default(self, default: Any, **changes: Any) -> Option:
        """This declaration with another default (a subclass that keeps the option's meaning)."""
        return dataclasses.replace(self, default=default, **changes)

    def check(self, method: str, key: str, value: Any) -> Any:
        """``value`` converted to the option's type (an int given for a float …), or MethodOptionError naming the
        method, the option and what it allows."""
        bad = f"method {method}: option {key}={value!r}"
        kind = self.type
        if kind is bool:
            if not isinstance(value, bool):
                raise MethodOptionError(f"{bad} must be true or false")
        elif kind is int:  # numpy integers too (np.int64(4))
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise MethodOptionError(f"{bad} must be {self.allowed()}")
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise MethodOptionError(f"{bad} must be {self.allowed()}")
            value = float(value)
        elif kind is str:
            if self.choices is None and not isinstance(value, str):
                raise MethodOptionError(f"{bad} must be a string")
        else:
            try:
                value = kind.convert(value)
            except ValueError as exc:
                raise MethodOptionError(f"{bad} {exc}") from None
        if self.choices is not None and value not in self.choices:
            raise MethodOptionError(f"{bad} is not one of: {', '.join(map(str, self.choices))}")
        if self.minimum is not None and not value >= self.minimum:
            raise MethodOptionError(f"{bad} must be >= {_num(self.minimum)}")
        if self.above is not None and not value > self.above:
            raise MethodOptionError(f"{bad} must be > {_num(self.above)}")
        return value


def _kind_of(value: Any) -> Any:
    for kind in (bool, int, float, str):  # bool before int: True is an int
        if isinstance(value, kind):
            return kind
    return ANY


@dataclass
class AttachContext:
    """What a method may use when attaching: the target problem, a loss of any
    network on a fixed batch of collocation points, and a seed."""

    problem: Any
    loss_fn: Callable[[nn.Module], torch.Tensor]
    seed: int


class Method:
    """Base class. Subclasses set ``name``, ``summary`` and ``declared`` (option name -> :class:`Option`), usually
    as ``{**Parent.declared, "new": Option(...)}``. ``defaults``, ``choices``, ``positive`` and ``from_problem`` are
    derived from ``declared``; a subclass that sets only ``defaults`` (and perhaps ``positive``, ``choices``,
    ``from_problem``) gets declarations made from them: an inherited option keeps its declaration with the new
    default, a new one takes its default's type."""

    name: ClassVar[str]
    summary: ClassVar[str]
    declared: ClassVar[dict[str, Option]] = {
        "lr": Option(1e-3, float, "learning rate", above=0, from_problem=True),
        "schedule": Option("cosine", str, "learning-rate schedule over the run", choices=SCHEDULES),
        "final_ratio": Option(0.1, float, "cosine, exponential: the last step's learning rate / lr", above=0),
    }
    # derived from ``declared`` (kept for code that reads them)
    defaults: ClassVar[dict[str, Any]]
    choices: ClassVar[dict[str, tuple]]
    positive: ClassVar[tuple[str, ...]]
    from_problem: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "declared" not in own and any(k in own for k in ("defaults", "positive", "choices", "from_problem")):
            cls.declared = _declared_from_defaults(cls)
        _derive(cls)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.declared))
        if unknown:
            near = difflib.get_close_matches(unknown[0], list(self.declared), n=1)
            raise MethodOptionError(f"method {self.name}: unknown option {', '.join(unknown)}; "
                                    f"options are: {', '.join(sorted(self.declared))}"
                                    + (f" (did you mean {near[0]}?)" if near else ""))
        self.options = {k: self._check(k, copy.deepcopy(options[k] if k in options else opt.default))
                        for k, opt in self.declared.items()}

    @classmethod
    def option_order(cls) -> list[str]:
        """The declared options, the method's own first, then those of every method (lr, schedule, final_ratio)."""
        return [k for k in cls.declared if k not in Method.declared] + [k for k in cls.declared if k in Method.declared]

    @classmethod
    def config_node(cls, name: str | None = None) -> dict[str, Any]:
        """The method's node in Hydra's ``method`` group (``python -m pinn_lora.adapt method=<name>``), built from
        ``declared``: its own options first, then those of every method (lr, schedule, final_ratio); the
        ``from_problem`` ones null."""
        return {"name": name or cls.name, **{k: None if cls.declared[k].from_problem
                                             else copy.deepcopy(cls.declared[k].default) for k in cls.option_order()}}

    def _check(self, key: str, value: Any) -> Any:
        """The value of option ``key`` as the method keeps it (:meth:`Option.check`); a subclass may add checks
        that involve several options."""
        return self.declared[key].check(self.name, key, value)

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

    def step_for(self, model: nn.Module, solver: str = "method", mu: float = RECIPE.lm_mu,
                 adaptive: bool = RECIPE.lm_adaptive) -> Dynamics:
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


def _declared_from_defaults(cls: type[Method]) -> dict[str, Option]:
    """Declarations for a subclass that states ``defaults`` (and perhaps ``positive``, ``choices``,
    ``from_problem``) instead of ``declared``."""
    inherited = cls.declared
    defaults = cls.__dict__.get("defaults", cls.defaults)
    choices = cls.__dict__.get("choices", {})
    positive = cls.__dict__.get("positive", ())
    from_problem = cls.__dict__.get("from_problem")
    out = {}
    for key, value in defaults.items():
        opt = inherited[key].with_default(value) if key in inherited else Option(value, _kind_of(value), "")
        if key in choices:
            opt = dataclasses.replace(opt, choices=tuple(choices[key]))
        if key in positive and opt.above is None and opt.minimum is None:
            opt = dataclasses.replace(opt, above=0)
        if from_problem is not None:
            opt = dataclasses.replace(opt, from_problem=key in from_problem)
        out[key] = opt
    return out


def _derive(cls: type[Method]) -> None:
    """Check every declared default against its own declaration and derive the plain views of ``declared``."""
    for key, opt in cls.declared.items():
        if not isinstance(opt, Option):
            raise TypeError(f"method class {cls.__name__}: declared[{key!r}] must be an Option, got {opt!r}")
        try:
            opt.check(getattr(cls, "name", cls.__name__), key, copy.deepcopy(opt.default))
        except MethodOptionError as exc:
            raise TypeError(f"method class {cls.__name__}: the default of {key} is not allowed: {exc}") from None
    cls.defaults = {k: opt.default for k, opt in cls.declared.items()}
    cls.choices = {k: opt.choices for k, opt in cls.declared.items() if opt.choices is not None}
    cls.positive = tuple(k for k, opt in cls.declared.items() if opt.above == 0)
    cls.from_problem = tuple(k for k, opt in cls.declared.items() if opt.from_problem)


_derive(Method)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
