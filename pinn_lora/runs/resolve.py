"""Turning a request into the settings one run takes: the device and dtype, the base model, the method with the
options its family's recipe recommends, and the flat settings of the path the solver takes
(:class:`pinn_lora.core.recipe.Recipe`: the package's, the family's overrides, then what the caller gave). Every
entry path (``adapt_to``, ``adapt_many``, the coefficient-range builds, the command line) resolves here."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pinn_lora.core.recipe import SOLVERS, Recipe, RecipeError
from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.methods import Method, get_method
from pinn_lora.model.memory import check_points
from pinn_lora.runs.adapter_io import layer_sizes
from pinn_lora.runs.settings import MINIMUM, names
from pinn_lora.store.zoo import load_base, shipped
from pinn_lora.training.trainer import TrainConfig

DTYPES = {"float64": torch.float64, "float32": torch.float32}
RECIPE_GIVEN = ("solver", "sampling", "steps", "n_points", "resample_every", "lbfgs_steps", "continuation")


class ConfigError(ValueError):
    """A bad value in the run's configuration."""


def resolve_device(name: str | torch.device) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"device={name!r}: give a string ('auto', 'cpu', 'cuda', 'cuda:N') or a torch.device")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but no CUDA device is available; use device=cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return dev


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_base(base: str | Path | nn.Module | tuple[nn.Module, Mapping[str, Any]], problem: Any,
                 dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """(a copy of the base network in ``dtype`` on ``device``, its card) from a shipped name, a saved
    base's path, a (network, card) pair or a bare network (its card then names ``problem``'s family)."""
    if isinstance(base, nn.Module):
        base = (base, {"problem": problem.name})
    if isinstance(base, tuple):
        if len(base) not in (2, 3) or not isinstance(base[0], nn.Module) or not isinstance(base[1], Mapping):
            raise TypeError("base=(network, card) or what load_base returns, (network, card, path); got a "
                            f"tuple of {len(base)}")
        net, card = base[:2]  # load_base's (network, card, path) as it is
        net, card = copy.deepcopy(net).to(dtype=dtype, device=device), dict(card)
    else:
        if (str(base) == problem.name and base not in shipped()
                and not any(Path(f"{base}{suffix}").exists() for suffix in (".json", ".safetensors"))):
            raise ConfigError(f"problem {problem.name!r} has no shipped base model (shipped: {', '.join(shipped())}); "
                              "give a saved one with base=<path> (written by pinn_lora.pretrain_base, "
                              "see examples/custom_problem.py)")
        net, card, _ = load_base(base, dtype=dtype, device=device)
    if card.get("problem") != problem.name:
        raise ConfigError(f"base model is for problem {card.get('problem')!r}, not {problem.name!r}")
    return net, card


def recipe_of(problem: Any, recommended: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe a run on ``problem`` takes: the package's with the family's overrides (``recommended``, when
    given, in place of the family's: ``{}`` is the package's recipe)."""
    try:
        return Recipe.for_family(problem, recommended)
    except RecipeError as exc:
        raise ConfigError(str(exc)) from None


def method_with_options(method: str | Method, recipe: Recipe, options: Mapping[str, Any]) -> Method:
    """The method ``method`` (a name, or a Method as it is) with the options its recipe recommends, updated by
    ``options``."""
    if isinstance(method, Method):
        return method
    known = METHODS.get(method).defaults if method in METHODS else None
    return get_method(method, **{**recipe.adapt.method_options(method, known), **options})


@dataclass
class Resolved:
    """One run's resolved settings: ``settings`` (flat, by :class:`~pinn_lora.runs.settings.AdaptConfig`'s names:
    the recipe's for the path ``settings['solver']`` takes, with what the caller gave) and ``loop`` (the
    training-loop options among them)."""

    method: Method
    settings: dict[str, Any]
    loop: dict[str, Any]


def resolve_settings(problem: Any, method: str | Method, given: Mapping[str, Any], *,
                     recommended: Mapping[str, Any] | None = None, loop_options: Mapping[str, Any] | None = None,
                     method_options: Mapping[str, Any] | None = None, solver: str | None = None) -> Resolved:
    """The settings of one adaptation: ``given`` holds the recipe keys the caller set (None: the recipe's) and
    the run's own integers (eval_every, checkpoint_every, seed, sync_every), ``loop_options`` the loop keys."""
    recipe = recipe_of(problem, recommended)
    meth = method_with_options(method, recipe, method_options or {})
    asked = given.get("solver") if solver is None else solver
    if asked is not None and asked not in SOLVERS:
        raise ConfigError(f"solver={asked!r}; choose one of {', '.join(SOLVERS)}")
    path = meth.solver_for(recipe.adapt.solver if asked is None else asked, asked is not None)
    flat = recipe.adapt.for_solver(path)
    loop_keys = tuple(k for k in flat if k not in RECIPE_GIVEN)
    unknown = sorted(set(loop_options or {}) - set(loop_keys))
    if unknown:
        raise ConfigError(f"loop option {', '.join(unknown)} unknown; options: {', '.join(loop_keys)}")
    flat.update({k: v for k, v in given.items() if k in RECIPE_GIVEN and v is not None and k != "solver"})
    flat.update(loop_options or {})
    check_ints({"stage_steps": flat["stage_steps"]}, bounds={"stage_steps": 1})  # before steps + stages x it
    continuation = flat["continuation"]
    if continuation not in ("auto", "off") and (isinstance(continuation, bool) or not isinstance(continuation, int)
                                                or continuation < 0):
        raise ConfigError(f"continuation={continuation!r}: use auto, off or a number of intermediate stages >= 0")
    ints = check_ints({k: flat[k] for k in ("steps", "n_points", "lbfgs_steps", "resample_every")}
                      | {k: given[k] for k in ("eval_every", "checkpoint_every", "seed", "sync_every") if k in given})
    flat.update(ints)
    run = {**{k: v for k, v in given.items() if k not in RECIPE_GIVEN}, **flat}
    loop = {k: flat[k] for k in loop_keys}
    return Resolved(meth, {k: v for k, v in run.items() if k not in loop or used_by_path(k, run)}, loop)


def used_by_path(key: str, s: Mapping[str, Any]) -> bool:
    """Whether the loop option ``key`` acts on the path the settings ``s`` take (only those are recorded and
    compared on resume: a first-order run has no damping, uniform points no density, no stages no stage rule)."""
    if key.startswith("lm_"):
        return s["solver"] == "lm"
    if key in ("rad_k", "rad_pool"):
        return s["sampling"] in ("rad", "rar_d")
    if key == "rad_c":
        return s["sampling"] == "rad"
    if key == "rar_add":
        return s["sampling"] == "rar_d"
    if key.startswith("stage_"):
        return s["continuation"] != "off"
    return True


def check_budget(net: nn.Module, settings: Mapping[str, Any], loop: Mapping[str, Any], stages: int,
                 dtype: torch.dtype, device: torch.device, copies: int = 1) -> None:
    """Refuse, before anything is allocated, a point count whose step cannot fit in memory
    (:func:`pinn_lora.model.memory.check_points`): RAR-D's grown set, RAD's candidate pool, ``copies`` networks."""
    if not getattr(net, "linears", None):
        return
    n, sampling = settings["n_points"], settings["sampling"]
    if copies > 1:
        check_points(n, layer_sizes(net), dtype, device, error=ConfigError, pool=copies,
                     times=f"x {copies} coefficients in one batched run")
    elif sampling == "rar_d":  # the set grows by a draw every resample_every steps (and at each stage)
        draws = (settings["steps"] + stages * loop["stage_steps"]) // settings["resample_every"] + stages
        grown = n + draws * TrainConfig(n_points=n, rar_add=loop.get("rar_add", 0)).rar_points
        check_points(grown, layer_sizes(net), dtype, device, key="n_points with the points sampling=rar_d adds",
                     error=ConfigError)
    else:
        check_points(n, layer_sizes(net), dtype, device, error=ConfigError,
                     pool=loop.get("rad_pool", 8) if sampling == "rad" else 1)



def json_safe_tree(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), so settings compare equal after a round trip."""
    import json

    return json.loads(json.dumps(value))


def problem_from_config(pcfg: Mapping[str, Any], job: str = "adapt") -> Any:
    """The problem of a config group entry: coefficients left null take the
    family's default target (adapt) or source value (pretrain)."""
    cls = PROBLEMS.get(pcfg["name"])
    names = [c.name for c in cls.coefficient_specs]
    given = {k: pcfg[k] for k in names if pcfg.get(k) is not None}
    defaults = cls.target if job == "adapt" else {}
    extra = {}
    if "modes" in pcfg and pcfg["modes"] is not None:
        extra["modes"] = pcfg["modes"]  # validated by the family
    return cls(**extra, **{**defaults, **given})


SEED_LIMIT = 2**31  # the samplers seed numpy's legacy generator (32 bits) with seed + small offsets


def pick(run: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The entries of ``run`` whose :class:`~pinn_lora.runs.settings.AdaptConfig` field has ``role``, in ``run``'s order."""
    keep = names(role)
    return {k: v for k, v in run.items() if k in keep}


def check_ints(values: Mapping[str, Any], bounds: Mapping[str, int] | None = None) -> dict[str, int]:
    """Each value must be an integer (numpy's included) >= its key's lower bound (:data:`pinn_lora.runs.settings.MINIMUM`),
    a ``seed`` below :data:`SEED_LIMIT` (a ConfigError naming the key otherwise). Returns them as Python ints."""
    import numbers

    out = {}
    for key, val in values.items():
        low = (bounds or {}).get(key, MINIMUM.get(key))  # another command's own keys: their bounds given
        if low is None:
            raise ValueError(f"check_ints: no lower bound for {key!r} (give it in bounds or config.MINIMUM)")
        if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < low:
            raise ConfigError(f"{key}={val!r} must be an integer >= {low}")
        if key == "seed" and val >= SEED_LIMIT:
            raise ConfigError(f"seed={val!r} is too large: a seed is an integer from 0 to {SEED_LIMIT - 1} (2**31 - 1)")
        out[key] = int(val)
    return out


def check_strings(cfg: Mapping[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
            raise ConfigError(f"{key}={cfg.get(key)!r} must be a string")
