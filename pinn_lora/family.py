"""Solutions over a coefficient range: an *adapter bank* that answers u(·; c) at any c in [low, high]
without training.

``python -m pinn_lora.family problem=burgers method=lora over=nu low=0.0016 high=0.016`` (the command
is this module; the library function is :func:`build_family`, the loader :func:`load_family`).

**Build.** The base is adapted (``adapt_to`` with the problem's defaults) at K anchor coefficients. Each
adapted network is merged into plain weights W_k = W0 + ΔW_k, where the low-rank factors of different
anchors can be compared: raw B and A are defined only up to an invertible r×r matrix (BA = BM·M⁻¹A), so
interpolating them would mean nothing, while ΔW = sBA is unique. The first anchors are the range's ends
(and its middle); then, until ``anchors`` are placed or the worst midpoint is below ``tol``, the next
anchor goes to the middle of the segment whose interpolated network has the largest residual on the
problem's fixed reference-free validation set (:mod:`pinn_lora.validation`) at that midpoint. No
reference solution and no held-out coefficient is used.

**Query.** ``family(c)`` (or :meth:`Family.query`) interpolates linearly between the two neighbouring
anchors in the coefficient's own coordinate (log ν, γ, d, k²; the one continuation uses) and returns a
plain network (a copy of the base architecture with the interpolated weights and the problem's output
transform at c): a few small tensor operations, no training. At an anchor it returns that anchor's
weights exactly. A coefficient outside [low, high] is refused.

A family is saved as ``family.safetensors`` (every anchor's weights) + ``family.json`` (its card: range,
method, base hash, anchors with their validation residuals, how it was built), bound to each other like
every other card (:func:`pinn_lora.checkpoint.card_metadata`).
"""
from __future__ import annotations

import bisect
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

FAMILY_KIND = "pinn_lora.family"


class FamilyError(ValueError):
    """A bad range, a query outside it, or a damaged family file."""


