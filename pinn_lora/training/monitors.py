"""Monitors: small observers of the training loop.

A monitor sees the model once (``on_start(model, problem)``), then every
record the loop emits (``on_record(record)``, a flat dict) and the history at
the end (``on_end(history)``). It never touches the loop itself, so the same
classes can later run as DeepXDE callbacks. A monitor that *measures* adds
keys to the record dict it is given; monitors run in order, so a writer
placed after the measuring monitors writes their keys too
(:func:`pinn_lora.adapt_to` puts :class:`MetricsWriter` last).

Measuring monitors: :class:`UpdateNorm` (every record), :class:`Stability`
(every record, plus a run summary), :class:`AdapterState` and
:class:`FeatureChange` (every ``every`` steps and at every record carrying
``rel_l2``). Writers: :class:`MetricsWriter` (``metrics.jsonl``),
:class:`TensorBoardWriter` (needs the ``tensorboard`` package).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch
from torch import nn

from pinn_lora.model.adapters.base import AdapterLinear
from pinn_lora.training.records import History, Monitor

# metrics.jsonl: one flat JSON object per record (one per method step, one per L-BFGS call of up to
# 10 iterations, and a closing "check" record when the final state diverged). Non-finite floats are
# written as the strings "nan"/"inf"; null means "undefined here" (see the key). <i> is the index of
# the layer in the network's ``linears`` (0 = input layer), as in card.json's "adapted_layers".
METRICS_SCHEMA = {
    # written by the Trainer
    "step": "int: index of the step (L-BFGS: steps before this call)",
    "phase": "train | lbfgs | check (the final state re-evaluated because it diverged)",
    "loss": "float: normalised total residual loss at the parameters *before* this step",
    "loss_<term>": "float: one normalised residual term (e.g. loss_pde), same point as loss",
    "grad_norm": "float: ‖∇loss‖ over the trainable parameters, same point as loss",
    "lr": "float: the step size this step took (adaptive schemes report the accepted one)",
    "evaluations": "int: loss+gradient evaluations so far",
    "time": "float: seconds since the start of training",
    "rel_l2": "float: relative L2 error vs the reference (every eval_every steps and at the end)",
    "lm_tries": "int: solver=lm: proposals tried in this step (each a damped solve and one loss evaluation)",
    "lm_accepted": "bool: solver=lm: whether a proposal lowered the loss on the step's points and was taken",
    "gain_ratio": "float: solver=lm: actual / predicted decrease of the last proposal (lr is its h = 1/mu)",
    "stage": "int: continuation runs only: the stage the step trained (0 = the first intermediate coefficients; "
             "the last index = the target; summary.json's continuation lists them)",
    "validation_residual_base": "float: last record only: the base network's residual on the fixed validation "
                                "set (pinn_lora.training.verdict)",
    "validation_residual": "float: last record only: the result's residual on the same set (the verdict)",
    "between_syncs": "true on graph-mode records the host read after the fact (the model had moved on); "
                     "absent otherwise. Model-reading monitors skip them: their values cover the whole block",
    # UpdateNorm (every record)
    "update_norm": "float: ‖θ_now − θ_previous record‖ of the effective weights W0 + ΔW of adapted layers "
                   "and the plain trainable parameters (merges and basis refreshes do not count)",
    # Stability (only on spike records)
    "spike": "float: loss / running minimum of the previous losses, when it exceeds the factor (10)",
    # AdapterState (adapted layers; every `every` steps and at records with rel_l2); ΔW = W_now − W_start
    "layer<i>/delta_rel": "float: ‖ΔW‖_F / ‖W_start‖_F, W = W0 + delta_weight() (merged weight)",
    "layer<i>/sv<k>": "float: k-th largest singular value of ΔW (k = 1..3)",
    "layer<i>/stable_rank": "float | null: ‖ΔW‖_F² / ‖ΔW‖_2² (null while ΔW = 0)",
    "layer<i>/eff_rank": "float | null: exp(entropy of σ/Σσ) of ΔW (Roy & Vetterli 2007; null while ΔW = 0)",
    "layer<i>/balance": "float | null: ‖BᵀB − AAᵀ‖_F / ‖BᵀB‖_F of the factors (LoRA-like layers; null if B = 0)",
    "layer<i>/cond": "float | null: cond(BᵀB) = (σ_max(B)/σ_min(B))² (LoRA-like layers; null if B = 0)",
    # FeatureChange (hidden layers; every `every` steps and at records with rel_l2)
    "layer<i>/feature_change": "float: ‖h − h_start‖_F / ‖h_start‖_F of hidden layer i's post-activation "
                               "features on a fixed probe set",
}


def json_safe(value: Any) -> Any:
    """A JSON-safe value: non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them readable
    return value


