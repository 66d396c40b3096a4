"""Many coefficients at once: K copies of one base network, each adapted to its own
coefficients, trained side by side in one vectorised step.

Each copy is attached by its own method instance (its own seed-derived factors and
generators, exactly as a separate run would draw them). The step evaluates all K networks in
one stacked Taylor-mode pass (:func:`pinn_lora.model.derivatives.mlp_jets` with (K, out, in)
weights: one batched matrix product per layer); each copy's output transform and residual
then run on its own slice with its own coefficients. The loss is the sum of the K losses, so
each copy's gradient is its own loss's gradient, and one dynamics instance over all copies'
parameters moves each copy as its own run would (Adam and ODELoRA update each tensor/layer
on its own). Result: the same trajectories as K separate runs with the same seed (tested to
1e-8), in one step whose cost grows far slower than K on a GPU.

Limits: every copy sees the same collocation points (a separate run with the same seed draws
the same ones); a divergence of any copy stops the batch (the last good state of every copy is
kept); the step-size controller of an adaptive ODELoRA scheme would couple the copies, so
those schemes are refused."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pinn_lora.runs.resolve import (ConfigError, check_budget, method_with_options, recipe_of, resolve_base,
                                    resolve_device, resolve_dtype, resolve_settings)
from pinn_lora.runs.ending import end_phase
from pinn_lora.runs.settings import DEFAULTS
from pinn_lora.store import rundir
from pinn_lora.model.derivatives import JetDerivatives, _plan, why_no_jets, layer_weight, mlp_jets, needed_derivatives
from pinn_lora.model.jacobian import weight_with
from pinn_lora.core.runtime import own_rng
from pinn_lora.training.config import TrainConfig
from pinn_lora.training.losses import residual_terms
from pinn_lora.training.objective import gradient_norm as _norm
from pinn_lora.training.records import History
from pinn_lora.training.trainer import Trainer
from pinn_lora.training.verdict import judge, validation_points, validation_residual


def row_problem(problems: Sequence[Any], n: int, dtype: torch.dtype, device: torch.device) -> Any:
    """A copy of ``problems[0]`` whose coefficients are per-row tensors of shape (K·n, 1): rows k·n … (k+1)·n − 1
    hold problem k's values, so one residual evaluation over K copies' stacked rows uses each copy's own
    coefficients (the families' residuals are written with broadcasting operations)."""
    row = copy.copy(problems[0])
    row.coefficients = {name: torch.tensor([p.coefficients[name] for p in problems], dtype=dtype, device=device)
                        .repeat_interleave(n).unsqueeze(1) for name in problems[0].coefficients}
    return row


class Stacked(nn.Module):
    """K adapted networks; ``linears`` lists every copy's layers in order, so a method's
    dynamics (which scans ``model.linears``) covers all copies."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.linears = nn.ModuleList([lin for m in members for lin in m.linears])
        self.activation_name = members[0].activation_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


class BatchTrainer(Trainer):
    """The training loop over K stacked copies. Each record carries the totals (``loss``, ``loss_<term>``,
    ``grad_norm``) and ``copies``: one dict per copy with its own ``loss``, ``loss_<term>``, ``grad_norm``
    and, at evaluations, ``rel_l2``; :meth:`split` turns them into one history per copy."""

    scored = False  # the Guard keeps the last verified state (its score would mix the copies)

    def __init__(self, problems: Sequence[Any], stacked: Stacked, dynamics: Any, cfg: TrainConfig,
                 after_step: Callable | None = None) -> None:
        why = why_no_jets(stacked.members[0])
        if why:
            raise ValueError(f"batched coefficients need the jet path: {why}")
        super().__init__(problems[0], stacked, dynamics, cfg, after_step=after_step)
        self.problems, self.members = list(problems), list(stacked.members)
        names = {needed_derivatives(p) for p in self.problems}
        self.names = sorted(set().union(*names))
        self.plan = _plan(self.names, self.problem.variables)  # (first, second) derivative variables
        self.member_params = [[p for p in m.parameters() if p.requires_grad] for m in self.members]
        self.errors: list[float] = []
        self._rows: tuple = (None, None, None)  # (points' shape/dtype/device, row problem, scales) of the last pass
        self._vmapped = [self._can_vmap(i) for i in range(len(self.members[0].linears))]
        self.why_not_flat = self._can_flatten() if len(self.members) > 1 else "one copy"
        self.flattened = not self.why_not_flat

    def _loss_terms(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term (``pde`` …) as one value per copy, from one stacked jet pass; the loss is their sum.
        Flattened (:attr:`flattened`): the K copies' rows go through the output transform and the residual
        once, with per-row coefficients; otherwise copy by copy."""
        jets = mlp_jets(self._weights(), self.model.activation_name, points.detach(), *self.plan)
        if self.flattened:
            return self._flat_terms(jets, points)
        return self._copy_terms(jets, points)

    def _weights(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Every layer's K weights and biases, stacked: (K, out, in) and (K, out). A layer whose K copies are
        one adapter class is assembled by one vmapped call of its ``weight()`` over the copies' stacked
        parameters and buffers (a fixed number of kernels whatever K; :meth:`_can_vmap`), else copy by copy."""
        out = []
        for i, vm in enumerate(self._vmapped):
            mods = [m.linears[i] for m in self.members]
            if vm is not None:
                stacked = {name: torch.stack([getattr(mod, name) for mod in mods]) for name in vm[1]}
                out.append((vm[0](stacked), stacked.get("bias0")))
                continue
            pairs = [layer_weight(mod) for mod in mods]
            out.append((torch.stack([wb[0] for wb in pairs]),
                        None if pairs[0][1] is None else torch.stack([wb[1] for wb in pairs])))
        return out

    def _can_vmap(self, i: int) -> tuple[Callable, list[str]] | None:
        """For layer ``i``: (vmapped weight function, tensor names) when its K copies' weights can be assembled
        in one vmapped call, else None: plain ``nn.Linear`` layers, layers whose dynamics hook dL/dW
        (``capture_weight_grad``), classes whose ``weight()`` does not vmap, or whose vmapped result differs
        from the copy-by-copy one (checked here, once) are assembled copy by copy."""
        from pinn_lora.model.adapters.base import AdapterLinear

        mods = [m.linears[i] for m in self.members]
        first = mods[0]
        if (not isinstance(first, AdapterLinear) or any(type(m) is not type(first) for m in mods)
                or any(getattr(m, "capture_weight_grad", False) for m in mods)):
            return None

        def own(m: nn.Module) -> list[tuple[str, torch.Size]]:  # the layer's own tensors (no submodules)
            return [(n, t.shape) for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]]

        names = [n for n, _ in own(first)]
        if any(dict(m.named_children()) or own(m) != own(first) for m in mods):
            return None

        fn = torch.func.vmap(lambda tensors: weight_with(first, tensors))
        try:
            with torch.no_grad():
                got = fn({n: torch.stack([getattr(m, n) for m in mods]) for n in names})
                want = torch.stack([m.weight() for m in mods])
        except Exception:  # noqa: BLE001 - any failure: this class's weight() does not vmap
            return None
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-12, atol=1e-14):
            return None
        return fn, names

    def _copy_terms(self, jets: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        per: list[dict[str, torch.Tensor]] = []
        for k, (prob, m) in enumerate(zip(self.problems, self.members)):
            d = JetDerivatives(None, points, prob.variables, self.names, stacked=jets[k:k + 1],
                               transform=getattr(m, "_output_transform", None))
            per.append(residual_terms(prob, d, points, self.cfg.causal_eps, self.cfg.causal_bins))
        return {name: torch.stack([terms[name] for terms in per]) for name in per[0]}

    def _flat_terms(self, jets: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (points.shape[0], points.dtype, points.device)
        if self._rows[0] != key:  # built outside a graph capture (the warm-up steps come first)
            self._rows = (key, row_problem(self.problems, points.shape[0], points.dtype, points.device),
                          torch.tensor([p.residual_scale() for p in self.problems], dtype=points.dtype,
                                       device=points.device).unsqueeze(1))
        _, prob, scale = self._rows
        d = JetDerivatives(None, points, prob.variables, self.names, stacked=jets,
                           transform=getattr(self.members[0], "_output_transform", None))
        return residual_terms(prob, d, points, self.cfg.causal_eps, self.cfg.causal_bins, copies=len(self.members),
                              scale=scale)

    def _can_flatten(self) -> str:
        """Why the copies' residuals cannot run as one set of kernels over K·N rows, or ''. They can when every
        problem is the same family with the same settings besides its coefficients and the family's output
        transform and residual broadcast over per-row coefficient tensors: checked once, on a
        few points, against the copy-by-copy terms (a residual that needs a Python number, e.g.
        ``math.sqrt(self.k)``, fails the check and the batch runs copy by copy)."""
        first = self.problems[0]
        rest = {k: v for k, v in vars(first).items() if k != "coefficients"}
        if any(type(p) is not type(first) or {k: v for k, v in vars(p).items() if k != "coefficients"} != rest
               for p in self.problems[1:]):
            return "the problems differ in more than their coefficients"
        like = self.member_params[0][0] if self.member_params[0] else next(self.model.parameters())
        probe = torch.as_tensor(first.sample(8, seed=0), dtype=like.dtype, device=like.device)
        with torch.no_grad():
            jets = mlp_jets(self._weights(), self.model.activation_name, probe, *self.plan)
        each = self._copy_terms(jets, probe)
        try:
            self._rows = (None, None, None)
            flat = self._flat_terms(jets, probe)
        except Exception as exc:  # noqa: BLE001 - any failure means: not broadcastable
            return f"the residual does not broadcast over per-row coefficients ({type(exc).__name__}: {exc})"
        for name, v in each.items():
            if name not in flat or flat[name].shape != v.shape or not torch.allclose(flat[name], v, rtol=1e-10,
                                                                                      atol=0.0):
                return f"the residual over per-row coefficients differs from the copy-by-copy one ({name})"
        return ""

    def _gradient_stats(self, stash: dict[str, Any]) -> None:
        """Each copy's gradient norm and the total."""
        stash["copy_grad_norm"] = torch.stack([_norm(ps) for ps in self.member_params])
        stash["grad_norm"] = stash["copy_grad_norm"].norm()

    def _step_stats(self, stash: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {**super()._step_stats(stash), "copy_grad_norm": stash["copy_grad_norm"]}

    def _stat_fields(self, stats: dict[str, list[float]]) -> dict[str, Any]:
        terms = {k: v for k, v in stats.items() if k.startswith("loss_")}
        copies = [{"loss": sum(v[i] for v in terms.values()), **{k: v[i] for k, v in terms.items()},
                   "grad_norm": stats["copy_grad_norm"][i]} for i in range(len(self.members))]
        return {**{k: sum(v) for k, v in terms.items()}, "grad_norm": stats["grad_norm"][0], "copies": copies}

    def evaluate(self) -> float:
        """Every copy's relative L2 error (kept in ``errors``); returns the largest."""
        self.errors = [p.relative_l2(m) for p, m in zip(self.problems, self.members)]
        return max(self.errors)

    def _emit(self, rec: dict[str, Any], advance: int = 1) -> None:
        if "rel_l2" in rec:
            copies = rec.setdefault("copies", [{} for _ in self.members])
            for own, error in zip(copies, self.errors):
                own["rel_l2"] = error
        super()._emit(rec, advance)

    def split(self) -> list[History]:
        """One history per copy: its own loss, terms, gradient norm and error per record."""
        out = []
        for k in range(len(self.members)):
            recs = []
            for r in self.history.records:
                own = {"step": r["step"], "phase": r["phase"], "loss": r["loss"]}
                own.update(r["copies"][k] if "copies" in r else {})
                for key in ("lr", "evaluations", "time", "between_syncs"):
                    if key in r:
                        own[key] = r[key]
                recs.append(own)
            h = self.history
            out.append(History(records=recs, status=h.status, message=h.message, wall_time=h.wall_time,
                               evaluations=h.evaluations, steps=h.steps))
        return out


@own_rng  # each copy's torch.manual_seed stays inside the call
def adapt_many(base: Any, problems: Sequence[Any], method: str, *, steps: int | None = DEFAULTS.steps,
               n_points: int | None = DEFAULTS.n_points, resample_every: int | None = DEFAULTS.resample_every,
               eval_every: int = DEFAULTS.eval_every, seed: int = DEFAULTS.seed,
               device: str | torch.device = DEFAULTS.device, dtype: str = DEFAULTS.dtype,
               lbfgs_steps: int | None = DEFAULTS.lbfgs_steps, sampler: str = DEFAULTS.sampler,
               run_dir: str | Path | None = None, progress: bool = DEFAULTS.progress, plots: bool = DEFAULTS.plots,
               cuda_graph: bool | str = DEFAULTS.cuda_graph, sync_every: int = DEFAULTS.sync_every,
               recommended: dict | None = None, **method_options: Any) -> list:
    """Adapt one base model to each of ``problems`` (the same family, other coefficients) in one
    batched run; returns one :class:`~pinn_lora.runs.result.AdaptResult` per problem (and, with
    ``run_dir``, writes one run directory per problem under it: ``<k>_<coefficients>/``). The keyword
    defaults are :class:`pinn_lora.runs.settings.AdaptConfig`'s; settings left None take the family's recipe
    for first-order steps (``solver=method``: the copies take the method's own dynamics)."""
    check_batch_request(problems, lbfgs_steps, run_dir)
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dt = resolve_dtype(dtype)
    given = {"steps": steps, "n_points": n_points, "resample_every": resample_every, "eval_every": eval_every,
             "seed": seed, "sync_every": sync_every}
    resolved = resolve_settings(problems[0], method, given, recommended=recommended, method_options=method_options,
                                solver="method")
    s = resolved.settings
    net0, card = resolve_base(base, problems[0], dt, dev)
    check_budget(net0, s, resolved.loop, 0, dt, dev, copies=len(problems))
    cfg = TrainConfig(steps=s["steps"], n_points=s["n_points"], resample_every=s["resample_every"],
                      eval_every=s["eval_every"], seed=seed, progress=progress, sampler=sampler, derivatives="jets",
                      cuda_graph=cuda_graph, sync_every=sync_every)
    copies = [_attach_copy(net0, card, prob, method, problems[0], recommended, method_options, s, dt, dev)
              for prob in problems]
    methods, models = [c["method"] for c in copies], [c["model"] for c in copies]
    if getattr(methods[0], "scheme", None) in ("bs23", "dopri5"):
        raise ConfigError(f"adapt_many: scheme {methods[0].scheme} chooses one step size for all copies; "
                          "use a fixed-step scheme (euler, heun, midpoint, rk4)")
    stacked = Stacked(models)
    trainer = BatchTrainer(problems, stacked, methods[0].dynamics(stacked), cfg, after_step=_hooks(methods, models))
    claim = rundir.claim(run_dir) if run_dir is not None else rundir.UNCLAIMED
    claim.guard(trainer.run)
    settings = {"steps": s["steps"], "n_points": s["n_points"], "resample_every": s["resample_every"],
                "eval_every": s["eval_every"], "derivatives": "jets", "cuda_graph": trainer.graph_captured,
                "dtype": dtype, "flattened": trainer.flattened or trainer.why_not_flat}
    results = []
    with end_phase(claim, run_dir):  # every copy is written before a Ctrl-C stops the run (pinn_lora.runs.ending)
        for k, (prob, copy_, hist) in enumerate(zip(problems, copies, trainer.split())):
            res = _judge_copy(prob, copy_, hist, card, {"batch": {"index": k, "size": len(problems)}, "seed": seed,
                                                        "settings": settings})
            if run_dir is not None:
                label = "_".join(f"{c}={v:g}" for c, v in prob.coefficients.items())
                sub = Path(run_dir) / f"{k:02d}_{label}"  # new, inside the directory this run claimed
                claim.guard(_write_member, sub, res, copy_["model"], prob, hist, plots)
            results.append(res)
    return results


def check_batch_request(problems: Sequence[Any], lbfgs_steps: int | None, run_dir: str | Path | None) -> None:
    """Refuse a batch that cannot run: no problems, several families, an L-BFGS finish, a taken run directory."""
    if not problems:
        raise ConfigError("adapt_many: no problems given")
    fam = {p.name for p in problems}
    if len(fam) != 1:
        raise ConfigError(f"adapt_many: the problems must be one family, got {sorted(fam)}")
    if lbfgs_steps:
        raise ConfigError("adapt_many: an L-BFGS finish would couple the copies (one line search); use lbfgs_steps=0")
    if run_dir is not None:  # refused now; claimed once the input is known to be good
        rundir.check(run_dir)


def _attach_copy(net0: nn.Module, card: dict, prob: Any, method: str, first: Any, recommended: Any,
                 options: Any, s: dict, dt: torch.dtype, dev: torch.device) -> dict[str, Any]:
    """One copy: its own method instance (seed-derived factors, as a separate run draws them), the base with
    the copy's output transform, its base error and the verdict's validation set."""
    from pinn_lora.runs.adapter_io import attach

    torch.manual_seed(s["seed"])
    meth = method_with_options(method, recipe_of(first, recommended), options)
    net = copy.deepcopy(net0)
    net.apply_output_transform(prob.output_transform)
    base_error = prob.relative_l2(net)
    points = validation_points(prob, dtype=dt, device=dev)
    val_base = validation_residual(prob, net, points)
    model = attach(net, meth, prob, seed=s["seed"], n_points=s["n_points"], base_card=card)
    return {"method": meth, "model": model, "base_error": base_error, "points": points, "val_base": val_base}


def _hooks(methods: Sequence[Any], models: Sequence[nn.Module]) -> Callable | None:
    """Every copy's ``after_step`` in one hook (None when the method has none)."""
    if methods[0].step_hook() is None:
        return None

    def after_step(step: int, model: nn.Module, dyn: Any) -> None:
        for meth, m in zip(methods, models):
            meth.after_step(step, m, dyn)

    after_step.in_place = methods[0].hook_in_place  # type: ignore[attr-defined]
    return after_step


def _judge_copy(prob: Any, c: dict[str, Any], hist: History, card: dict, extra: dict) -> Any:
    """One copy's result, judged on its own validation set."""
    from pinn_lora.methods import trainable_parameters
    from pinn_lora.runs.result import AdaptResult

    err = hist.last("rel_l2")
    val = validation_residual(prob, c["model"], c["points"])
    judge(hist, c["val_base"], val, c["points"].shape[0])
    return AdaptResult(prob, c["method"], c["model"], hist, c["base_error"],
                       float(err if err is not None else c["base_error"]), trainable_parameters(c["model"]), card,
                       extra=extra, validation_base=c["val_base"], validation=val)


def _write_member(sub: Path, res: Any, model: nn.Module, problem: Any, hist: History, plots: bool) -> None:
    """One copy's run directory: metrics.jsonl, then what :meth:`AdaptResult.save` writes."""
    from pinn_lora.training.monitors import MetricsWriter

    sub.mkdir()
    writer = MetricsWriter(sub / "metrics.jsonl")
    writer.on_start(model, problem)
    for r in hist.records:
        writer.on_record(r)
    writer.on_end(hist)
    res.run_dir = sub
    res.save(sub, plots=plots)
