"""Building the answers over a coefficient range (:mod:`pinn_lora.runs.ranges`): :func:`build_family` adapts the
base at anchors placed by the interpolated answer's midpoint residual; :func:`build_hyper_family` trains one
coefficient-conditioned adapter over the whole range; :func:`plot_family` and :func:`scan` show a built one."""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pinn_lora.core.recipe import Adaptation as RECIPE
from pinn_lora.methods.dynamics.base import Objective
from pinn_lora.model.jacobian import residual_jacobian, residual_vector

from pinn_lora.runs.ranges import (INTERPOLATIONS, Conditioned, Family, FamilyError, HyperFamily, _check_out,  # noqa: F401
                                   _spec, merged_state)


def _check_range(problem: Any, over: str | None, low: float, high: float) -> tuple[Any, float, float]:
    """(the coefficient's spec, low, high) after checking the range (one line on a bad one)."""
    from pinn_lora.pde.problem import Problem

    if not isinstance(problem, Problem):
        raise TypeError(f"build_family: problem must be a problem object (pinn_lora.get_problem(...)), got {problem!r}")
    spec = _spec(problem, over)
    for key, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FamilyError(f"{key}={v!r}: give the range's ends as numbers")
    low, high = float(low), float(high)
    if not low < high:
        raise FamilyError(f"low={low:g}, high={high:g}: the range needs low < high")
    for v in (low, high):  # both ends must be coefficients the family accepts
        problem.with_coefficients(**{spec.name: v})
    return spec, low, high


def _check_bank_options(anchors: int, tol: float, interpolate: str) -> None:
    import numbers

    if isinstance(anchors, bool) or not isinstance(anchors, numbers.Integral):
        raise FamilyError(f"anchors={anchors!r} must be an integer >= 2 (the range's ends)")
    if anchors < 2:
        raise FamilyError(f"anchors={anchors!r}: a family needs at least 2 anchors (the range's ends)")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise FamilyError(f"tol={tol!r} must be a number >= 0")
    if interpolate not in ("auto", *INTERPOLATIONS):
        raise FamilyError(f"interpolate={interpolate!r}; choose auto, weights (W0 + dW interpolated), solution "
                          "(the neighbouring anchors' solutions blended) or cubic (four anchors' solutions, "
                          "Lagrange weights)")


def _resolve_pinn_base(problem: Any, base: Any, dt: torch.dtype, dev: torch.device, who: str):
    """(a copy of the base network, its card): the problem's shipped base, or ``base``; a pinn_lora PINN only."""
    from pinn_lora.runs.adapt import ConfigError, resolve_base

    net, card = resolve_base(problem.name if base is None else base, problem, dt, dev)
    if not hasattr(net, "architecture"):
        raise ConfigError(f"{who} needs a pinn_lora base model (a shipped name or a saved base), not a bare network")
    return net, card


