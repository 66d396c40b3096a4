"""The Problem base class: a PDE family with coefficients, a domain, residuals
and a reference solution. Families live in ``problems/`` (installed as the package
``pinn_lora.problems``) and are found through the ``pinn_lora.problems`` entry-point
group (see :mod:`pinn_lora.core.registry`)."""
from __future__ import annotations

import contextvars
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from pinn_lora.core.dde import deepxde, numpy_seed

SAMPLERS = ("pseudo", "Hammersley", "Sobol", "Halton", "LHS")


class CoefficientError(ValueError):
    """A coefficient is unknown, missing or outside its allowed range."""


@dataclass(frozen=True)
class Coefficient:
    """One scalar coefficient of a PDE family and its allowed range."""

    name: str
    source: float  # value the shipped base model was trained at
    low: float | None = None
    low_inclusive: bool = False
    high: float | None = None
    doc: str = ""
    why: str = ""  # why the range is what it is (e.g. what the reference solution supports), said on refusal
    # continuation (adapting through intermediate values): the coordinate in which stages are
    # evenly spaced ("log": geometric, "linear", "square": linear in the square) and the width of
    # one stage in it (None: this coefficient needs no intermediate stages)
    scale: str = "linear"
    stage: float | None = None

    def coordinate(self, value: float) -> float:
        if self.scale == "log":
            return math.log(value)
        return value * value if self.scale == "square" else value

    def from_coordinate(self, c: float) -> float:
        if self.scale == "log":
            return math.exp(c)
        return math.sqrt(c) if self.scale == "square" else c

    def allowed(self) -> str:
        lo = "" if self.low is None else f"{self.low:g} {'<=' if self.low_inclusive else '<'} "
        hi = "" if self.high is None else f" <= {self.high:g}"
        return f"{lo}{self.name}{hi}" if (lo or hi) else f"{self.name} finite"

    def check(self, family: str, value: Any) -> float:
        if isinstance(value, bool):
            raise CoefficientError(
                f"{family}: coefficient {self.name}={value!r} is not a number (allowed: {self.allowed()})")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise CoefficientError(
                f"{family}: coefficient {self.name}={value!r} is not a number (allowed: {self.allowed()})"
            ) from None
        ok = math.isfinite(v)
        if ok and self.low is not None:
            ok = v >= self.low if self.low_inclusive else v > self.low
        if ok and self.high is not None:
            ok = v <= self.high
        if not ok:
            raise CoefficientError(f"{family}: coefficient {self.name}={value!r} is out of range (allowed: "
                                   f"{self.allowed()}{': ' + self.why if self.why else ''})")
        return v


