"""One adaptation, start to finish: base model + target problem + method →
trained adapter, metrics, summary and plots. The CLI (``python -m pinn_lora.adapt``)
composes a config and calls :func:`pinn_lora.runs.from_config.run_config`; scientific code calls
:func:`adapt_to` (``pinn_lora.adapt_to``) directly."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pinn_lora.model.adapters import adapter_layers
from pinn_lora.store import checkpoints as resume_state
from pinn_lora.store import rundir
from pinn_lora.runs.adapter_io import attach, layer_sizes, save_adapter
from pinn_lora.store.tensors import write_json
from pinn_lora.runs.settings import DEFAULTS, LIBRARY, LOOP_OPTIONS, MINIMUM, names
from pinn_lora.model.memory import check_points
from pinn_lora.methods import Method, get_method, trainable_parameters
from pinn_lora.training.monitors import (
    AdapterState,
    FeatureChange,
    MetricsWriter,
    Stability,
    UpdateNorm,
    amend_last_record,
    json_safe,
)
from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.core.runtime import device_name, own_rng
from pinn_lora.training.config import SOLVERS, TrainConfig
from pinn_lora.training.records import History, Monitor
from pinn_lora.training.trainer import Trainer
from pinn_lora.training.verdict import judge, validation_points, validation_residual
from pinn_lora.store.zoo import load_base, shipped

DTYPES = {"float64": torch.float64, "float32": torch.float32}
VERDICTS = {"completed": "", "no_improvement": " | NO IMPROVEMENT: the result's validation residual is not below the "
                                                "base model's; the adaptation did not improve on the base",
            "diverged": " [diverged]"}


_BASE_VALIDATION: dict[tuple, float] = {}


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


@dataclass
class AdaptResult:
    problem: Any
    method: Method
    model: nn.Module
    history: History
    base_error: float
    error: float
    trainable: int
    base_card: dict[str, Any]
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] | None = None  # Stability.summary() of the run (default monitors)
    validation_base: float = float("nan")  # the base's residual on the validation set (pinn_lora.training.verdict)
    validation: float = float("nan")  # the result's

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.history.records

    def summary(self) -> dict[str, Any]:
        return {
            "problem": self.problem.name,
            "coefficients": dict(self.problem.coefficients),
            "base_coefficients": self.base_card.get("coefficients"),
            "method": self.method.describe(),
            "trainable_parameters": self.trainable,
            "steps": self.history.steps,
            "evaluations": self.history.evaluations,
            "wall_time_s": round(self.history.wall_time, 3),
            "base_error": self.base_error,
            "adapted_error": self.error,
            "improvement": (self.base_error / self.error if math.isfinite(self.error) and self.error > 0
                            else float("nan")),
            "validation_residual_base": self.validation_base,
            "validation_residual": self.validation,
            "status": self.history.status,
            "message": self.history.message,
            **({} if self.stability is None else {"stability": {
                k: json_safe(v) for k, v in self.stability.items() if k not in ("status", "message")}}),
            **self.extra,
        }

    def summary_line(self) -> str:
        s = self.summary()
        run = s.get("settings", {})
        how = ""
        if run.get("solver") == "lm":
            how = f"solver=lm(mu0={run.get('lm_mu', TrainConfig.lm_mu):g}) sampling={run.get('sampling')} "
        if s.get("continuation"):
            how += f"stages={len(s['continuation']) - 1} "
        return (f"{s['problem']} {_fmt_coeffs(s['coefficients'])} | "
                f"method={self.method.label(run.get('solver', 'method'))} {how}"
                f"trainable={s['trainable_parameters']} steps={s['steps']} time={s['wall_time_s']:.1f}s | "
                f"rel. L2 on target: base {s['base_error']:.3e} -> adapted {s['adapted_error']:.3e} "
                f"({s['improvement']:.1f}x) | validation residual: base {s['validation_residual_base']:.3e} -> "
                f"{s['validation_residual']:.3e}{VERDICTS.get(s['status'], ' [' + s['status'] + ']')}")

    def save(self, run_dir: str | Path, plots: bool = True) -> Path:
        """Write summary.json, adapter.safetensors + card.json (:func:`pinn_lora.runs.adapter_io.save_adapter`;
        reload with :func:`pinn_lora.load_adapter`) and plots into ``run_dir``, which is claimed for
        it unless this process owns it already (:mod:`pinn_lora.store.rundir`: nothing is overwritten)."""
        run_dir = Path(run_dir)
        if not rundir.owned(run_dir):
            with rundir.claim(run_dir):
                return self.save(run_dir, plots)
        save_adapter(self.model, run_dir, self.method, self.problem, overwrite=True)  # in its own directory
        write_json(run_dir / "summary.json", self.summary())
        if plots:
            from pinn_lora.runs.report import plot_losses, plot_solution

            (run_dir / "plots").mkdir(exist_ok=True)
            title = f"{self.method.name} on {self.problem!r}"
            plot_losses(self.metrics, run_dir / "plots" / "loss.png", title, base_error=self.base_error)
            plot_solution(self.problem, self.model, run_dir / "plots" / "solution.png", title)
        return run_dir


def _fmt_coeffs(c: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in c.items())


def recommendations(problem_name: str) -> dict[str, Any]:
    """The ``adapt`` section of ``configs/problem/<name>.yaml``; for a family without one (a plugin's), its
    class's ``recommended`` (empty: adapt_to's defaults)."""
    from omegaconf import OmegaConf

    from pinn_lora.store.schema import config_dir

    path = Path(config_dir()) / "problem" / f"{problem_name}.yaml"
    if not path.is_file():
        return dict(PROBLEMS.get(problem_name).recommended) if problem_name in PROBLEMS else {}
    return OmegaConf.to_container(OmegaConf.load(path)).get("adapt") or {}


def method_recommendation(rec: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The options a family's recommendations ``rec`` (its ``adapt`` section) give the method ``method``:
    ``adapt.method.default`` (the keys of it that the method has), updated by ``adapt.method.<method>``."""
    table = rec.get("method") or {}
    default = dict(table.get("default") or {})
    if default and method in METHODS:  # a plugin method without, say, precondition is not given one
        default = {k: v for k, v in default.items() if k in METHODS.get(method).defaults}
    return {**default, **(table.get(method) or {})}


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
    """Adapt a base model to ``problem`` (its coefficients are the target). The keyword defaults are
    :class:`pinn_lora.runs.settings.AdaptConfig`'s (the command line's), where each setting is described.

    ``base`` is a shipped name ("burgers"), a path to a saved base, a
    (network, card) pair, or a network (any module with ``linears``, e.g. a ``deepxde.nn.FNN``;
    it is copied, not changed). ``steps``, ``n_points``, ``lbfgs_steps`` and method
    options left out take the problem's recommendations: ``recommended`` (the
    ``adapt`` section of a problem config), by default read from
    ``configs/problem/<name>.yaml``. Returns an :class:`AdaptResult`; with ``run_dir`` the metrics,
    adapter, card, summary and plots are written there.

    Monitors, in this order: with ``default_monitors`` :class:`~pinn_lora.training.monitors.UpdateNorm`,
    :class:`~pinn_lora.training.monitors.Stability` (its summary goes into ``summary()["stability"]``),
    :class:`~pinn_lora.training.monitors.AdapterState` (adapter methods) and
    :class:`~pinn_lora.training.monitors.FeatureChange` (256 probe points), the last two every
    ``eval_every`` steps; then ``monitors``; then, with ``run_dir``, the ``metrics.jsonl`` writer
    (so it writes every key the monitors before it add).

    Speed: ``derivatives`` picks the derivative engine (``auto``: Taylor-mode jets on CUDA,
    nested autograd on CPU); ``cuda_graph`` (``auto``: on CUDA when the method allows) captures
    the whole step in a CUDA graph, the host reading results every ``sync_every`` steps
    (0: ``eval_every``); in that mode the model-reading monitors see the model at those reads.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint (written every
    ``checkpoint_every`` steps and at the end of the method's steps; it holds the optimiser or
    integrator state, the method's and monitors' running state and the random generators), with
    the same settings (a difference is refused): the result is the one an uninterrupted run gives,
    and ``metrics.jsonl`` continues without repeated or missing steps.

    ``solver``: ``lm`` (Levenberg–Marquardt on the trainable parameters; ODELoRA's implicit scheme)
    or ``method`` (the method's own first-order dynamics; the recommendations' ``first_order``
    section then applies); ``sampling``: ``uniform``, ``rad`` (residual-based adaptive points, drawn
    anew) or ``rar_d`` (residual-based refinement: the set grows by such a draw every ``resample_every``
    steps); ``loop_options``: ``lm_mu``, ``lm_adaptive``, ``rad_k``, ``rad_c``, ``rad_pool``, ``rar_add``,
    ``stage_steps``, ``stage_tol`` (:class:`~pinn_lora.training.trainer.TrainConfig`). Left out, they take the problem's recommendations.

    ``continuation``: ``auto``, ``off`` or a number N of intermediate stages. The run first adapts
    to coefficients between the base's and the target (:meth:`~pinn_lora.pde.problem.Problem.stages_from`:
    evenly spaced, geometric in a viscosity or diffusion, linear in a reaction rate, in k² for a
    wavenumber; ``auto``: as many as the family's stage width asks for), each stage warm-starting
    the next and taking at most ``stage_steps`` steps (fewer once a step starts at a loss ≤
    ``stage_tol``); these steps come on top of ``steps``, which the target keeps, plus any steps a
    stage left unused. Records carry ``stage``; ``summary()["continuation"]`` lists the stages.

    The verdict (``summary()["status"]``): ``completed``, ``diverged``, or ``no_improvement`` when
    the result's residual on the fixed validation set (:mod:`pinn_lora.training.verdict`) is not below
    the base network's."""
    from pinn_lora.pde.problem import Problem

    if not isinstance(problem, Problem):
        raise TypeError(f"adapt_to: problem must be a problem object, e.g. pinn_lora.get_problem({problem!r}) "
                        f"(its coefficients are the target); got {type(problem).__name__} {problem!r}")
    if run_dir is not None and not isinstance(run_dir, (str, Path)):
        raise TypeError(f"adapt_to: run_dir must be a path (str or pathlib.Path), got {type(run_dir).__name__}")
    if resume and run_dir is None:
        raise ConfigError("resume=true needs the run directory to continue (out=... / run_dir=...)")
    if run_dir is not None:  # refused now; claimed once the input is known to be good (rundir)
        rundir.check(run_dir, resume=resume)
    checkpoint = Path(run_dir) / "checkpoint.safetensors" if run_dir is not None else None
    dev = resolve_device(device)
    saved = resume_state.load(checkpoint, dev) if resume else None
    dt = resolve_dtype(dtype)
    dtype = str(dt).replace("torch.", "")  # dtype=torch.float32 recorded as its name
    rec = dict(recommendations(problem.name) if recommended is None else recommended)
    if isinstance(method, Method):
        meth = method
    else:
        meth = get_method(method, **{**method_recommendation(rec, method), **method_options})
    given = solver is not None
    solver = rec.get("solver", "method") if solver is None else solver
    if solver not in SOLVERS:
        raise ConfigError(f"solver={solver!r}; choose one of {', '.join(SOLVERS)}")
    solver = meth.solver_for(solver, given)
    if solver == "method":
        rec.update(rec.get("first_order") or {})
    sampling = rec.get("sampling", "uniform") if sampling is None else sampling
    # the recommended Levenberg–Marquardt options only where its steps are taken
    loop = {**{k: v for k, v in (rec.get("loop") or {}).items() if solver == "lm" or not k.startswith("lm_")},
            **(loop_options or {})}
    unknown = sorted(set(loop) - set(LOOP_OPTIONS))
    if unknown:
        raise ConfigError(f"loop option {', '.join(unknown)} unknown; options: {', '.join(LOOP_OPTIONS)}")
    continuation = rec.get("continuation", "off") if continuation is None else continuation
    if continuation not in ("auto", "off") and (isinstance(continuation, bool) or not isinstance(continuation, int)
                                                or continuation < 0):
        raise ConfigError(f"continuation={continuation!r}: use auto, off or a number of intermediate stages >= 0")
    steps = rec.get("steps", 1000) if steps is None else steps
    n_points = rec.get("n_points", 2000) if n_points is None else n_points
    lbfgs_steps = rec.get("lbfgs_steps", 0) if lbfgs_steps is None else lbfgs_steps
    resample_every = rec.get("resample_every", 100) if resample_every is None else resample_every
    ints = check_ints({"steps": steps, "n_points": n_points, "eval_every": eval_every, "lbfgs_steps": lbfgs_steps,
                       "checkpoint_every": checkpoint_every, "seed": seed, "sync_every": sync_every,
                       "resample_every": resample_every})
    steps, n_points, eval_every, lbfgs_steps = ints["steps"], ints["n_points"], ints["eval_every"], ints["lbfgs_steps"]
    checkpoint_every, seed, sync_every, resample_every = (ints[k] for k in ("checkpoint_every", "seed", "sync_every",
                                                                            "resample_every"))
    # the resolved settings by AdaptConfig's names: a resume compares the `compared` ones, summary.json records
    run = {**ints, "sampler": sampler, "dtype": dtype, "derivatives": derivatives, "solver": solver,
           "sampling": sampling, **loop, "continuation": continuation}
    stage_steps = loop.get("stage_steps", TrainConfig.stage_steps)
    net, card = resolve_base(base, problem, dt, dev)
    stages = ([] if continuation == "off" or not card.get("coefficients")
              else problem.stages_from(card["coefficients"], continuation))
    if getattr(net, "linears", None):  # before any point is drawn (attach draws n_points for its start)
        if sampling == "rar_d":  # the set grows by a draw every resample_every steps (and at each stage)
            draws = (steps + len(stages) * stage_steps) // resample_every + len(stages)
            grown = n_points + draws * TrainConfig(n_points=n_points, rar_add=loop.get("rar_add", 0)).rar_points
            check_points(grown, layer_sizes(net), dt, dev, key="n_points with the points sampling=rar_d adds",
                         error=ConfigError)
        else:
            check_points(n_points, layer_sizes(net), dt, dev, error=ConfigError,
                         pool=loop.get("rad_pool", 8) if sampling == "rad" else 1)
    train_cfg = TrainConfig(steps=steps + len(stages) * stage_steps, n_points=n_points, resample_every=resample_every, eval_every=eval_every,
                            solver=solver, sampling=sampling, **loop, seed=seed, progress=progress, checkpoint_every=checkpoint_every if run_dir else 0,
                            sampler=sampler, lbfgs_steps=lbfgs_steps, derivatives=derivatives,
                            cuda_graph=cuda_graph, sync_every=sync_every)
    torch.manual_seed(seed)
    base_error = problem.relative_l2(net)
    val_points = validation_points(problem, dtype=dt, device=dev)
    val_key = (problem.key(), card.get("weights_sha256"), str(dt), str(dev))
    if val_key in _BASE_VALIDATION:  # a shipped or saved base, identified by its weights' hash
        val_base = _BASE_VALIDATION[val_key]
    else:
        val_base = validation_residual(problem, net, val_points)
        if card.get("weights_sha256"):
            _BASE_VALIDATION[val_key] = val_base
    model = attach(net, meth, problem, seed=seed, n_points=n_points, base_card=card)
    dynamics = meth.step_for(model, solver, train_cfg.lm_mu, train_cfg.lm_adaptive)  # decided once
    stability = Stability() if default_monitors else None
    mons: list[Monitor] = []
    if default_monitors:
        mons += [UpdateNorm(), stability]
        if any(True for _ in adapter_layers(model)):
            mons.append(AdapterState(every=eval_every))
        probe_features = problem.sample(256, seed=seed + 7)
        mons.append(FeatureChange(probe_features, every=eval_every))
    mons += list(monitors)
    settings = json_safe_tree({
        "problem": problem.name, **{f"problem.{k}": v for k, v in problem.coefficients.items()},
        **{f"method.{k}": v for k, v in meth.describe().items()},
        "base_fingerprint": model.pinn_lora_base["fingerprint"], **pick(run, "compared"),
        "default_monitors": default_monitors, "monitors": len(mons)})
    records: list[dict[str, Any]] = []
    changed = saved is not None and resume_state.changed_settings(saved[1]["settings"], settings)
    if changed:
        raise ConfigError(f"resume: the run in {run_dir} was started with other settings ({changed}); "
                          "resume with the same configuration")
    claim = rundir.claim(run_dir, resume=resume) if run_dir is not None else rundir.UNCLAIMED
    if saved is not None:
        records = claim.guard(resume_state.truncate_metrics, Path(run_dir) / "metrics.jsonl", saved[1]["records"])
    if run_dir is not None:
        mons.append(MetricsWriter(Path(run_dir) / "metrics.jsonl"))
    trainer = Trainer(problem, model, dynamics, train_cfg, monitors=mons, after_step=meth.step_hook(),
                      checkpoint_path=checkpoint, method=meth, resume_from=saved, settings=settings, stages=stages)
    trainer.history.records = records
    history = claim.guard(trainer.run)
    val = validation_residual(problem, model, val_points)
    judge(history, val_base, val, val_points.shape[0])
    if history.records and run_dir is not None:
        amend_last_record(Path(run_dir) / "metrics.jsonl", history.records[-1])
    error = history.last("rel_l2") if history.records else base_error
    main = [r for r in history.records if r.get("phase") == "train" and "rel_l2" in r]
    extra = {"device": device_name(dev), "seed": seed,
             # the loop settings, so a run directory describes itself without Hydra's config
             "settings": pick({**run, "cuda_graph": trainer.graph_captured,
                               "base": str(base) if isinstance(base, (str, Path)) else "(network given)"}, "recorded")}
    if trainer.graph_why:
        extra["cuda_graph_why"] = trainer.graph_why  # why a CUDA run took eager steps
    if stages:
        extra["continuation"] = stage_summary(stages + [problem], history.records)
    elif continuation == "auto" and card.get("coefficients"):
        blocked = problem.continuation_blocked(card["coefficients"])
        if blocked:  # adapted directly: say why no stages were taken
            extra["continuation_skipped"] = blocked
    if lbfgs_steps and main:
        extra["error_after_method_steps"] = main[-1]["rel_l2"]  # before the L-BFGS finish
    result = AdaptResult(problem, meth, model, history, base_error, float(error), trainable_parameters(model), card,
                         Path(run_dir) if run_dir else None, extra=extra,
                         stability=None if stability is None else stability.summary(),
                         validation_base=val_base, validation=val)
    if run_dir is not None:
        claim.guard(result.save, run_dir, plots=plots)
    claim.release()
    return result


def stage_summary(problems: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per continuation stage: its coefficients, first step, steps taken and losses at the start
    of its first and last step (from the records' ``stage``)."""
    out = []
    for i, p in enumerate(problems):
        mine = [r for r in records if r.get("stage") == i and r.get("phase") == "train"]
        out.append({"stage": i, "coefficients": dict(p.coefficients), "first_step": mine[0]["step"] if mine else None,
                    "steps": len(mine), "loss_first": mine[0]["loss"] if mine else None,
                    "loss_last": mine[-1]["loss"] if mine else None})
    return out


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