def _base_entry(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a family's card says of its base."""
    return {k: card.get(k) for k in ("problem", "coefficients", "weights_sha256")}


def answer_residual(fam: Family, value: float, n: int | None = None) -> float:
    """The validation residual (:mod:`pinn_lora.training.verdict`, ``n`` points; default its full set) of the family's
    answer at ``value``: reference-free."""
    from pinn_lora.training.verdict import VALIDATION_POINTS, validation_points, validation_residual

    target, ref = fam.problem_at(value), next(fam.template.parameters())
    pts = validation_points(target, n=n or VALIDATION_POINTS, dtype=ref.dtype, device=ref.device)
    return validation_residual(target, fam.query(value), pts)


def _write_out(fam: "Family", out: str | Path, plots: bool = True) -> None:
    """``fam`` saved in ``out`` (claimed for it unless this process owns it) with its plot."""
    from pinn_lora.store import rundir

    if not rundir.owned(out):
        with rundir.claim(out, key="out"):
            return _write_out(fam, out, plots)
    fam.save(out)
    if plots:
        plot_family(fam, Path(out) / "plots" / "family.png")


def spread(spec: Any, low: float, high: float, n: int) -> list[float]:
    """``n`` values from ``low`` to ``high`` evenly spaced in the coefficient's coordinate, the ends exact
    (exp(log(low)) can round below low) and every value inside [low, high]."""
    a, b = spec.coordinate(low), spec.coordinate(high)
    inner = [min(max(spec.from_coordinate(a + (b - a) * i / (n - 1)), low), high) for i in range(1, n - 1)]
    return [low, *inner, high]


def _midpoint(spec: Any, a: float, b: float) -> float:
    return spec.from_coordinate(0.5 * (spec.coordinate(a) + spec.coordinate(b)))


def build_family(problem: Any, over: str | None, low: float, high: float, method: str = "lora", *,
                 base: Any = None, anchors: int = 5, tol: float = 0.0, interpolate: str = "auto", seed: int = 0,
                 warm_start: bool = False, device: str | torch.device = "cpu", dtype: str = "float64",
                 progress: bool = True, out: str | Path | None = None, plots: bool = True,
                 **adapt_options: Any) -> Family:
    """Adapt ``base`` (default: the problem's shipped base) at up to ``anchors`` coefficients of ``over``
    in [``low``, ``high``] (the other coefficients: ``problem``'s) and return the :class:`Family`; with
    ``out`` it is saved there (family.* and, with ``plots``, plots/family.png). ``adapt_options`` go to every
    :func:`~pinn_lora.runs.adapt.adapt_to` call (steps, solver, method options ...; left out: the family's
    recipe). ``warm_start``: every anchor after the first is adapted from the nearest anchor already placed
    (its merged network, as the base of that run) instead of from the base, so neighbouring anchors' weights
    stay close."""
    from pinn_lora.core.runtime import check_bools
    from pinn_lora.runs.resolve import resolve_device, resolve_dtype

    spec, low, high = _check_range(problem, over, low, high)
    check_bools({"warm_start": warm_start, "progress": progress, "plots": plots}, "build_family: ")
    _check_out(out)
    _check_bank_options(anchors, tol, interpolate)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    base_net, base_card = _resolve_pinn_base(problem, base, dt, dev, "build_family")
    bank = _Bank(problem, spec, low, high, method, base_net, base_card, warm_start, progress,
                 "solution" if interpolate == "auto" else interpolate,  # auto: the anchors placed with blends
                 dict(seed=seed, device=dev, dtype=dtype, progress=False, plots=False, **adapt_options))
    fam, checks = bank.place(int(anchors), tol)  # np.int64(2) included
    choice = bank.choose(fam, checks) if interpolate == "auto" else None
    mode = interpolate if choice is None else min(choice, key=choice.get)
    statuses = [r["status"] for r in bank.rows]
    card = {
        "problem": problem.name, "coefficients": dict(problem.coefficients), "over": spec.name,
        "range": [low, high], "coordinate": spec.scale, "builder": "bank", "interpolate": mode,
        "method": bank.used["method"], **({"interpolate_choice": choice} if choice else {}),
        "base": _base_entry(base_card), "network": base_net.architecture(),
        "anchors": sorted(bank.rows, key=lambda r: r["value"]),
        "midpoint_checks": checks, "tol": tol, "max_anchors": int(anchors),
        "build": {"seed": seed, "dtype": dtype, "device": str(dev), "adapt_options": _json_safe(adapt_options),
                  "warm_start": bool(warm_start), "wall_time_s": round(time.perf_counter() - bank.t0, 1)},
        "status": "completed" if all(s == "completed" for s in statuses) else "some_anchors_failed",
    }
    fam = Family(problem, spec.name, low, high, bank.values, bank.states, base_net, card)
    if out is not None:
        _write_out(fam, out, plots)
    return fam


class _Bank:
    """The anchors of one :func:`build_family`: their values, merged weights and rows, placed one by one."""

    def __init__(self, problem: Any, spec: Any, low: float, high: float, method: str, base_net: nn.Module,
                 base_card: dict[str, Any], warm_start: bool, progress: bool, mode: str,
                 adapt_kwargs: dict[str, Any]) -> None:
        self.mode = mode
        self.problem, self.spec, self.low, self.high, self.method = problem, spec, low, high, method
        self.base_net, self.base_card, self.warm_start, self.progress = base_net, base_card, warm_start, progress
        self.kwargs, self.t0 = adapt_kwargs, time.perf_counter()
        self.values: list[float] = []
        self.states: list[dict[str, torch.Tensor]] = []
        self.rows: list[dict[str, Any]] = []
        self.used: dict[str, Any] = {}  # the method as the first anchor's run resolved it

    def start_of(self, value: float) -> tuple[tuple[nn.Module, dict[str, Any]], float | None]:
        """The base of the adaptation at ``value``: the base, or (warm_start) the nearest anchor's network."""
        if not self.warm_start or not self.values:
            return (self.base_net, self.base_card), None
        c = self.spec.coordinate(value)
        k = min(range(len(self.values)), key=lambda i: abs(self.spec.coordinate(self.values[i]) - c))
        net = copy.deepcopy(self.base_net)
        net.load_state_dict(self.states[k])
        coefficients = {**self.base_card.get("coefficients", {}), self.spec.name: self.values[k]}
        return (net, {**self.base_card, "coefficients": coefficients}), self.values[k]

    def add(self, value: float, reason: str) -> None:
        """Adapt at ``value`` (an anchor) and keep its merged weights and row."""
        from pinn_lora.runs.adapt import adapt_to

        t = time.perf_counter()
        start, source = self.start_of(value)
        res = adapt_to(start, self.problem.with_coefficients(**{self.spec.name: value}), self.method, **self.kwargs)
        s = res.summary()
        self.used.setdefault("method", _json_safe(res.method.describe()))
        self.values.append(value)
        self.states.append(merged_state(res.model))
        self.rows.append({"value": value, "reason": reason, "status": s["status"], "from": source,
                          "validation_residual": s["validation_residual"],
                          "validation_residual_base": s["validation_residual_base"],
                          "wall_s": round(time.perf_counter() - t, 2)})
        if self.progress:
            print(f"family: anchor {self.spec.name}={value:.6g} ({reason}): {s['status']}, validation residual "
                  f"{s['validation_residual_base']:.3e} -> {s['validation_residual']:.3e} in "
                  f"{self.rows[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)

    def family(self) -> Family:
        return Family(self.problem, self.spec.name, self.low, self.high, self.values, self.states, self.base_net,
                      {"interpolate": self.mode})

    def place(self, anchors: int, tol: float) -> tuple[Family, list[dict[str, Any]]]:
        """The ends (and the middle), then an anchor at the midpoint of the segment whose blended answer has the
        largest validation residual there, until ``anchors`` are placed or every midpoint is <= ``tol``."""
        lo, hi = self.low, self.high
        for v in [lo, hi] + ([_midpoint(self.spec, lo, hi)] if anchors >= 3 else []):
            self.add(v, "range end" if v in (lo, hi) else "middle")
        fam, checks = self.family(), []
        while True:
            worst = None
            for a, b in zip(fam.anchors[:-1], fam.anchors[1:]):
                mid = _midpoint(self.spec, a, b)
                r = answer_residual(fam, mid)
                checks.append({"value": mid, "anchors": len(fam.anchors), "validation_residual": r})
                if worst is None or r > worst[1]:
                    worst = (mid, r)
            if worst is None or worst[1] <= tol or len(self.values) >= anchors:
                return fam, checks
            self.add(worst[0], f"largest midpoint residual {worst[1]:.3e}")
            fam = self.family()

    @staticmethod
    def choose(fam: Family, checks: list[dict[str, Any]]) -> dict[str, float]:
        """interpolate=auto: each answer's worst validation residual at the final segments' midpoints (the
        smallest wins; reference-free)."""
        final = checks[-(len(fam.anchors) - 1):]
        choice = {"solution": max(c["validation_residual"] for c in final)}
        for other in ("weights", "cubic"):
            fam.interpolate = other
            choice[other] = max(answer_residual(fam, c["value"]) for c in final)
        return choice


class RangeObjective(Objective):
    """The hyper build's objective: the residuals of the coefficient-conditioned adapter at each of a
    step's coefficients (``batch``: (problem, ξ, points)), each scaled by 1/√len(batch), so that ‖ρ‖² is the
    mean of their residual losses; with its Jacobian, for the Levenberg–Marquardt step."""

    def __init__(self, cond: Any, batch: Sequence[tuple[Any, float, torch.Tensor]]) -> None:
        self.cond, self.batch = cond, list(batch)

    def _residuals(self, with_jacobian: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        rs, js = [], []
        for target, x, pts in self.batch:
            self.cond.xi = x
            self.cond.template.apply_output_transform(target.output_transform)
            if with_jacobian:
                r, j = residual_jacobian(target, self.cond, pts)
                js.append(j / math.sqrt(len(self.batch)))
            else:
                r = residual_vector(target, self.cond, pts)
            rs.append(r / math.sqrt(len(self.batch)))
        return torch.cat(rs), (torch.cat(js) if with_jacobian else None)

    def residual(self) -> torch.Tensor:
        return self._residuals(False)[0]

    def residual_jacobian(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._residuals(True)  # type: ignore[return-value]


def build_hyper_family(problem: Any, over: str | None, low: float, high: float, *, base: Any = None,
                       rank: int = 8, width: int = 32, steps: int = 60, n_points: int = 500, per_step: int = 4,
                       resample_every: int = 5, lm_mu: float = RECIPE.lm_mu, seed: int = 0,
                       device: str | torch.device = "cpu", dtype: str = "float64", progress: bool = True,
                       out: str | Path | None = None) -> HyperFamily:
    """The coefficient-conditioned adapter (:class:`Conditioned`) trained with the physics loss over the
    whole range: each step's loss is the mean over ``per_step`` coefficients (stratified in the
    coordinate, drawn anew every ``resample_every`` steps with ``n_points`` points each) of the
    residual loss there, minimised by Levenberg–Marquardt steps (:mod:`pinn_lora.methods.dynamics.gauss_newton`,
    the kernel form when there are more parameters than rows). The coefficients are first drawn near
    the base's and the window widens to the whole range over the first half of the steps (continuation
    over the range)."""
    import numpy as np

    from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt
    from pinn_lora.runs.adapt import resolve_device, resolve_dtype

    from pinn_lora.core.runtime import check_bools

    spec, low, high = _check_range(problem, over, low, high)
    over = spec.name
    check_bools({"progress": progress}, "build_hyper_family: ")
    _check_out(out)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    base_net, base_card = _resolve_pinn_base(problem, base, dt, dev, "build_hyper_family")
    t0 = time.perf_counter()
    cond = Conditioned(copy.deepcopy(base_net), rank=rank, width=width, seed=seed)
    fam = HyperFamily(problem, over, low, high, cond, {})
    params = [p for p in cond.parameters() if p.requires_grad]
    lm = LevenbergMarquardt(params, mu=lm_mu)
    rng = np.random.default_rng(seed)
    source = (base_card.get("coefficients") or {}).get(over, spec.from_coordinate(
        0.5 * (spec.coordinate(low) + spec.coordinate(high))))
    xi_source = min(max(fam.xi(min(max(source, low), high)), -1.0), 1.0)
    batch: list[tuple[Any, float, torch.Tensor]] = []
    log = []
    for step in range(steps):
        if step % resample_every == 0:
            half = 2.0 * min(1.0, (step + resample_every) / max(steps / 2, 1))  # the window's half width in ξ
            lo_xi, hi_xi = max(-1.0, xi_source - half), min(1.0, xi_source + half)
            xis = lo_xi + (hi_xi - lo_xi) * (np.arange(per_step) + rng.random(per_step)) / per_step
            batch = []
            for x in xis:
                target = fam.problem_at(fam.value_at(x))
                pts = torch.as_tensor(target.sample(n_points, seed=int(rng.integers(2**31))), dtype=dt, device=dev)
                batch.append((target, float(x), pts))

        loss = lm.step(RangeObjective(cond, batch))
        log.append({"step": step, "loss": loss, "h": lm.last.get("lm_h"), "accepted": lm.last.get("lm_accepted")})
        if progress and (step % 10 == 0 or step == steps - 1):
            print(f"family (hyper): step {step}/{steps}, loss {loss:.3e} over {over} in "
                  f"[{batch[0][0].coefficients[over]:.4g}, {batch[-1][0].coefficients[over]:.4g}]",
                  file=sys.stderr, flush=True)
    checks = []
    for value in spread(spec, low, high, 9):  # reference-free: the validation residual across the range
        checks.append({"value": value, "validation_residual": answer_residual(fam, value, n=4096)})
    card = {
        "problem": problem.name, "coefficients": dict(problem.coefficients), "over": over, "range": [low, high],
        "coordinate": spec.scale, "builder": "hyper", "method": {"name": "hyper_lora", "rank": rank},
        "hyper": {"rank": rank, "width": width},
        "base": _base_entry(base_card),
        "network": base_net.architecture(), "checks": checks,
        "build": {"seed": seed, "dtype": dtype, "device": str(dev), "steps": steps, "n_points": n_points,
                  "per_step": per_step, "resample_every": resample_every, "lm_mu": lm_mu,
                  "trainable_parameters": sum(p.numel() for p in params), "final_loss": log[-1]["loss"] if log else None,
                  "wall_time_s": round(time.perf_counter() - t0, 1)},
        "status": "completed",
    }
    fam = HyperFamily(problem, over, low, high, cond, card)
    if out is not None:
        _write_out(fam, out)
    return fam


def _json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def scan(fam: Family, values: Sequence[float]) -> list[dict[str, Any]]:
    """The reference-free validation residual of the family's answer at each of ``values``."""
    return [{"value": float(v), "validation_residual": answer_residual(fam, v, n=4096)} for v in values]


def plot_family(fam: Family, path: Path, points: int = 17) -> None:
    """The validation residual (4 096 points) of the family's answer across its range, anchors marked."""
    from matplotlib.figure import Figure

    spec = fam.spec
    values = sorted(set(spread(spec, fam.low, fam.high, points)) | set(fam.anchors))
    rows = scan(fam, values)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.semilogy([r["value"] for r in rows], [r["validation_residual"] for r in rows], "-", label="family (query)")
    at = {r["value"]: r["validation_residual"] for r in rows}
    if fam.anchors:
        ax.semilogy(fam.anchors, [at[a] for a in fam.anchors], "o", label="anchors (adapted)")
    if spec.scale == "log":
        ax.set_xscale("log")
    ax.set_xlabel(fam.over)
    ax.set_ylabel("validation residual")
    how = f"{len(fam.anchors)} anchors" if fam.anchors else "coefficient-conditioned"
    ax.set_title(f"{fam.problem.name}: {fam.card.get('method', {}).get('name', '')} family, {how}")
    ax.legend()
    fig.tight_layout()
    import io

    from pinn_lora.store.rundir import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    write_atomic(path, buf.getvalue())  # creates plots/ through no symbolic link
