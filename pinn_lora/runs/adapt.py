"""One adaptation, start to finish: resolve the settings → build the model → run → judge → save.

The command line (``python -m pinn_lora.adapt``) composes a config and calls
:func:`pinn_lora.runs.from_config.run_config`; scientific code calls :func:`adapt_to` (``pinn_lora.adapt_to``).
Each stage is a named function that :func:`pinn_lora.adapt_many` and the coefficient-range builds reuse."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pinn_lora.core.runtime import device_name, own_rng
from pinn_lora.methods import Method, trainable_parameters
from pinn_lora.model.adapters import adapter_layers
from pinn_lora.runs import preflight
from pinn_lora.runs.adapter_io import attach
from pinn_lora.runs.ending import end_phase
from pinn_lora.runs.resolve import (  # noqa: F401  (the names callers of this module import from it)
    DTYPES,
    ConfigError,
    Resolved,
    check_budget,
    check_ints,
    check_strings,
    json_safe_tree,
    method_with_options,
    pick,
    problem_from_config,
    recipe_of,
    resolve_base,
    resolve_device,
    resolve_dtype,
    resolve_settings,
)
from pinn_lora.runs.result import VERDICTS, AdaptResult, stage_summary  # noqa: F401
from pinn_lora.runs.settings import DEFAULTS
from pinn_lora.store import checkpoints as resume_state
from pinn_lora.store import rundir
from pinn_lora.training.monitors import (
    AdapterState,
    FeatureChange,
    MetricsWriter,
    Stability,
    UpdateNorm,
    amend_last_record,
)
from pinn_lora.training.config import TrainConfig
from pinn_lora.training.records import Monitor
from pinn_lora.training.trainer import Trainer
from pinn_lora.training.verdict import judge, validation_points, validation_residual

_BASE_VALIDATION: dict[tuple, float] = {}


@dataclass
class Prepared:
    """A run ready to start: the model with the method attached, its loop's config, stages and monitors, and
    what the verdict compares against (the base's error and validation residual)."""

    problem: Any
    resolved: Resolved
    model: nn.Module
    card: dict[str, Any]
    stages: list[Any]
    train: TrainConfig
    monitors: list[Monitor]
    stability: Stability | None
    base_error: float
    val_points: torch.Tensor
    val_base: float
    run_dir: Path | None
    saved: Any = None
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@own_rng  # the seed below stays inside the call: the caller's global RNG is left as it was
def adapt_to(base: str | Path | nn.Module | tuple[nn.Module, dict], problem: Any, method: str | Method = "odelora", *,
             steps: int | None = DEFAULTS.steps, n_points: int | None = DEFAULTS.n_points,
             resample_every: int | None = DEFAULTS.resample_every, eval_every: int = DEFAULTS.eval_every,
             seed: int = DEFAULTS.seed, device: str | torch.device = DEFAULTS.device, dtype: str = DEFAULTS.dtype,
             checkpoint_every: int = DEFAULTS.checkpoint_every, sampler: str = DEFAULTS.sampler,
             lbfgs_steps: int | None = DEFAULTS.lbfgs_steps, run_dir: str | Path | None = None,
             progress: bool = DEFAULTS.progress, plots: bool = DEFAULTS.plots, monitors: Sequence[Monitor] = (),
             default_monitors: bool = True, derivatives: str = DEFAULTS.derivatives,
             cuda_graph: bool | str = DEFAULTS.cuda_graph, sync_every: int = DEFAULTS.sync_every,
             resume: bool = DEFAULTS.resume, recommended: Mapping[str, Any] | None = None,
             solver: str | None = DEFAULTS.solver, sampling: str | None = DEFAULTS.sampling,
             loop_options: Mapping[str, Any] | None = None, continuation: int | str | None = DEFAULTS.continuation,
             **method_options: Any) -> AdaptResult:
    """Adapt a base model to ``problem`` (its coefficients are the target). Settings left None take the
    family's recipe (:mod:`pinn_lora.core.recipe`: the package's, with what the family class states;
    ``recommended`` replaces the family's overrides, ``{}``: the package's recipe); what each means:
    :class:`pinn_lora.runs.settings.AdaptConfig` and ``docs/cli.md``.

    ``base`` is a shipped name ("burgers"), a path to a saved base, a (network, card) pair, or a network (any
    module with ``linears``, e.g. a ``deepxde.nn.FNN``; it is copied, not changed). ``method_options`` go to the
    method (over the recipe's recommendations). With ``run_dir`` the metrics, adapter, card, summary and plots
    are written there; ``resume=True`` continues the run in it from its last checkpoint, with the same settings
    (a difference is refused), to the result an uninterrupted run gives.

    Monitors, in this order: with ``default_monitors`` :class:`~pinn_lora.training.monitors.UpdateNorm`,
    :class:`~pinn_lora.training.monitors.Stability` (its summary in ``summary()["stability"]``),
    :class:`~pinn_lora.training.monitors.AdapterState` (adapter methods) and
    :class:`~pinn_lora.training.monitors.FeatureChange` (256 probe points), then ``monitors``, then, with
    ``run_dir``, the ``metrics.jsonl`` writer.

    ``solver``: ``lm`` (Levenberg–Marquardt on the trainable parameters; ODELoRA's implicit scheme) or
    ``method`` (the method's own first-order dynamics: the recipe's ``first_order`` values apply);
    ``sampling``: ``uniform``, ``rad`` or ``rar_d``; ``loop_options``: ``lm_mu``, ``lm_adaptive``, ``rad_k``,
    ``rad_c``, ``rad_pool``, ``rar_add``, ``stage_steps``, ``stage_tol``; ``continuation``: ``auto``, ``off``
    or a number N of intermediate coefficients between the base's and the target
    (:meth:`~pinn_lora.pde.problem.Problem.stages_from`), each taking at most ``stage_steps`` steps on top of
    ``steps``; records carry ``stage`` and ``summary()["continuation"]`` lists the stages. Speed:
    ``derivatives`` (``auto``: jets on CUDA), ``cuda_graph`` and ``sync_every`` (docs/speed.md).

    The verdict (``summary()["status"]``): ``completed``, ``diverged``, or ``no_improvement`` when the result's
    residual on the fixed validation set (:mod:`pinn_lora.training.verdict`) is not below the base network's."""
    check_request(problem, run_dir, resume, {"resume": resume, "plots": plots, "progress": progress,
                                             "default_monitors": default_monitors})
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    checkpoint = Path(run_dir) / "checkpoint.safetensors" if run_dir is not None else None
    saved = resume_state.load(checkpoint, dev) if resume else None
    given = {"steps": steps, "n_points": n_points, "resample_every": resample_every, "lbfgs_steps": lbfgs_steps,
             "solver": solver, "sampling": sampling, "continuation": continuation, "eval_every": eval_every,
             "checkpoint_every": checkpoint_every, "seed": seed, "sync_every": sync_every, "sampler": sampler,
             "dtype": str(dt).replace("torch.", ""), "derivatives": derivatives}
    resolved = resolve_settings(problem, method, given, recommended=recommended, loop_options=loop_options,
                                method_options=method_options)
    run = prepare(base, problem, resolved, dt, dev, run_dir=run_dir, progress=progress, cuda_graph=cuda_graph,
                  monitors=monitors, default_monitors=default_monitors, saved=saved, checkpoint=checkpoint)
    run.extra["settings_base"] = str(base) if isinstance(base, (str, Path)) else "(network given)"
    trainer = build_trainer(run)
    preflight.check_run(trainer, saved, checkpoint, run.run_dir and run.run_dir / "metrics.jsonl")  # before the claim
    claim = rundir.claim(run_dir, resume=resume) if run_dir is not None else rundir.UNCLAIMED
    execute(run, trainer, claim)
    with end_phase(claim, run_dir):  # a Ctrl-C here is deferred until the run is written (pinn_lora.runs.ending)
        result = conclude(run, trainer, dev)
        if run_dir is not None:
            claim.guard(result.save, run_dir, plots=plots)
    return result


def check_request(problem: Any, run_dir: str | Path | None, resume: bool, flags: Mapping[str, Any]) -> None:
    """Refuse a request that cannot run, before anything else: not a problem object, a run directory that is
    not a path or already holds a run (:mod:`pinn_lora.store.rundir`; claimed only once the input is good)."""
    from pinn_lora.pde.problem import Problem

    if not isinstance(problem, Problem):
        raise TypeError(f"adapt_to: problem must be a problem object, e.g. pinn_lora.get_problem({problem!r}) "
                        f"(its coefficients are the target); got {type(problem).__name__} {problem!r}")
    if run_dir is not None and not isinstance(run_dir, (str, Path)):
        raise TypeError(f"adapt_to: run_dir must be a path (str or pathlib.Path), got {type(run_dir).__name__}")
    preflight.check_bools(dict(flags))
    if resume and run_dir is None:
        raise ConfigError("resume=true needs the run directory to continue (out=... / run_dir=...)")
    if run_dir is not None:
        rundir.check(run_dir, resume=resume)


def train_config(resolved: Resolved, stages: int, *, progress: bool, checkpointing: bool,
                 cuda_graph: bool | str) -> TrainConfig:
    """The training loop's config for the resolved settings; its ``steps`` count the continuation stages' too."""
    s = resolved.settings
    return TrainConfig(steps=s["steps"] + stages * resolved.loop["stage_steps"], n_points=s["n_points"],
                       resample_every=s["resample_every"], eval_every=s["eval_every"], solver=s["solver"],
                       sampling=s["sampling"], **resolved.loop, seed=s["seed"], progress=progress,
                       checkpoint_every=s["checkpoint_every"] if checkpointing else 0, sampler=s["sampler"],
                       lbfgs_steps=s["lbfgs_steps"], derivatives=s["derivatives"], cuda_graph=cuda_graph,
                       sync_every=s["sync_every"])


def base_validation(problem: Any, net: nn.Module, card: Mapping[str, Any], dt: torch.dtype,
                    dev: torch.device) -> tuple[torch.Tensor, float]:
    """The fixed validation points of ``problem`` and the base network's residual on them (cached for a base
    identified by its weights' hash)."""
    points = validation_points(problem, dtype=dt, device=dev)
    key = (problem.key(), card.get("weights_sha256"), str(dt), str(dev))
    if key not in _BASE_VALIDATION:
        value = validation_residual(problem, net, points)
        if not card.get("weights_sha256"):
            return points, value
        _BASE_VALIDATION[key] = value
    return points, _BASE_VALIDATION[key]


def default_monitors_for(problem: Any, model: nn.Module, seed: int, eval_every: int) -> tuple[list[Monitor],
                                                                                           Stability]:
    """The monitors every run records with (update norms, stability, adapter state, feature change)."""
    stability = Stability()
    mons: list[Monitor] = [UpdateNorm(), stability]
    if any(True for _ in adapter_layers(model)):
        mons.append(AdapterState(every=eval_every))
    mons.append(FeatureChange(problem.sample(256, seed=seed + 7), every=eval_every))
    return mons, stability


def prepare(base: Any, problem: Any, resolved: Resolved, dt: torch.dtype, dev: torch.device, *,
            run_dir: str | Path | None, progress: bool, cuda_graph: bool | str, monitors: Sequence[Monitor],
            default_monitors: bool, saved: Any, checkpoint: Path | None) -> Prepared:
    """Build the run: the base network, the continuation stages, the memory check, the base's error and
    validation residual, the model with the method attached, the monitors and the settings a resume compares."""
    s, meth = resolved.settings, resolved.method
    net, card = resolve_base(base, problem, dt, dev)
    stages = ([] if s["continuation"] == "off" or not card.get("coefficients")
              else problem.stages_from(card["coefficients"], s["continuation"]))
    check_budget(net, s, resolved.loop, len(stages), dt, dev)  # before any point is drawn
    train = train_config(resolved, len(stages), progress=progress, checkpointing=run_dir is not None,
                         cuda_graph=cuda_graph)
    torch.manual_seed(s["seed"])
    base_error = problem.relative_l2(net)
    val_points, val_base = base_validation(problem, net, card, dt, dev)
    model = attach(net, meth, problem, seed=s["seed"], n_points=s["n_points"], base_card=card)
    mons, stability = default_monitors_for(problem, model, s["seed"], s["eval_every"]) if default_monitors \
        else ([], None)
    mons += list(monitors)
    run = Prepared(problem, resolved, model, card, stages, train, mons, stability, base_error, val_points, val_base,
                   Path(run_dir) if run_dir is not None else None, saved, checkpoint)
    run.extra["settings"] = json_safe_tree({
        "problem": problem.name, **{f"problem.{k}": v for k, v in problem.coefficients.items()},
        **{f"method.{k}": v for k, v in meth.describe().items()},
        "base_fingerprint": model.pinn_lora_base["fingerprint"], **pick(s, "compared"),
        "default_monitors": default_monitors, "monitors": len(mons)})
    changed = saved is not None and resume_state.changed_settings(saved[1]["settings"], run.extra["settings"])
    if changed:
        raise ConfigError(f"resume: the run in {run_dir} was started with other settings ({changed}); "
                          "resume with the same configuration")
    return run


def build_trainer(run: Prepared) -> Trainer:
    """The training loop of the run, its monitors ending with the ``metrics.jsonl`` writer (built before the
    run directory is claimed, so what it would refuse is found first: :mod:`pinn_lora.runs.preflight`)."""
    meth = run.resolved.method
    if run.run_dir is not None:
        run.monitors.append(MetricsWriter(run.run_dir / "metrics.jsonl"))
    step = meth.step_for(run.model, run.train.solver, run.train.lm_mu, run.train.lm_adaptive)  # decided once
    return Trainer(run.problem, run.model, step, run.train, monitors=run.monitors,
                   after_step=meth.step_hook(), checkpoint_path=run.checkpoint, method=meth,
                   resume_from=run.saved, settings=run.extra["settings"], stages=run.stages)


def execute(run: Prepared, trainer: Trainer, claim: Any) -> None:
    """Run the training loop (the run directory claimed: ``claim``); a resumed run continues its
    ``metrics.jsonl`` from the checkpoint's records."""
    if run.saved is not None:
        trainer.history.records = claim.guard(resume_state.truncate_metrics, run.run_dir / "metrics.jsonl",
                                              run.saved[1]["records"])
    claim.guard(trainer.run)


def conclude(run: Prepared, trainer: Trainer, dev: torch.device) -> AdaptResult:
    """Judge the run without a reference (:func:`pinn_lora.training.verdict.judge`) and gather its result."""
    history, s, problem = trainer.history, run.resolved.settings, run.problem
    val = validation_residual(problem, run.model, run.val_points)
    judge(history, run.val_base, val, run.val_points.shape[0])
    if history.records and run.run_dir is not None:
        amend_last_record(run.run_dir / "metrics.jsonl", history.records[-1])
    error = history.last("rel_l2") if history.records else run.base_error
    extra = {"device": device_name(dev), "seed": s["seed"],
             # the loop settings, so a run directory describes itself without Hydra's config
             "settings": pick({**s, "cuda_graph": trainer.graph_captured, "base": run.extra["settings_base"]},
                              "recorded")}
    if trainer.graph_why:
        extra["cuda_graph_why"] = trainer.graph_why  # why a CUDA run took eager steps
    if run.stages:
        extra["continuation"] = stage_summary(run.stages + [problem], history.records)
    elif s["continuation"] == "auto" and run.card.get("coefficients"):
        blocked = problem.continuation_blocked(run.card["coefficients"])
        if blocked:  # adapted directly: say why no stages were taken
            extra["continuation_skipped"] = blocked
    main = [r for r in history.records if r.get("phase") == "train" and "rel_l2" in r]
    if s["lbfgs_steps"] and main:
        extra["error_after_method_steps"] = main[-1]["rel_l2"]  # before the L-BFGS finish
    return AdaptResult(problem, run.resolved.method, run.model, history, run.base_error, float(error),
                       trainable_parameters(run.model), run.card, run.run_dir, extra=extra,
                       stability=None if run.stability is None else run.stability.summary(),
                       validation_base=run.val_base, validation=val)
