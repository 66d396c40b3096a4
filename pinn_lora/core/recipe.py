"""The recipe: every setting an adaptation or a pretraining runs with, declared once, here.

A :class:`Recipe` holds an :class:`Adaptation` (the default second-order path: solver, sampling, steps, points,
continuation, damping …, and :class:`FirstOrder`, what ``solver=method`` replaces them with) and a
:class:`Pretraining` (network, optimiser, steps …). Each field carries its default, type, bound and help text
(:func:`setting`); the command line's schema (:mod:`pinn_lora.runs.settings`), :func:`pinn_lora.adapt_to`,
:func:`pinn_lora.adapt_many`, the coefficient-range builds, ``python -m pinn_lora.pretrain``, the summary's
``settings`` and the table in ``docs/cli.md`` (:func:`markdown_table`) all read them from here.

A family states only what differs from the package's recipe, as a plain dict on its class (``recipe = {"sampling":
"uniform", "pretrain": {"steps": 12000}}``; :meth:`Recipe.for_family`), so a plugin family gets exactly the
package's recipe unless it says otherwise. The precedence of one run: the package's recipe ← the family's
overrides ← what the caller gives (a keyword, a ``key=value``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

SOLVERS = ("lm", "method")
SAMPLINGS = ("uniform", "rad", "rar_d")


class RecipeError(ValueError):
    """A recipe override names an unknown setting or gives a value the setting does not allow."""


def setting(default: Any, help: str, *, minimum: float | None = None, above: float | None = None,
            choices: tuple[Any, ...] | None = None, kind: type | tuple[type, ...] | None = None,
            loop: bool = False) -> Any:
    """A recipe field: its default, help line, and what it allows (``minimum``: >=, ``above``: >, ``choices``,
    ``kind``: the Python type(s), by default the default's). ``loop``: a training-loop option
    (:class:`pinn_lora.training.trainer.TrainConfig` has a field of the same name)."""
    meta = {"help": help, "minimum": minimum, "above": above, "choices": choices,
            "kind": kind or type(default), "loop": loop}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


NUMBER = (int, float)
METHOD_OPTIONS = {"default": {"lr": 3.0e-3}, "scratch": {"lr": 1.0e-3}, "full": {"lr": 1.0e-3},
                  "odelora": {"lr": 1.0e-3, "precondition": "rmsprop"}}


@dataclass(frozen=True)
class FirstOrder:
    """What ``solver=method`` (the method's own first-order dynamics: Adam, ODELoRA's Runge–Kutta …) runs with,
    in place of the second-order path's values of the same names."""

    sampling: str = setting("uniform", "collocation points: uniform | rad | rar_d", choices=SAMPLINGS)
    continuation: Any = setting("off", "auto | off | N intermediate coefficients", kind=(str, int))
    steps: int = setting(300, "the method's steps at the target", minimum=0)
    n_points: int = setting(4000, "collocation points per step", minimum=1)
    resample_every: int = setting(100, "steps between new collocation points", minimum=1)
    lbfgs_steps: int = setting(800, "L-BFGS iterations after the method's steps (the same parameters)", minimum=0)


@dataclass(frozen=True)
class Adaptation:
    """An adaptation's settings: the package's default path is Levenberg–Marquardt (ODELoRA: its implicit scheme)
    on residual-adaptive points, through intermediate coefficients (docs/adaptation.md)."""

    solver: str = setting("lm", "lm: Levenberg-Marquardt on the trainable parameters (ODELoRA: its implicit "
                                "scheme) | method: the method's own first-order dynamics", choices=SOLVERS)
    sampling: str = setting("rad", "collocation points: uniform | rad (residual-based adaptive distribution) | "
                                   "rar_d (residual-based refinement), Wu et al. 2023", choices=SAMPLINGS)
    steps: int = setting(20, "steps at the target (continuation stages come on top)", minimum=0)
    n_points: int = setting(4000, "collocation points per step", minimum=1)
    resample_every: int = setting(5, "steps between new collocation points", minimum=1)
    lbfgs_steps: int = setting(0, "L-BFGS iterations after the method's steps (the same parameters)", minimum=0)
    continuation: Any = setting("auto", "auto (as many intermediate coefficients as the family's stage width asks "
                                        "for) | off | N", kind=(str, int))
    lm_mu: float = setting(0.01, "lm: the starting damping mu (the implicit Euler step h = 1/mu); a nearly "
                                 "Gauss-Newton first step", above=0, kind=NUMBER, loop=True)
    lm_adaptive: bool = setting(True, "lm: adapt mu by the trust-region rule (false: a fixed step h = 1/mu)",
                                loop=True)
    rad_k: float = setting(1.0, "rad, rar_d: density ~ |r|^k / mean(|r|^k) + c", minimum=0, kind=NUMBER, loop=True)
    rad_c: float = setting(1.0, "rad: the density's constant c", minimum=0, kind=NUMBER, loop=True)
    rad_pool: int = setting(8, "rad, rar_d: candidates per drawn point", minimum=1, loop=True)
    rar_add: int = setting(0, "rar_d: points added at each draw (0: n_points // 10)", minimum=0, loop=True)
    stage_steps: int = setting(3, "continuation: the most steps per intermediate stage", minimum=1, loop=True)
    stage_tol: float = setting(1e-3, "continuation: a stage ends once a step starts at a loss <= this", minimum=0,
                               kind=NUMBER, loop=True)
    first_order: FirstOrder = field(default_factory=FirstOrder, metadata={
        "help": "what solver=method replaces the values above with", "kind": FirstOrder})
    method: dict = setting(METHOD_OPTIONS, "recommended method options where the method's config leaves them "
                                           "null: 'default' for every method, then by method name")

    def for_solver(self, solver: str) -> dict[str, Any]:
        """The flat settings of the path ``solver`` takes: the fields above, with :class:`FirstOrder`'s values
        for ``solver=method``."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("first_order", "method")}
        if solver == "method":
            flat.update(dataclasses.asdict(self.first_order))
        flat["solver"] = solver
        return flat

    def method_options(self, method: str, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The options recommended to ``method``: ``method['default']`` (only the keys in ``known``, the method's
        declared options, when given), updated by ``method[method]``."""
        default = dict(self.method.get("default") or {})
        if known is not None:
            default = {k: v for k, v in default.items() if k in known}
        return {**default, **(self.method.get(method) or {})}


@dataclass(frozen=True)
class Pretraining:
    """A base model's training: Adam with a cosine schedule, then L-BFGS (``solver=method``), or
    Levenberg–Marquardt on every weight in its kernel form (``solver=lm``)."""

    layers: Any = setting(None, "layer widths, e.g. [2, 64, 64, 1] (null: the family's network)", kind=(list, type(None)))
    activation: Any = setting(None, "tanh | sin | ... (null: the family's network)", kind=(str, type(None)))
    lr: float = setting(2.0e-3, "Adam's learning rate", above=0, kind=NUMBER)
    schedule: str = setting("cosine", "the learning rate's schedule", choices=("cosine", "constant", "exponential"))
    final_ratio: float = setting(0.01, "cosine: the last learning rate / the first", above=0, kind=NUMBER)
    steps: int = setting(15000, "Adam (or LM) steps", minimum=0)
    n_points: int = setting(3000, "collocation points per step", minimum=1)
    resample_every: int = setting(100, "steps between new collocation points", minimum=1)
    causal_eps: float = setting(0.0, "causal weighting in time (Wang, Sankaran & Perdikaris 2022); 0: off",
                                minimum=0, kind=NUMBER)
    lbfgs_steps: int = setting(3000, "L-BFGS iterations after the steps", minimum=0)
    lbfgs_points: int = setting(8000, "L-BFGS's collocation points (0: n_points)", minimum=0)
    eval_every: int = setting(500, "steps between evaluations against the reference", minimum=1)
    solver: str = setting("method", "method: Adam then L-BFGS | lm: Levenberg-Marquardt on every weight",
                          choices=SOLVERS)
    sampling: str = setting("uniform", "collocation points: uniform | rad | rar_d", choices=SAMPLINGS)
    lm_mu: float = setting(Adaptation.lm_mu, "lm: the starting damping mu", above=0, kind=NUMBER)


@dataclass(frozen=True)
class Recipe:
    """An adaptation's and a pretraining's settings: the package's (``Recipe()``), or a family's
    (:meth:`for_family`: the package's with the family's overrides)."""

    adapt: Adaptation = field(default_factory=Adaptation)
    pretrain: Pretraining = field(default_factory=Pretraining)

    @classmethod
    def for_family(cls, family: Any, overrides: Mapping[str, Any] | None = None) -> "Recipe":
        """The recipe of ``family`` (a Problem class or instance): the package's, with the family's ``recipe``
        dict applied (or ``overrides`` instead of it, when given: ``{}`` is the package's recipe)."""
        owner = family if isinstance(family, type) else type(family)
        overrides = family_overrides(owner) if overrides is None else _flat(overrides)
        return cls().with_changes(overrides, where=f"{getattr(owner, 'name', owner.__name__)}: recipe")

    def with_changes(self, changes: Mapping[str, Any], where: str = "recipe") -> "Recipe":
        """A copy with ``changes``: adaptation keys at the top level (``sampling``, ``first_order: {...}``,
        ``method: {name: {...}}``, merged by name) and ``pretrain: {...}``."""
        changes = dict(changes or {})
        pre = changes.pop("pretrain", None) or {}
        return Recipe(adapt=_changed(self.adapt, changes, where), pretrain=_changed(self.pretrain, pre,
                                                                                    f"{where}.pretrain"))


def family_overrides(owner: type) -> dict[str, Any]:
    """A family class's recipe overrides: its ``recipe`` dict (a family written for an earlier version may
    name it ``recommended``, with the loop options under ``loop``; read the same way)."""
    own = getattr(owner, "recipe", None)
    return _flat(own if own else getattr(owner, "recommended", None) or {})


def _flat(overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(overrides)
    out.update(out.pop("loop", None) or {})
    return out


def _changed(obj: Any, changes: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown setting {', '.join(unknown)}; settings: {', '.join(known)}")
    new = {}
    for name, value in changes.items():
        f = known[name]
        if name == "first_order":
            value = _changed(obj.first_order, value or {}, f"{where}.first_order")
        elif name == "method":
            value = merge_method_options(obj.method, value or {}, where)
        else:
            check(f, value, where)
        new[name] = value
    return dataclasses.replace(obj, **new)


def merge_method_options(table: Mapping[str, Mapping[str, Any]], changes: Mapping[str, Any],
                         where: str = "recipe") -> dict[str, dict[str, Any]]:
    """The method table ``table`` with ``changes`` merged by method name (an entry's options update its own)."""
    out = {k: dict(v) for k, v in table.items()}
    for name, options in changes.items():
        if not isinstance(options, Mapping):
            raise RecipeError(f"{where}: method.{name} must be a mapping of option -> value, got {options!r}")
        out[name] = {**out.get(name, {}), **options}
    return out


def check(f: dataclasses.Field, value: Any, where: str = "recipe") -> Any:
    """``value`` if the field ``f`` allows it, else a :class:`RecipeError` naming the key and what is allowed."""
    meta = f.metadata
    kind = meta.get("kind")
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        raise RecipeError(f"{where}: {f.name}={value!r}; expected {describe(f)}")
    if kind is not None and not isinstance(value, kind):
        raise RecipeError(f"{where}: {f.name}={value!r}; expected {describe(f)}")
    if meta.get("choices") and value not in meta["choices"]:
        raise RecipeError(f"{where}: {f.name}={value!r}; expected {describe(f)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{where}: {f.name}={value!r}; expected {describe(f)}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise RecipeError(f"{where}: {f.name}={value!r}; expected {describe(f)}")
        if meta.get("above") is not None and not value > meta["above"]:
            raise RecipeError(f"{where}: {f.name}={value!r}; expected {describe(f)}")
    return value


def describe(f: dataclasses.Field) -> str:
    """What the field ``f`` allows, in words."""
    meta = f.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    kind = meta.get("kind")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a mapping", type(None): "null"}
    text = " or ".join(dict.fromkeys(words.get(k, getattr(k, "__name__", str(k))) for k in kinds))
    if kinds == NUMBER:
        text = "a finite number"
    if meta.get("minimum") is not None:
        text += f" >= {meta['minimum']:g}"
    if meta.get("above") is not None:
        text += f" > {meta['above']:g}"
    return text


def loop_settings() -> tuple[str, ...]:
    """The adaptation settings that are training-loop options (TrainConfig fields of the same names)."""
    return tuple(f.name for f in fields(Adaptation) if f.metadata.get("loop"))


def adapt_settings() -> tuple[str, ...]:
    """The flat adaptation settings a user sets by name (``steps=...``): every field but the tables."""
    return tuple(f.name for f in fields(Adaptation) if f.name not in ("first_order", "method"))


def field_of(name: str, section: type = Adaptation) -> dataclasses.Field:
    for f in fields(section):
        if f.name == name:
            return f
    raise KeyError(name)


def markdown_table() -> str:
    """The recipe as Markdown tables (``docs/cli.md``'s generated block): each setting, its default, what it
    allows and what it means."""
    def fmt(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(
            v, float) else str(v)

    def rows(section: Any, prefix: str = "") -> list[str]:
        out = []
        for f in fields(section):
            if f.name in ("first_order", "method"):
                continue
            cell = f.metadata["help"].replace("|", "\\|")  # a bar inside a cell would split it
            out.append(f"| `{prefix}{f.name}` | `{fmt(getattr(section, f.name))}` | {describe(f)} | {cell} |")
        return out

    r = Recipe()
    head = ["| setting | default | allowed | what it is |", "|---|---|---|---|"]
    method = ", ".join(f"`{k}`: " + ", ".join(f"{o}={fmt(v)}" for o, v in opts.items())
                       for k, opts in r.adapt.method.items())
    return "\n".join(["Adaptation (`python -m pinn_lora.adapt`, `pinn_lora.adapt_to`, `adapt_many`, the "
                      "coefficient-range builds):", "", *head, *rows(r.adapt), "",
                      "With `solver=method` these replace the values of the same names:", "", *head,
                      *rows(r.adapt.first_order, "first_order."), "",
                      f"Recommended method options (where `method.<option>` is left null): {method}.", "",
                      "Pretraining (`python -m pinn_lora.pretrain`, `pinn_lora.pretrain_base`):", "", *head,
                      *rows(r.pretrain, "pretrain.")])


BLOCK = ("<!-- recipe -->", "<!-- /recipe -->")  # docs/cli.md's generated block


def render(text: str) -> str:
    """``text`` with its recipe block (between :data:`BLOCK`'s markers) replaced by :func:`markdown_table`."""
    start, end = text.index(BLOCK[0]) + len(BLOCK[0]), text.index(BLOCK[1])
    return text[:start] + "\n" + markdown_table() + "\n" + text[end:]


if __name__ == "__main__":  # python -m pinn_lora.core.recipe docs/cli.md: regenerate the block in place
    import sys
    from pathlib import Path

    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(render(path.read_text()))