def _spec(problem: Any, over: str | None):
    specs = {c.name: c for c in problem.coefficient_specs}
    if over is None:
        over = next(iter(specs))
    if over not in specs:
        raise FamilyError(f"over={over!r}: {problem.name} has the coefficients {', '.join(specs)}")
    return specs[over]


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain weights of an adapted network: every adapter merged into W0 + ΔW (a copy)."""
    from pinn_lora.adapters.base import merge_adapters

    plain = merge_adapters(copy.deepcopy(model))
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


class Family:
    """An adapter bank over ``over`` ∈ [low, high] (see the module docstring): ``states[k]`` are the
    plain weights at ``anchors[k]`` (sorted); ``template`` the base network (its architecture)."""

    def __init__(self, problem: Any, over: str, low: float, high: float, anchors: Sequence[float],
                 states: Sequence[Mapping[str, torch.Tensor]], template: nn.Module, card: Mapping[str, Any]) -> None:
        self.problem, self.over, self.low, self.high = problem, over, float(low), float(high)
        self.spec = _spec(problem, over)
        order = sorted(range(len(anchors)), key=lambda i: anchors[i])
        self.anchors = [float(anchors[i]) for i in order]
        self.states = [dict(states[i]) for i in order]
        self._coords = [self.spec.coordinate(a) for a in self.anchors]
        self.template = copy.deepcopy(template)
        for p in self.template.parameters():
            p.requires_grad_(False)
        self.card = dict(card)

    def __call__(self, value: float) -> nn.Module:
        return self.query(value)

    def problem_at(self, value: float) -> Any:
        """The problem at ``over`` = ``value`` (the other coefficients as the family's)."""
        return self.problem.with_coefficients(**{self.over: float(value)})

    def weights(self, value: float) -> dict[str, torch.Tensor]:
        """The interpolated plain weights at ``value`` (refused outside [low, high])."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FamilyError(f"{self.over}={value!r}: give a number in [{self.low:g}, {self.high:g}]")
        if not self.low <= value <= self.high:
            raise FamilyError(f"{self.over}={value:g} is outside the family's range [{self.low:g}, {self.high:g}] "
                              "(build a family over a wider range, or adapt to it: python -m pinn_lora.adapt)")
        c = self.spec.coordinate(float(value))
        j = bisect.bisect_left(self._coords, c)
        if j < len(self._coords) and self._coords[j] == c:
            return self.states[j]  # exactly an anchor's weights
        j = min(max(j, 1), len(self._coords) - 1)
        t = (c - self._coords[j - 1]) / (self._coords[j] - self._coords[j - 1])
        a, b = self.states[j - 1], self.states[j]
        return {k: torch.lerp(a[k], b[k], t) for k in a}

    def query(self, value: float) -> nn.Module:
        """A plain network for ``over`` = ``value``: no training (see the module docstring)."""
        state = self.weights(value)
        net = copy.deepcopy(self.template)
        net.load_state_dict(state)
        net.apply_output_transform(self.problem_at(value).output_transform)
        return net

    # -- files
    def save(self, path: str | Path) -> dict[str, Any]:
        """Write ``path``/family.safetensors + family.json; returns the card written."""
        from pinn_lora.checkpoint import card_metadata, save_tensors, write_json
        from pinn_lora.schema import family_card_schema, validate

        path = Path(path)
        card = {**self.card, "kind": FAMILY_KIND, "anchors": [{**a} for a in self.card["anchors"]]}
        validate({**card, "weights_sha256": "0" * 64}, family_card_schema(), f"family card in {path}")
        tensors = {f"anchor{i}.{k}": v.detach().cpu().contiguous() for i, s in enumerate(self.states)
                   for k, v in s.items()}
        path.mkdir(parents=True, exist_ok=True)
        card["weights_sha256"] = save_tensors(path / "family.safetensors", tensors, metadata=card_metadata(card))
        write_json(path / "family.json", card)
        self.card = card
        return card


def load_family(path: str | Path, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Family:
    """The family saved in directory ``path`` (its card checked and bound to the weights; the base it was
    built on is not needed)."""
    from pinn_lora.checkpoint import CheckpointError, check_card_binding, load_tensors, read_json, sha256
    from pinn_lora.network import PINN
    from pinn_lora.registry import get_problem
    from pinn_lora.schema import family_card_schema, validate

    path = Path(path)
    weights, card_path = path / "family.safetensors", path / "family.json"
    if not card_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{path} holds no family (family.json + family.safetensors)")
    card = read_json(card_path)
    validate(card, family_card_schema(), f"card {card_path}")
    if sha256(weights) != card["weights_sha256"]:
        raise CheckpointError(f"{weights} does not match its card's sha256 (file changed or truncated)")
    check_card_binding(card, weights, card_path, kind="a family card")
    problem = get_problem(card["problem"], **card["coefficients"])
    arch = card["network"]
    template = PINN(arch["layers"], arch["activation"], problem.output_transform).to(dtype=dtype, device=device)
    tensors = load_tensors(weights)
    names = list(template.state_dict())
    states = []
    for i in range(len(card["anchors"])):
        try:
            states.append({k: tensors[f"anchor{i}.{k}"].to(dtype=dtype, device=device) for k in names})
        except KeyError as exc:
            raise CheckpointError(f"{weights}: anchor {i} lacks {exc.args[0]}") from None
    if len(card["range"]) != 2 or not card["range"][0] < card["range"][1]:
        raise CheckpointError(f"card {card_path}: range {card['range']} is not [low, high] with low < high")
    lo, hi = card["range"]
    return Family(problem, card["over"], lo, hi, [a["value"] for a in card["anchors"]], states, template, card)


def _midpoint(spec: Any, a: float, b: float) -> float:
    return spec.from_coordinate(0.5 * (spec.coordinate(a) + spec.coordinate(b)))


def build_family(problem: Any, over: str | None, low: float, high: float, method: str = "lora", *,
                 base: Any = None, anchors: int = 5, tol: float = 0.0, seed: int = 0,
                 device: str | torch.device = "cpu", dtype: str = "float64", progress: bool = True,
                 out: str | Path | None = None, **adapt_options: Any) -> Family:
    """Adapt ``base`` (default: the problem's shipped base) at up to ``anchors`` coefficients of ``over``
    in [``low``, ``high``] (the other coefficients: ``problem``'s) and return the :class:`Family`; with
    ``out`` it is saved there (family.* and plots/family.png). ``adapt_options`` go to every
    :func:`~pinn_lora.session.adapt_to` call (steps, solver, method options ...)."""
    from pinn_lora.problem import Problem
    from pinn_lora.session import ConfigError, adapt_to, resolve_base, resolve_device, resolve_dtype
    from pinn_lora.validation import validation_points, validation_residual

    if not isinstance(problem, Problem):
        raise TypeError(f"build_family: problem must be a problem object (pinn_lora.get_problem(...)), got {problem!r}")
    spec = _spec(problem, over)
    over = spec.name
    for key, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FamilyError(f"{key}={v!r}: give the range's ends as numbers")
    low, high = float(low), float(high)
    if not low < high:
        raise FamilyError(f"low={low:g}, high={high:g}: the range needs low < high")
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 2:
        raise FamilyError(f"anchors={anchors!r}: a family needs at least 2 anchors (the range's ends)")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise FamilyError(f"tol={tol!r} must be a number >= 0")
    for v in (low, high):  # both ends must be coefficients the family accepts
        problem.with_coefficients(**{over: v})
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    base_net, base_card = resolve_base(problem.name if base is None else base, problem, dt, dev)
    if not hasattr(base_net, "architecture"):
        raise ConfigError("build_family needs a pinn_lora base model (a shipped name or a saved base), "
                          "not a bare network")
    t0 = time.perf_counter()
    start = [low, high] + ([_midpoint(spec, low, high)] if anchors >= 3 else [])
    values: list[float] = []
    states: list[dict[str, torch.Tensor]] = []
    rows: list[dict[str, Any]] = []
    used: dict[str, Any] = {}  # the method as the first anchor's run resolved it (options and recommendations)

    def say(msg: str) -> None:
        if progress:
            print(f"family: {msg}", file=sys.stderr, flush=True)

    def add(value: float, reason: str) -> None:
        target = problem.with_coefficients(**{over: value})
        t = time.perf_counter()
        res = adapt_to((base_net, base_card), target, method, seed=seed, device=dev, dtype=dtype, progress=False,
                       plots=False, **adapt_options)
        s = res.summary()
        used.setdefault("method", _json_safe(res.method.describe()))
        values.append(value)
        states.append(merged_state(res.model))
        rows.append({"value": value, "reason": reason, "status": s["status"],
                     "validation_residual": s["validation_residual"],
                     "validation_residual_base": s["validation_residual_base"],
                     "wall_s": round(time.perf_counter() - t, 2)})
        say(f"anchor {over}={value:.6g} ({reason}): {s['status']}, validation residual "
            f"{s['validation_residual_base']:.3e} -> {s['validation_residual']:.3e} in {rows[-1]['wall_s']:.0f} s")

    for v in start:
        add(v, "range end" if v in (low, high) else "middle")
    fam = Family(problem, over, low, high, values, states, base_net, {})
    checks: list[dict[str, Any]] = []
    while True:
        worst = None
        for a, b in zip(fam.anchors[:-1], fam.anchors[1:]):
            mid = _midpoint(spec, a, b)
            target = fam.problem_at(mid)
            r = validation_residual(target, fam.query(mid), validation_points(target, dtype=dt, device=dev))
            checks.append({"value": mid, "anchors": len(fam.anchors), "validation_residual": r})
            if worst is None or r > worst[1]:
                worst = (mid, r)
        if worst is None or worst[1] <= tol or len(values) >= anchors:
            break
        add(worst[0], f"largest midpoint residual {worst[1]:.3e}")
        fam = Family(problem, over, low, high, values, states, base_net, {})
    statuses = [r["status"] for r in rows]
    card = {
        "problem": problem.name, "coefficients": dict(problem.coefficients), "over": over, "range": [low, high],
        "coordinate": spec.scale, "method": used["method"],
        "base": {"problem": base_card.get("problem"), "coefficients": base_card.get("coefficients"),
                 "weights_sha256": base_card.get("weights_sha256")},
        "network": base_net.architecture(),
        "anchors": sorted(rows, key=lambda r: r["value"]),
        "midpoint_checks": checks, "tol": tol, "max_anchors": anchors,
        "build": {"seed": seed, "dtype": dtype, "device": str(dev), "adapt_options": _json_safe(adapt_options),
                  "wall_time_s": round(time.perf_counter() - t0, 1)},
        "status": "completed" if all(s == "completed" for s in statuses) else "some_anchors_failed",
    }
    fam = Family(problem, over, low, high, values, states, base_net, card)
    if out is not None:
        fam.save(out)
        plot_family(fam, Path(out) / "plots" / "family.png")
    return fam


def _json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def scan(fam: Family, values: Sequence[float]) -> list[dict[str, Any]]:
    """The reference-free validation residual of the family's answer at each of ``values``."""
    from pinn_lora.validation import validation_points, validation_residual

    out = []
    for v in values:
        target = fam.problem_at(v)
        pts = validation_points(target, n=4096, dtype=next(fam.template.parameters()).dtype,
                                device=next(fam.template.parameters()).device)
        out.append({"value": float(v), "validation_residual": validation_residual(target, fam.query(v), pts)})
    return out


def plot_family(fam: Family, path: Path, points: int = 25) -> None:
    """The validation residual (4 096 points) of the family's answer across its range, anchors marked."""
    from matplotlib.figure import Figure

    spec = fam.spec
    lo, hi = spec.coordinate(fam.low), spec.coordinate(fam.high)
    values = sorted({spec.from_coordinate(lo + (hi - lo) * i / (points - 1)) for i in range(points)} | set(fam.anchors))
    rows = scan(fam, values)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.semilogy([r["value"] for r in rows], [r["validation_residual"] for r in rows], "-", label="family (query)")
    at = {r["value"]: r["validation_residual"] for r in rows}
    ax.semilogy(fam.anchors, [at[a] for a in fam.anchors], "o", label="anchors (adapted)")
    if spec.scale == "log":
        ax.set_xscale("log")
    ax.set_xlabel(fam.over)
    ax.set_ylabel("validation residual")
    ax.set_title(f"{fam.problem.name}: {fam.card.get('method', {}).get('name', '')} family, "
                 f"{len(fam.anchors)} anchors")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run_config(cfg: Mapping[str, Any], run_dir: Path) -> Family:
    """Build a family from a composed (plain dict) ``configs/family.yaml``; claims ``run_dir``
    (:mod:`pinn_lora.rundir`) once the input is checked and writes the family there."""
    from pinn_lora import rundir
    from pinn_lora.session import ConfigError, check_ints, check_strings, problem_from_config

    check_strings(cfg, ("device", "dtype", "base", "over"))
    for key in ("low", "high"):
        v = cfg.get(key)
        if v is None:
            raise ConfigError(f"{key} is required: the family spans over in [low, high], e.g. low=0.0016 high=0.016")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}={v!r} must be a number")
    check_ints({"anchors": (cfg.get("anchors", 5), 2), "seed": (cfg.get("seed", 0), 0),
                **{k: (cfg[k], 1) for k in ("steps", "n_points") if cfg.get(k) is not None}})
    pcfg, mcfg = cfg["problem"], cfg["method"]
    problem = problem_from_config(pcfg, "adapt")
    options = {k: v for k, v in mcfg.items() if k != "name" and v is not None}
    options.update({k: cfg[k] for k in ("steps", "n_points") if cfg.get(k) is not None})
    with rundir.claim(run_dir):
        return build_family(problem, cfg.get("over"), cfg["low"], cfg["high"], mcfg["name"], base=cfg.get("base"),
                            anchors=cfg.get("anchors", 5), tol=cfg.get("tol", 0.0), seed=cfg.get("seed", 0),
                            device=cfg.get("device", "auto"), dtype=cfg.get("dtype", "float64"),
                            progress=bool(cfg.get("progress", True)), out=run_dir,
                            recommended=pcfg.get("adapt") or {}, **options)


def _task(cfg: Any) -> None:
    from pinn_lora.cli import run_task

    fam, run_dir = run_task(cfg, run_config)
    card = fam.card
    worst = max(c["validation_residual"] for c in card["midpoint_checks"][-(len(fam.anchors) - 1):])
    print(f"{card['problem']} family over {card['over']} in [{fam.low:g}, {fam.high:g}] ({card['method']['name']}): "
          f"{len(fam.anchors)} anchors in {card['build']['wall_time_s']:.0f} s, worst midpoint validation residual "
          f"{worst:.3e}; {card['status']}")
    print(f"family written: {run_dir / 'family.safetensors'} + family.json, plots/family.png "
          f"(use it: pinn_lora.load_family({str(run_dir)!r})(value))")


def main() -> None:
    from pinn_lora.cli import check_group_overrides, launch, prepare_run

    check_group_overrides(sys.argv[1:], ("problem", "method"), "family")
    launch(prepare_run(sys.argv[1:], "family", resume_key=False), "family", _task)


if __name__ == "__main__":
    main()