class MetricsWriter(Monitor):
    """Appends every record to ``metrics.jsonl`` (flushed every ``flush_every`` records)."""

    def __init__(self, path: str | Path, flush_every: int = 50) -> None:
        self.path = Path(path)
        self.flush_every = flush_every
        self._fh: IO[str] | None = None
        self._n = 0

    def on_start(self, model: nn.Module, problem: Any) -> None:
        from pinn_lora.store.rundir import owner_root
        from pinn_lora.store.safe_io import open_append

        self._fh = open_append(self.path, owner_root(self.path))  # through no symbolic link

    def on_record(self, record: dict[str, Any]) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps({k: json_safe(v) for k, v in record.items()}) + "\n")
        self._n += 1
        if self._n % self.flush_every == 0:
            self._fh.flush()

    def flush(self) -> None:
        """Write buffered records to disk (the Trainer calls this before each checkpoint)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def on_end(self, history: History) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def amend_last_record(path: str | Path, record: dict[str, Any]) -> None:
    """Replace the last line of a ``metrics.jsonl`` by ``record`` (keys added after it was written),
    atomically (temp file + rename)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return
    lines[-1] = json.dumps({k: json_safe(v) for k, v in record.items()})
    from pinn_lora.store.rundir import write_atomic

    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class TensorBoardWriter(Monitor):
    """Every numeric key of every record as a TensorBoard scalar (tag = key, global step = ``step``).
    Needs the ``tensorboard`` package (``pip install tensorboard``)."""

    def __init__(self, logdir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("TensorBoardWriter needs the tensorboard package (pip install tensorboard); "
                              f"it could not be imported: {exc}") from None
        self._cls = SummaryWriter
        self.logdir = Path(logdir)
        self._writer: Any = None

    def on_start(self, model: nn.Module, problem: Any) -> None:
        self._writer = self._cls(log_dir=str(self.logdir))

    def on_record(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)

    def on_end(self, history: History) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# -- what the monitors look at --------------------------------------------------------------------
def effective_weight(layer: AdapterLinear) -> torch.Tensor:
    """The merged weight W0 + ΔW of an adapted layer (what the layer computes with)."""
    with torch.no_grad():
        return layer.weight().detach()


def adapted_layers(model: nn.Module) -> list[tuple[int, AdapterLinear]]:
    """(index, layer) of every adapter: the index in ``model.linears`` where there is one
    (PINN, DeepXDE's FNN), else the adapter's position among the model's adapters."""
    linears = getattr(model, "linears", None)
    if linears is not None:
        return [(i, m) for i, m in enumerate(linears) if isinstance(m, AdapterLinear)]
    return list(enumerate(m for m in model.modules() if isinstance(m, AdapterLinear)))


def effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Copies of what training moves, in function terms: W0 + ΔW of every adapter, then every
    trainable parameter outside the adapters (a full fine-tune: all weights and biases)."""
    adapters = [m for m in model.modules() if isinstance(m, AdapterLinear)]
    inside = {id(p) for a in adapters for p in a.parameters()}
    out = [effective_weight(a) for a in adapters]
    out += [p.detach().clone() for p in model.parameters() if p.requires_grad and id(p) not in inside]
    return out


def trainable_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _float(x: torch.Tensor) -> float:
    return float(x.item())


def balance(b: torch.Tensor, a: torch.Tensor) -> float | None:
    """‖BᵀB − AAᵀ‖_F / ‖BᵀB‖_F for ΔW ∝ B·A (0: balanced, as gradient flow from a balanced
    start keeps it); None when B = 0."""
    btb, aat = b.T @ b, a @ a.T
    den = _float(torch.linalg.matrix_norm(btb))
    return None if den == 0 else _float(torch.linalg.matrix_norm(btb - aat)) / den


def gram_cond(b: torch.Tensor) -> float | None:
    """cond(BᵀB) = (σ_max(B)/σ_min(B))²; inf when B has fewer rows than columns or is rank
    deficient, None when B = 0."""
    if not bool(torch.isfinite(b).all()):
        return math.nan  # an SVD of a non-finite matrix may fail to converge
    s = torch.linalg.svdvals(b)
    if s.numel() == 0 or _float(s[0]) == 0:
        return None
    if b.shape[0] < b.shape[1] or _float(s[-1]) == 0:
        return math.inf
    return (_float(s[0]) / _float(s[-1])) ** 2


def stable_rank(s: torch.Tensor) -> float | None:
    """‖M‖_F² / ‖M‖_2² from the singular values ``s`` (descending); None for M = 0."""
    top = _float(s[0]) if s.numel() else 0.0
    return None if top == 0 else _float((s ** 2).sum()) / top ** 2


def effective_rank(s: torch.Tensor) -> float | None:
    """Roy & Vetterli (2007): exp(H(p)), p = σ/Σσ; r equal singular values give exactly r."""
    total = _float(s.sum()) if s.numel() else 0.0
    if total == 0:
        return None
    p = s[s > 0] / total
    return math.exp(-_float((p * torch.log(p)).sum()))


def spectrum_stats(dw: torch.Tensor, top: int = 3) -> dict[str, float | None]:
    """Singular values ``sv1..sv<top>``, ``stable_rank`` and ``eff_rank`` of a matrix."""
    if not bool(torch.isfinite(dw).all()):  # an SVD of a non-finite matrix may fail to converge
        return {**{f"sv{k + 1}": math.nan for k in range(min(top, *dw.shape))}, "stable_rank": math.nan,
                "eff_rank": math.nan}
    s = torch.linalg.svdvals(dw.double())
    out: dict[str, float | None] = {f"sv{k + 1}": _float(s[k]) for k in range(min(top, s.numel()))}
    out["stable_rank"] = stable_rank(s)
    out["eff_rank"] = effective_rank(s)
    return out


class _Periodic(Monitor):
    """Measures on records whose step crosses a multiple of ``every`` and (``at_eval``) on every
    record carrying ``rel_l2`` — with the Trainer, its evaluation points, which include the end."""

    state_keys = ("_bucket", "latest")

    def __init__(self, every: int, at_eval: bool = True) -> None:
        if int(every) < 1:
            raise ValueError(f"every={every!r} must be >= 1")
        self.every, self.at_eval = int(every), at_eval
        self._bucket = 0
        self.latest: dict[str, Any] = {}  # the last measurement
        self.final: dict[str, Any] = {}  # measured in on_end (the state the run ends with)

    def _due(self, record: dict[str, Any]) -> bool:
        if record.get("between_syncs"):
            return False  # graph mode: the model has moved on; the block's synced record measures
        step = record.get("step")
        bucket = self._bucket if step is None else (int(step) + 1) // self.every
        due = bucket > self._bucket or (self.at_eval and "rel_l2" in record)
        self._bucket = max(self._bucket, bucket)
        return due

    def measure(self) -> dict[str, Any]:
        raise NotImplementedError

    def on_record(self, record: dict[str, Any]) -> None:
        if self._due(record):
            self.latest = self.measure()
            record.update(self.latest)

    def on_end(self, history: History) -> None:
        self.final = self.measure()


# -- the measuring monitors ------------------------------------------------------------------------
class UpdateNorm(Monitor):
    """``update_norm``: ‖θ_now − θ_prev‖ between consecutive records (the first: since ``on_start``).

    ``effective=True`` (default) measures what the network computes with: W0 + ΔW of every
    adapted layer plus the trainable parameters outside adapters. Chain merges (cola, rac,
    c3la) and OD-LoRA basis refreshes move W0 and the factors in opposite directions and
    leave W unchanged, so they add nothing. ``effective=False``
    measures the raw trainable tensors instead (a merge then shows as a jump). An L-BFGS
    record covers its whole call (up to 10 iterations); a diverged record includes the
    roll-back to the last good state."""

    state_keys = ("_prev", "total")

    def __init__(self, effective: bool = True) -> None:
        self.effective = effective
        self._prev: list[torch.Tensor] | None = None
        self.total = 0.0  # path length: the sum of all update norms

    def _state(self) -> list[torch.Tensor]:
        return effective_tensors(self.model) if self.effective else trainable_tensors(self.model)

    def on_start(self, model: nn.Module, problem: Any) -> None:
        self.model = model
        self._prev = self._state()

    def on_record(self, record: dict[str, Any]) -> None:
        if record.get("between_syncs"):
            return  # graph mode: the next synced record measures the whole block
        now = self._state()
        with torch.no_grad():
            sq = sum((torch.sub(a, b).square().sum() for a, b in zip(now, self._prev)), 0.0)
        self._prev = now
        record["update_norm"] = math.sqrt(float(sq))
        self.total += record["update_norm"]


class Stability(Monitor):
    """Loss spikes and oscillation.

    A record is a *spike* when its loss exceeds ``factor`` × the running minimum of the
    previous records' finite losses (a non-finite loss is a spike of ratio inf); the record
    gets ``spike`` = that ratio. *Oscillation* is the fraction of consecutive records (within
    one phase) whose loss rose. :meth:`summary` gives the counts and, after ``on_end``, the
    run's status and message (divergence is detected and rolled back by the Trainer)."""

    state_keys = ("spikes", "largest_spike_ratio", "largest_loss_ratio", "first_spike_step", "rises", "pairs",
                  "min_loss", "_prev")

    def __init__(self, factor: float = 10.0) -> None:
        if not factor > 1:
            raise ValueError(f"Stability: factor={factor!r} must be > 1")
        self.factor = float(factor)
        self.spikes = 0
        self.largest_spike_ratio = 0.0
        self.largest_loss_ratio = 0.0  # largest loss / running minimum, spike or not
        self.first_spike_step: int | None = None
        self.rises = self.pairs = 0
        self.min_loss = math.inf
        self._prev: tuple[str, float] | None = None
        self.status, self.message = "running", ""

    def on_record(self, record: dict[str, Any]) -> None:
        loss = float(record["loss"])
        phase = record.get("phase", "train")
        if self._prev is not None and self._prev[0] == phase:
            self.pairs += 1
            self.rises += loss > self._prev[1]
        self._prev = (phase, loss)
        if math.isfinite(self.min_loss):  # there is a finite previous loss to compare with
            if loss == self.min_loss:
                ratio = 1.0
            elif math.isfinite(loss) and self.min_loss > 0:
                ratio = loss / self.min_loss
            else:  # non-finite loss, or a rise from an exact zero
                ratio = math.inf
            self.largest_loss_ratio = max(self.largest_loss_ratio, ratio)
            if ratio > self.factor:
                record["spike"] = ratio
                self.spikes += 1
                self.largest_spike_ratio = max(self.largest_spike_ratio, ratio)
                if self.first_spike_step is None:
                    self.first_spike_step = int(record.get("step", -1))
        if math.isfinite(loss):
            self.min_loss = min(self.min_loss, loss)

    def warning_step(self) -> int | None:
        return self.first_spike_step

    @property
    def oscillation(self) -> float:
        return self.rises / self.pairs if self.pairs else 0.0

    def on_end(self, history: History) -> None:
        self.status, self.message = history.status, history.message

    def summary(self) -> dict[str, Any]:
        return {"spikes": self.spikes, "largest_spike_ratio": self.largest_spike_ratio,
                "first_spike_step": self.first_spike_step, "oscillation": self.oscillation,
                "largest_loss_ratio": self.largest_loss_ratio, "spike_factor": self.factor,
                "status": self.status, "message": self.message}


class AdapterState(_Periodic):
    """Per adapted layer i (keys ``layer<i>/...``), with ΔW = W_now − W_start of the merged
    weight W = W0 + delta_weight() and W_start taken at ``on_start`` — so PiSSA's split,
    chain merges (cola, rac, c3la) and OD-LoRA refreshes, which move W0 itself, do not
    reset it: ``delta_rel`` = ‖ΔW‖_F/‖W_start‖_F, ``sv1..sv<top>``, ``stable_rank``,
    ``eff_rank``; for layers with ``factors()`` (B, A; LoRA-like) also ``balance`` =
    ‖BᵀB − AAᵀ‖_F/‖BᵀB‖_F and ``cond`` = cond(BᵀB) of the factors as they are now."""

    def __init__(self, every: int = 100, top: int = 3, at_eval: bool = True) -> None:
        super().__init__(every, at_eval)
        self.top = int(top)

    def on_start(self, model: nn.Module, problem: Any) -> None:
        self.layers = adapted_layers(model)
        self.start = {i: effective_weight(lay) for i, lay in self.layers}
        self.start_norm = {i: _float(torch.linalg.matrix_norm(w)) for i, w in self.start.items()}

    def measure(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with torch.no_grad():
            for i, lay in self.layers:
                dw = effective_weight(lay) - self.start[i]
                pre = f"layer{i}/"
                norm = _float(torch.linalg.matrix_norm(dw))
                out[pre + "delta_rel"] = norm / self.start_norm[i] if self.start_norm[i] > 0 else math.inf
                out.update({pre + k: v for k, v in spectrum_stats(dw, self.top).items()})
                if callable(getattr(lay, "factors", None)):
                    b, a = (t.detach() for t in lay.factors())
                    out[pre + "balance"] = balance(b, a)
                    out[pre + "cond"] = gram_cond(b)
        return out


def _activation(model: nn.Module, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
    act = getattr(model, "activation", None)
    if isinstance(act, (list, tuple)):  # DeepXDE's FNN allows one activation per layer
        act = act[i]
    if not callable(act):
        raise TypeError(f"FeatureChange: {type(model).__name__} has no callable 'activation' to apply to layer {i}")
    return act


class FeatureChange(_Periodic):
    """``layer<i>/feature_change`` = ‖h_i − h_i,start‖_F / ‖h_i,start‖_F for every hidden layer i
    (all of ``model.linears`` but the last), where h_i = activation(linears[i](·)) is the layer's
    post-activation output on the fixed ``probe_points`` (N × d), h_i,start measured at
    ``on_start``. Features are captured by forward hooks on ``linears[i]`` (adapters included)
    during one no-grad forward pass of the whole model, registered only while measuring."""

    def __init__(self, probe_points: Any, every: int = 100, at_eval: bool = True) -> None:
        super().__init__(every, at_eval)
        self.probe_points = probe_points

    def features(self) -> list[torch.Tensor]:
        linears = self.model.linears
        hidden = range(len(linears) - 1)
        outs: dict[int, torch.Tensor] = {}
        hooks = [linears[i].register_forward_hook(lambda _m, _inp, y, i=i: outs.__setitem__(i, y.detach()))
                 for i in hidden]
        try:
            with torch.no_grad():
                self.model(self.x)
        finally:
            for h in hooks:
                h.remove()
        return [_activation(self.model, i)(outs[i]) for i in hidden]

    def on_start(self, model: nn.Module, problem: Any) -> None:
        if getattr(model, "linears", None) is None:
            raise TypeError(f"FeatureChange: {type(model).__name__} has no 'linears' list of layers")
        self.model = model
        like = next(iter(model.parameters()), None)
        like = like if like is not None else next(iter(model.buffers()))
        pts = self.probe_points
        pts = pts.detach() if isinstance(pts, torch.Tensor) else torch.as_tensor(np.asarray(pts))
        self.x = pts.to(dtype=like.dtype, device=like.device)
        self.base = self.features()
        self.base_norm = [_float(torch.linalg.vector_norm(h)) for h in self.base]

    def measure(self) -> dict[str, Any]:
        out = {}
        for i, (h, h0, n0) in enumerate(zip(self.features(), self.base, self.base_norm)):
            diff = _float(torch.linalg.vector_norm(h - h0))
            out[f"layer{i}/feature_change"] = diff / n0 if n0 > 0 else (0.0 if diff == 0 else math.inf)
        return out