class Problem:
    """A PDE family at fixed coefficients.

    Subclasses set the class attributes and implement :meth:`geometry`,
    :meth:`residuals` and :meth:`reference_grid`; the rest is shared.
    Residuals are written once against a derivative provider ``d`` exposing
    ``d.u``, ``d.u_x``, ``d.u_t``, ``d.u_xx`` … (see :mod:`pinn_lora.model.derivatives`).
    """

    name: ClassVar[str]
    variables: ClassVar[tuple[str, ...]]  # input column names, e.g. ("x", "t")
    lower: ClassVar[tuple[float, ...]]
    upper: ClassVar[tuple[float, ...]]
    coefficient_specs: ClassVar[tuple[Coefficient, ...]]
    target: ClassVar[dict[str, float]]  # default adaptation target
    eval_points: ClassVar[tuple[int, ...]]  # evaluation grid size per variable
    network: ClassVar[dict[str, Any]]  # default architecture of the base model
    # what this family's runs do differently from the package's recipe (pinn_lora.core.recipe): adaptation
    # settings at the top level ("sampling": "uniform", "first_order": {...}, "method": {name: {...}}) and
    # "pretrain": {...}; {} (the default): exactly the package's recipe
    recipe: ClassVar[dict[str, Any]] = {}

    def __init__(self, **coefficients: Any) -> None:
        specs = {c.name: c for c in self.coefficient_specs}
        unknown = sorted(set(coefficients) - set(specs))
        if unknown:
            raise CoefficientError(
                f"{self.name}: unknown coefficient {', '.join(unknown)}; "
                f"the coefficients are: {', '.join(f'{c.name} ({c.allowed()})' for c in self.coefficient_specs)}"
            )
        values = {c.name: c.source for c in self.coefficient_specs}
        for key, value in coefficients.items():
            values[key] = specs[key].check(self.name, value)
        self.coefficients: dict[str, float] = values
        self.validate()

    @classmethod
    def config_node(cls, name: str | None = None) -> dict[str, Any]:
        """The family's node in Hydra's ``problem`` group when pinn_lora ships no YAML for it (a plugin's family):
        every coefficient null (the default target, ``problem.<coefficient>=...`` to change it). Its recipe is
        the class's (:meth:`pinn_lora.core.recipe.Recipe.for_family`), as for a shipped family."""
        return {"name": name or cls.name, **{c.name: None for c in cls.coefficient_specs}}

    # ---- hooks for subclasses -------------------------------------------------
    def validate(self) -> None:
        """Extra checks across coefficients (e.g. resonances); raise CoefficientError."""

    def geometry(self) -> Any:
        raise NotImplementedError

    def output_transform(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """Hard constraints (initial/boundary data); identity by default."""
        return outputs

    def residuals(self, d: Any) -> dict[str, torch.Tensor]:
        """Pointwise residuals by term name (e.g. ``{"pde": ...}``)."""
        raise NotImplementedError

    def residual_scale(self) -> float:
        """Mean square used to normalise the PDE residual (so one learning rate
        serves all coefficients)."""
        return 1.0

    def reference_grid(self, axes: tuple[np.ndarray, ...]) -> np.ndarray:
        """Reference solution on the tensor grid ``axes`` (indexing 'ij')."""
        raise NotImplementedError

    # ---- shared machinery -----------------------------------------------------
    @classmethod
    def source(cls) -> "Problem":
        return cls()

    @classmethod
    def default_target(cls) -> "Problem":
        return cls(**cls.target)

    def with_coefficients(self, **changes: Any) -> "Problem":
        return type(self)(**{**self.coefficients, **changes})

    def stages_from(self, source: Mapping[str, float], count: int | str = "auto") -> list["Problem"]:
        """The intermediate problems of a continuation from ``source``'s coefficients to these
        (this problem itself excluded): ``count`` stages evenly spaced in each coefficient's
        coordinate (:class:`Coefficient` ``scale``), or with ``"auto"`` as many as the widest
        distance needs — ceil(|Δ coordinate| / ``stage``), maximised over the coefficients — minus
        the target itself, none where the family says the path is blocked (:meth:`continuation_blocked`).
        A stage the family refuses (e.g. Helmholtz near a resonance) is moved to the nearest allowed point
        between its neighbours, or left out."""
        specs = {c.name: c for c in self.coefficient_specs}
        start = {k: float(source.get(k, self.coefficients[k])) for k in self.coefficients}
        if count == "auto" and self.continuation_blocked(start):
            return []  # the path between them is no continuation (the family says why)
        if count == "auto":
            count = max([math.ceil(abs(specs[k].coordinate(self.coefficients[k]) - specs[k].coordinate(start[k]))
                                   / specs[k].stage - 1e-9) for k in specs if specs[k].stage] + [1]) - 1
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"continuation={count!r}: use auto, off or a number of intermediate stages >= 0")
        out: list[Problem] = []
        for i in range(1, count + 1):
            values = {}
            for k, spec in specs.items():
                a, b = spec.coordinate(start[k]), spec.coordinate(self.coefficients[k])
                values[k] = spec.from_coordinate(a + (b - a) * i / (count + 1))
            for shift in (0.0, 0.25, -0.25, 0.45, -0.45):  # fractions of a stage, toward a neighbour
                try:
                    out.append(self.with_coefficients(**{
                        k: specs[k].from_coordinate(specs[k].coordinate(v) + shift * (
                            specs[k].coordinate(self.coefficients[k]) - specs[k].coordinate(start[k])) / (count + 1))
                        for k, v in values.items()}))
                    break
                except CoefficientError:
                    continue
        return out

    def continuation_blocked(self, source: Mapping[str, float]) -> str:
        """Why the solutions between ``source``'s coefficients and these are no path to follow (e.g.
        Helmholtz: the solution blows up at a resonance in between), or '' (the default). With
        ``continuation=auto`` a blocked path is not staged: the run adapts to the target directly."""
        return ""

    def __getattr__(self, key: str) -> Any:
        coeffs = self.__dict__.get("coefficients", {})
        if key in coeffs:
            return coeffs[key]
        raise AttributeError(key)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:.6g}" for k, v in self.coefficients.items())
        return f"{type(self).__name__}({args})"

    @property
    def dim(self) -> int:
        return len(self.variables)

    def sample(self, n: int, seed: int, sampler: str = "pseudo") -> np.ndarray:
        """``n`` collocation points from DeepXDE's geometry, float64.

        Quasi-random sequences are deterministic, so each draw applies a random
        shift modulo the box (a Cranley–Patterson rotation): resampling gives new
        points with the same low discrepancy."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        with numpy_seed(seed):
            pts = np.asarray(self.geometry().random_points(n, random=sampler), dtype=np.float64)
        if sampler != "pseudo":
            lo, hi = np.asarray(self.lower), np.asarray(self.upper)
            shift = np.random.default_rng(seed).random(self.dim) * (hi - lo)
            pts = lo + np.mod(pts - lo + shift, hi - lo)
        return pts

    def eval_axes(self) -> tuple[np.ndarray, ...]:
        return tuple(np.linspace(lo, hi, n) for lo, hi, n in zip(self.lower, self.upper, self.eval_points))

    def eval_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed evaluation points (N, dim) and reference values (N,), cached."""
        return _eval_grid(self)

    def reference(self, axes: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        axes = self.eval_axes() if axes is None else axes
        return _reference_grid_cached(self, tuple(np.asarray(a, dtype=np.float64).tobytes() for a in axes))

    def relative_l2(self, net: torch.nn.Module) -> float:
        """Relative L2 error of ``net`` against the reference on the evaluation grid."""
        pts, ref = self.eval_grid()
        p = next(iter(net.parameters()), None)
        b = next(iter(net.buffers()), None)
        like = p if p is not None else b
        with torch.no_grad():
            x = torch.tensor(pts, dtype=like.dtype, device=like.device)
            u = torch.cat([net(chunk) for chunk in x.split(16384)]).reshape(-1).double().cpu().numpy()
        return float(np.linalg.norm(u - ref) / np.linalg.norm(ref))

    def key(self) -> tuple:
        return (self.name, tuple(sorted(self.coefficients.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


_PROGRESS: contextvars.ContextVar[Callable[[float], None] | None] = contextvars.ContextVar("reference_progress",
                                                                                       default=None)
PROGRESS_DELAY = 3.0  # seconds: a reference computed for longer shows a progress bar


def reference_progress() -> Callable[[float], None] | None:
    """For a family's :meth:`Problem.reference_grid`: the callback to report the fraction done (0…1) to, while
    the reference is computed (a progress bar on stderr once it takes more than :data:`PROGRESS_DELAY` s)."""
    return _PROGRESS.get()


@functools.lru_cache(maxsize=64)
def _reference_grid_cached(problem: Problem, axes_bytes: tuple[bytes, ...]) -> np.ndarray:
    from tqdm.auto import tqdm

    axes = tuple(np.frombuffer(b, dtype=np.float64) for b in axes_bytes)
    what = ", ".join(f"{k}={v:g}" for k, v in problem.coefficients.items())
    with tqdm(total=1000, delay=PROGRESS_DELAY, desc=f"{problem.name} reference ({what})", unit="‰",
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}", leave=False) as bar:
        def update(fraction: float) -> None:
            bar.update(max(0, min(1000, int(1000 * fraction)) - bar.n))

        token = _PROGRESS.set(update)
        try:
            out = np.asarray(problem.reference_grid(axes), dtype=np.float64)
        finally:
            _PROGRESS.reset(token)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _eval_grid(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    axes = problem.eval_axes()
    mesh = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([m.reshape(-1) for m in mesh], axis=1)
    ref = problem.reference(axes).reshape(-1)
    pts.setflags(write=False)
    return pts, ref


def geometry_xt(lower: tuple[float, ...], upper: tuple[float, ...]) -> Any:
    """A DeepXDE space-time geometry on an interval × [t0, t1]."""
    dde = deepxde()
    return dde.geometry.GeometryXTime(
        dde.geometry.Interval(lower[0], upper[0]), dde.geometry.TimeDomain(lower[1], upper[1])
    )
