"""The settings of one adaptation, declared once: :class:`AdaptConfig` holds every top-level key of
``configs/adapt.yaml`` with its default. Hydra's ConfigStore holds it as that file's schema
(``adapt_schema``, first in its defaults list), so the YAML keeps only the groups, ``out`` and
Hydra's settings, and a YAML key the schema lacks is refused when the config is composed.

:func:`pinn_lora.adapt_to`'s and :func:`pinn_lora.runs.many.adapt_many`'s keyword defaults are these
fields' defaults, and :func:`pinn_lora.runs.adapt.run_config` passes the fields on by name. Each field's
metadata says where the value goes: ``minimum`` (an integer key's lower bound, checked by
:func:`pinn_lora.runs.adapt.check_ints`), ``loop`` (a :class:`~pinn_lora.training.trainer.TrainConfig` option passed in
``loop_options``), ``compared`` (a resumed run must have the same value: part of the checkpoint's
settings), ``recorded`` (written to ``summary.json``'s ``settings``) and ``command`` (the command line's
own: not passed to the library).

The fields are typed ``Any`` on purpose: Hydra's typed nodes would convert ``plots=yes`` to true and
``steps=3.0`` to 3, and answer ``steps=abc`` with their own multi-line message; the run's checks give one
``error:`` line naming the key and what is allowed (``steps='abc' must be an integer >= 0``)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

from pinn_lora.training.config import TrainConfig

LOOP = TrainConfig  # the loop's defaults (eval_every, sampler, derivatives ...) live there


def key(default: Any, *, minimum: int | None = None, loop: bool = False, compared: bool = False,
        recorded: bool = False, command: bool = False) -> Any:
    """A field of :class:`AdaptConfig` with its role (module docstring)."""
    meta = {"loop": loop, "compared": compared or loop, "recorded": recorded or loop, "command": command}
    if minimum is not None:
        meta["minimum"] = minimum
    return field(default=default, metadata=meta)


RUN = {"compared": True, "recorded": True}  # a loop setting: the same on resume, written to summary.json


@dataclass
class AdaptConfig:
    """``python -m pinn_lora.adapt`` (``configs/adapt.yaml``); null values take the problem's
    recommendations (``configs/problem/<name>.yaml``: ``adapt``)."""

    problem: Any = MISSING  # the family: configs/problem/<name>.yaml (its coefficients, null: the default target)
    method: Any = MISSING   # the method: its class's declared options (python -m pinn_lora.methods)
    seed: Any = key(LOOP.seed, minimum=0, compared=True)  # initial factors, collocation points; below 2**31
    device: Any = key("auto")  # auto (CUDA when present) | cpu | cuda | cuda:N
    dtype: Any = key("float64", **RUN)  # float64 | float32
    base: Any = key(None, recorded=True)  # null: the problem's shipped base model; or a saved base's path (no suffix)
    steps: Any = key(None, minimum=0, **RUN)  # null: the problem's adapt.steps
    n_points: Any = key(None, minimum=1, **RUN)  # collocation points per batch; null: the problem's adapt.n_points
    eval_every: Any = key(LOOP.eval_every, minimum=1, **RUN)  # steps between relative-L2 evaluations (reference)
    sampler: Any = key(LOOP.sampler, **RUN)  # collocation sampler: pseudo | Hammersley | Sobol | Halton | LHS
    # lm (Levenberg-Marquardt on the trainable parameters; ODELoRA: its implicit scheme) | method (the method's
    # own first-order dynamics); null: the problem's adapt.solver
    solver: Any = key(None, **RUN)
    # uniform | rad | rar_d (residual-based adaptive distribution / refinement, Wu et al. 2023); null: the problem's
    sampling: Any = key(None, **RUN)
    resample_every: Any = key(None, minimum=1, **RUN)  # steps between new collocation points; null: the problem's
    lm_mu: Any = key(None, loop=True)  # lm: starting damping mu (implicit Euler step h = 1/mu); null: 1.0
    lm_adaptive: Any = key(None, loop=True)  # lm: adapt mu by the trust-region rule; false: fixed h; null: true
    rad_k: Any = key(None, loop=True)  # rad, rar_d: density ~ |r|^k / mean(|r|^k) + c; null: k = 1
    rad_c: Any = key(None, loop=True)  # rad: null: c = 1
    rad_pool: Any = key(None, loop=True)  # rad, rar_d: candidates per drawn point; null: 8
    rar_add: Any = key(None, loop=True)  # rar_d: points added to the set at each draw; null: n_points // 10
    # auto | off | N: adapt through N intermediate coefficients between the base's and the target (auto: the
    # family's stage width decides N); null: the problem's adapt.continuation
    continuation: Any = key(None, **RUN)
    stage_steps: Any = key(None, loop=True)  # continuation: the most steps per intermediate stage; null: 3
    stage_tol: Any = key(None, loop=True)  # continuation: a stage ends once a step starts at a loss <= this; null: 1e-3
    # L-BFGS finish after the method's steps (the same parameters); null: the problem's adapt.lbfgs_steps
    lbfgs_steps: Any = key(None, minimum=0, **RUN)
    # steps between checkpoints (checkpoint.safetensors in the run directory); 0 = off
    checkpoint_every: Any = key(500, minimum=0, compared=True)
    # auto (jets on CUDA, autograd on CPU) | autograd (nested reverse mode) | jets (Taylor mode)
    derivatives: Any = key(LOOP.derivatives, **RUN)
    # auto (capture the whole step on CUDA when the method allows) | true (or fail) | false
    cuda_graph: Any = key(LOOP.cuda_graph, recorded=True)
    # steps between host reads of the losses without a per-step read; 0: eval_every (graph mode)
    sync_every: Any = key(LOOP.sync_every, minimum=0)
    # true: continue the run in `out` from its last checkpoint (same config); false: a run directory that already
    # holds a run is refused, never overwritten
    resume: Any = key(False)
    debug: Any = key(False, command=True)  # true: show Python tracebacks instead of one `error:` line
    progress: Any = key(True)  # progress bar
    plots: Any = key(True)  # write plots/*.png
    out: Any = key("runs/${problem.name}/${method.name}/${now:%Y-%m-%d_%H-%M-%S}", command=True)  # the run directory


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
