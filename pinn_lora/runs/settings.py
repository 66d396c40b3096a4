"""The settings of one adaptation on the command line: :class:`AdaptConfig` holds every top-level key of
``configs/adapt.yaml`` with its default. The recipe's settings (steps, points, solver, sampling, damping …:
:mod:`pinn_lora.core.recipe`) are its keys with the default null, "the family's recipe"; the run's own options
(seed, device, out …) are declared here. Hydra's ConfigStore holds it as that file's schema (``adapt_schema``,
first in its defaults list), so the YAML keeps only the groups, ``out`` and Hydra's settings, and a YAML key the
schema lacks is refused when the config is composed.

:func:`pinn_lora.adapt_to`'s and :func:`pinn_lora.adapt_many`'s keyword defaults are these fields' defaults,
and :func:`pinn_lora.runs.from_config.run_config` passes the fields on by name. Each field's metadata says where
the value goes: ``minimum`` (an integer key's lower bound, checked by :func:`pinn_lora.runs.resolve.check_ints`),
``loop`` (a :class:`~pinn_lora.training.trainer.TrainConfig` option passed in ``loop_options``), ``compared`` (a
resumed run must have the same value: part of the checkpoint's settings), ``recorded`` (written to
``summary.json``'s ``settings``), ``command`` (the command line's own: not passed to the library) and ``help``.

The fields are typed ``Any`` on purpose: Hydra's typed nodes would convert ``plots=yes`` to true and
``steps=3.0`` to 3, and answer ``steps=abc`` with their own multi-line message; the run's checks give one
``error:`` line naming the key and what is allowed (``steps='abc' must be an integer >= 0``)."""
from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from typing import Any

from omegaconf import MISSING

from pinn_lora.core import recipe as _recipe
from pinn_lora.training.config import TrainConfig

LOOP = TrainConfig  # the loop's own defaults (eval_every, sampler, derivatives ...) live there


def key(default: Any, help: str = "", *, minimum: int | None = None, loop: bool = False, compared: bool = False,
        recorded: bool = False, command: bool = False) -> Any:
    """A field of :class:`AdaptConfig` with its role (module docstring)."""
    meta = {"loop": loop, "compared": compared or loop, "recorded": recorded or loop, "command": command,
            "help": help}
    if minimum is not None:
        meta["minimum"] = minimum
    return field(default=default, metadata=meta)


RUN = {"compared": True, "recorded": True}  # a setting of the run: the same on resume, written to summary.json

# the run's own options (not the recipe's), in --help's order
RUN_OPTIONS = [
    ("seed", key(LOOP.seed, "initial factors, collocation points; below 2**31", minimum=0, compared=True)),
    ("device", key("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")),
    ("dtype", key("float64", "float64 | float32", **RUN)),
    ("base", key(None, "null: the problem's shipped base model; or a saved base's path (no suffix)", recorded=True)),
    ("eval_every", key(LOOP.eval_every, "steps between relative-L2 evaluations (reference)", minimum=1, **RUN)),
    ("sampler", key(LOOP.sampler, "collocation sampler: pseudo | Hammersley | Sobol | Halton | LHS", **RUN)),
    ("checkpoint_every", key(500, "steps between checkpoints (checkpoint.safetensors in the run directory); 0 = off",
                             minimum=0, compared=True)),
    ("derivatives", key(LOOP.derivatives, "auto (jets on CUDA, autograd on CPU) | autograd | jets", **RUN)),
    ("cuda_graph", key(LOOP.cuda_graph, "auto (capture the whole step on CUDA when the method allows) | true | false",
                       recorded=True)),
    ("sync_every", key(LOOP.sync_every, "steps between host reads of the losses without a per-step read; "
                                        "0: eval_every (graph mode)", minimum=0)),
    ("resume", key(False, "true: continue the run in `out` from its last checkpoint (same config)")),
    ("debug", key(False, "true: show Python tracebacks instead of one `error:` line", command=True)),
    ("progress", key(True, "progress bar")),
    ("plots", key(True, "write plots/*.png")),
    ("out", key("runs/${problem.name}/${method.name}/${now:%Y-%m-%d_%H-%M-%S}", "the run directory", command=True)),
]


def _recipe_key(f: Any) -> Any:
    """The command line's key for a recipe setting: null (the family's recipe), with the setting's help."""
    minimum = f.metadata.get("minimum")
    is_int = f.metadata.get("kind") is int and not f.metadata.get("loop")
    return key(None, f"{f.metadata['help']}; null: the family's recipe", loop=f.metadata.get("loop", False),
               minimum=int(minimum) if is_int and minimum is not None else None, **({} if f.metadata.get("loop")
                                                                                    else RUN))


RECIPE_KEYS = _recipe.adapt_settings()
AdaptConfig = make_dataclass("AdaptConfig", [
    ("problem", Any, field(default=MISSING)), ("method", Any, field(default=MISSING)),
    *[(name, Any, f) for name, f in RUN_OPTIONS[:6]],
    *[(f.name, Any, _recipe_key(f)) for f in fields(_recipe.Adaptation) if f.name in RECIPE_KEYS],
    *[(name, Any, f) for name, f in RUN_OPTIONS[6:]]])
AdaptConfig.__doc__ = ("``python -m pinn_lora.adapt`` (``configs/adapt.yaml``); the recipe's keys left null take the "
                       "family's recipe (pinn_lora.core.recipe).")
AdaptConfig.__module__ = __name__


GROUPS = ("problem", "method")
SETTINGS = [f for f in fields(AdaptConfig) if f.name not in GROUPS]  # the top-level keys, in order
DEFAULTS = AdaptConfig()


def names(role: str) -> tuple[str, ...]:
    """The keys with ``role`` in their metadata (``loop``, ``compared``, ``recorded``, ``command``, ``minimum``)."""
    return tuple(f.name for f in SETTINGS if f.metadata.get(role) not in (None, False))


LIBRARY = {f.name: f.default for f in SETTINGS if not f.metadata["command"]}  # the keys adapt_to takes, by default
MINIMUM = {f.name: f.metadata["minimum"] for f in SETTINGS if "minimum" in f.metadata}
BOOLEANS = tuple(f.name for f in SETTINGS if isinstance(f.default, bool))  # true/false keys (resume, plots ...)
LOOP_OPTIONS = names("loop")  # passed to adapt_to as loop_options (the TrainConfig fields of the same names)


SCHEMAS = {"adapt_schema": AdaptConfig}  # ConfigStore name -> the schema a config file names in its defaults list


def register_schemas() -> None:
    """Store each of :data:`SCHEMAS` in Hydra's ConfigStore under its name (``adapt_schema``: the first
    entry of ``configs/adapt.yaml``'s defaults list). Idempotent."""
    from hydra.core.config_store import ConfigStore

    for name, node in SCHEMAS.items():
        ConfigStore.instance().store(name=name, node=node, provider="pinn_lora")
