"""Solutions over a coefficient range: an *adapter bank* that answers u(·; c) at any c in [low, high]
without training.

``python -m pinn_lora.family problem=burgers method=lora over=nu low=0.0016 high=0.016`` (the command
is this module; the library function is :func:`build_family`, the loader :func:`load_family`).

**Build.** The base is adapted (``adapt_to`` with the problem's defaults) at K anchor coefficients. Each
adapted network is merged into plain weights W_k = W0 + ΔW_k, where the low-rank factors of different
anchors can be compared: raw B and A are defined only up to an invertible r×r matrix (BA = BM·M⁻¹A), so
interpolating them would mean nothing, while ΔW = sBA is unique. The first anchors are the range's ends
(and its middle); then, until ``anchors`` are placed or the worst midpoint is below ``tol``, the next
anchor goes to the middle of the segment whose interpolated answer has the largest residual on the
problem's fixed reference-free validation set (:mod:`pinn_lora.training.verdict`) at that midpoint. No
reference solution and no held-out coefficient is used.

**Query.** ``family(c)`` (or :meth:`Family.query`) answers from the two neighbouring anchors, t the
position of c between them in the coefficient's own coordinate (log ν, γ, d, k²; the one continuation
uses): ``interpolate="solution"`` blends their networks, (1 − t)·u_a + t·u_b (:class:`Blend`);
``"weights"`` returns one plain network with the interpolated weights W0 + ΔW; ``"cubic"`` blends the four
anchors around c with the weights of their Lagrange polynomial (error O(h⁴) in the anchor spacing h where
the solution is smooth in c, against O(h²) for the two-anchor blend). The build's default, ``"auto"``,
keeps whichever has the smallest worst validation residual at the final segments' midpoints. A
few small tensor operations, no training; at an anchor, that anchor's network exactly; a coefficient
outside [low, high] is refused. The second build, :func:`build_hyper_family`, trains one
coefficient-conditioned adapter (:class:`Conditioned`) instead.

A family is saved as ``family.safetensors`` (every anchor's weights) + ``family.json`` (its card: range,
method, base hash, anchors with their validation residuals, how it was built), bound to each other like
every other card (:func:`pinn_lora.store.tensors.card_metadata`).
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

from pinn_lora.methods.dynamics.base import Objective
from pinn_lora.model.jacobian import residual_jacobian, residual_vector

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
    from pinn_lora.model.adapters.base import merge_adapters

    plain = merge_adapters(copy.deepcopy(model))
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


class Blend(nn.Module):
    """Σ_k w_k·u_k(x), Σ_k w_k = 1: anchors' solutions blended (a hard initial or boundary condition of the
    form g + d·N holds for the blend as for each). Two networks and ``t``: (1 − t)·a(x) + t·b(x)."""

    def __init__(self, *nets: nn.Module, t: float | None = None, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.w = [1.0 - float(t), float(t)] if weights is None else [float(w) for w in weights]
        if len(self.w) != len(self.nets):
            raise ValueError(f"Blend: {len(self.nets)} networks, {len(self.w)} weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.nets) == 2:
            return torch.lerp(self.nets[0](x), self.nets[1](x), self.w[1])
        return sum(w * net(x) for w, net in zip(self.w, self.nets))


def lagrange_weights(nodes: Sequence[float], c: float) -> list[float]:
    """The Lagrange basis polynomials of ``nodes`` at ``c``: Σ_k w_k f(node_k) is the interpolating polynomial's
    value (1 at a node itself, 0 at the others; the weights sum to 1)."""
    out = []
    for k, xk in enumerate(nodes):
        w = 1.0
        for m, xm in enumerate(nodes):
            if m != k:
                w *= (c - xm) / (xk - xm)
        out.append(w)
    return out


INTERPOLATIONS = ("weights", "solution", "cubic")


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
        self.interpolate = self.card.get("interpolate", "weights")

    def __call__(self, value: float) -> nn.Module:
        return self.query(value)

    def problem_at(self, value: float) -> Any:
        """The problem at ``over`` = ``value`` (the other coefficients as the family's)."""
        return self.problem.with_coefficients(**{self.over: float(value)})

    def _check(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FamilyError(f"{self.over}={value!r}: give a number in [{self.low:g}, {self.high:g}]")
        if not self.low <= value <= self.high:
            raise FamilyError(f"{self.over}={value:g} is outside the family's range [{self.low:g}, {self.high:g}] "
                              "(build a family over a wider range, or adapt to it: python -m pinn_lora.adapt)")

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the weights file holds."""
        return {f"anchor{i}.{k}": v.detach() for i, s in enumerate(self.states) for k, v in s.items()}

    def _neighbours(self, value: float) -> tuple[int, int, float]:
        """(i, j, t): ``value`` lies at t ∈ [0, 1) of the way from anchor i to anchor j in the coordinate
        (t = 0 and i = j at an anchor)."""
        self._check(value)
        c = self.spec.coordinate(float(value))
        j = bisect.bisect_left(self._coords, c)
        if j < len(self._coords) and self._coords[j] == c:
            return j, j, 0.0  # exactly an anchor
        j = min(max(j, 1), len(self._coords) - 1)
        return j - 1, j, (c - self._coords[j - 1]) / (self._coords[j] - self._coords[j - 1])

    def weights(self, value: float) -> dict[str, torch.Tensor]:
        """The interpolated plain weights at ``value`` (refused outside [low, high])."""
        i, j, t = self._neighbours(value)
        if i == j:
            return self.states[i]
        return {k: torch.lerp(self.states[i][k], self.states[j][k], t) for k in self.states[i]}

    def _network(self, state: Mapping[str, torch.Tensor], value: float) -> nn.Module:
        net = copy.deepcopy(self.template)
        net.load_state_dict(state)
        net.apply_output_transform(self.problem_at(value).output_transform)
        return net

    def stencil(self, value: float) -> tuple[list[int], list[float]]:
        """(anchor indices, weights) of the ``"cubic"`` answer at ``value``: the Lagrange polynomial through
        the four anchors around it in the coordinate (the two neighbours and one more on each side, shifted
        inward at the range's ends; all anchors when there are fewer). At an anchor: that anchor alone."""
        i, j, _ = self._neighbours(value)
        if i == j:
            return [i], [1.0]
        n = min(4, len(self.anchors))
        first = min(max(i - (n - 2) // 2, 0), len(self.anchors) - n)
        idx = list(range(first, first + n))
        return idx, lagrange_weights([self._coords[k] for k in idx], self.spec.coordinate(float(value)))

    def query(self, value: float) -> nn.Module:
        """A network for ``over`` = ``value``, no training: with ``interpolate="weights"`` a plain network
        with the interpolated weights; with ``"solution"`` the blend (1 − t)·u_i + t·u_j of the two
        neighbouring anchors' networks (:class:`Blend`); with ``"cubic"`` the blend of the four anchors around
        it with Lagrange weights (:meth:`stencil`). At an anchor, that anchor's network."""
        if self.interpolate in ("solution", "cubic") and self.states:
            i, j, t = self._neighbours(value)
            if i != j and self.interpolate == "solution":
                return Blend(self._network(self.states[i], value), self._network(self.states[j], value), t=t)
            if i != j:
                idx, w = self.stencil(value)
                return Blend(*(self._network(self.states[k], value) for k in idx), weights=w)
        return self._network(self.weights(value), value)

    # -- files
    def save(self, path: str | Path) -> dict[str, Any]:
        """Write ``path``/family.safetensors + family.json; returns the card written."""
        from pinn_lora.store.tensors import card_metadata, save_tensors, write_json
        from pinn_lora.store.schema import family_card_schema, validate

        path = Path(path)
        _check_out(path)
        card = {**self.card, "kind": FAMILY_KIND}
        validate({**card, "weights_sha256": "0" * 64}, family_card_schema(), f"family card in {path}")
        tensors = {k: v.cpu().contiguous() for k, v in self.tensors().items()}
        path.mkdir(parents=True, exist_ok=True)
        card["weights_sha256"] = save_tensors(path / "family.safetensors", tensors, metadata=card_metadata(card))
        write_json(path / "family.json", card)
        self.card = card
        return card


class Conditioned(nn.Module):
    """The coefficient-conditioned adapter (after Hyper-LR-PINN, Cho et al. 2023): every linear layer
    l of the base gets W_l(c) = W0_l + B_l·diag(g_l(ξ))·A_l, with B_l, A_l (rank r) shared over the range
    and the gains g(ξ) = (g_1 … g_L) from a small MLP of ξ ∈ [−1, 1], the coefficient's coordinate
    mapped onto the range. ``xi`` is the coefficient the forward pass answers for. B starts at 0, so
    the start is the base everywhere in the range."""

    def __init__(self, template: nn.Module, rank: int = 8, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 104729)
        ref = next(template.parameters())
        kw = {"dtype": ref.dtype, "device": ref.device}
        self.template = template
        for p in template.parameters():
            p.requires_grad_(False)
        sizes = [(lin.out_features, lin.in_features) for lin in template.linears]
        self.rank = int(rank)
        self.ranks = [min(self.rank, o, i) for o, i in sizes]  # as LoRA: min(rank, out, in) per layer
        self.B = nn.ParameterList([nn.Parameter(torch.zeros(o, r, **kw)) for (o, _), r in zip(sizes, self.ranks)])
        self.A = nn.ParameterList([nn.Parameter((torch.randn(r, i, generator=gen, dtype=torch.float64)
                                                 / math.sqrt(i)).to(**kw)) for (_, i), r in zip(sizes, self.ranks)])
        self.hyper = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                   nn.Linear(width, sum(self.ranks))).to(**kw)
        with torch.no_grad():
            for lin in self.hyper:
                if isinstance(lin, nn.Linear):
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64)
                                     .mul(math.sqrt(1.0 / lin.in_features)).to(**kw))
                    lin.bias.zero_()
            self.hyper[-1].bias.fill_(1.0)  # gains start at 1 (plus a random slope in ξ)
        self.xi = 0.0

    def gains(self, xi: float) -> list[torch.Tensor]:
        """g_l(ξ) for every layer (r_l values each)."""
        ref = self.B[0]
        return list(self.hyper(torch.full((1, 1), float(xi), dtype=ref.dtype, device=ref.device))[0].split(self.ranks))

    def weights(self, xi: float) -> dict[str, torch.Tensor]:
        g = self.gains(xi)
        out = {}
        for l, lin in enumerate(self.template.linears):
            out[f"linears.{l}.weight"] = lin.weight + (self.B[l] * g[l]) @ self.A[l]
            out[f"linears.{l}.bias"] = lin.bias
        return out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The base network's own forward (activations, output transform) with W(ξ) in its layers."""
        return torch.func.functional_call(self.template, self.weights(self.xi), (inputs,))


class HyperFamily(Family):
    """A family answered by a :class:`Conditioned` adapter (no anchors: ``anchors`` and ``states`` stay empty)."""

    def __init__(self, problem: Any, over: str, low: float, high: float, conditioned: Conditioned,
                 card: Mapping[str, Any]) -> None:
        super().__init__(problem, over, low, high, [], [], conditioned.template, card)
        self.conditioned = conditioned

    def xi(self, value: float) -> float:
        """The coefficient ``value``'s coordinate mapped onto [−1, 1] (:meth:`value_at` inverts it)."""
        a, b = self.spec.coordinate(self.low), self.spec.coordinate(self.high)
        return 2.0 * (self.spec.coordinate(float(value)) - a) / (b - a) - 1.0

    def value_at(self, xi: float) -> float:
        """The coefficient at ``xi`` ∈ [−1, 1], kept inside [low, high] (the coordinate's round trip may round)."""
        a, b = self.spec.coordinate(self.low), self.spec.coordinate(self.high)
        return min(max(self.spec.from_coordinate(a + (xi + 1) / 2 * (b - a)), self.low), self.high)

    def weights(self, value: float) -> dict[str, torch.Tensor]:
        self._check(value)
        with torch.no_grad():
            return {k: v.detach() for k, v in self.conditioned.weights(self.xi(value)).items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"conditioned.{k}": v.detach() for k, v in self.conditioned.state_dict().items()
                if not k.startswith("template.")} | {f"base.{k}": v.detach() for k, v in
                                                       self.template.state_dict().items()}


def load_family(path: str | Path, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Family:
    """The family saved in directory ``path`` (its card checked and bound to the weights; the base it was
    built on is not needed)."""
    from pinn_lora.store.tensors import CheckpointError, check_card_binding, load_tensors, read_json, sha256
    from pinn_lora.model.network import PINN
    from pinn_lora.core.registry import get_problem
    from pinn_lora.store.schema import family_card_schema, validate

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
    if len(card["range"]) != 2 or not card["range"][0] < card["range"][1]:
        raise CheckpointError(f"card {card_path}: range {card['range']} is not [low, high] with low < high")
    lo, hi = card["range"]
    try:
        if card.get("builder", "bank") == "hyper":
            template.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("base.")})
            h = card["hyper"]
            cond = Conditioned(template, rank=h["rank"], width=h["width"])
            cond.load_state_dict({**{k[12:]: v for k, v in tensors.items() if k.startswith("conditioned.")},
                                  **{f"template.{k}": v for k, v in template.state_dict().items()}})
            return HyperFamily(problem, card["over"], lo, hi, cond.to(dtype=dtype, device=device), card)
        names = list(template.state_dict())
        states = [{k: tensors[f"anchor{i}.{k}"].to(dtype=dtype, device=device) for k in names}
                  for i in range(len(card.get("anchors") or []))]
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{weights} does not fit its card {card_path}: {exc}") from None
    if len(states) < 2:
        raise CheckpointError(f"card {card_path}: an adapter bank needs at least 2 anchors")
    return Family(problem, card["over"], lo, hi, [a["value"] for a in card["anchors"]], states, template, card)


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
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 2:
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


def _check_out(out: str | Path | None) -> None:
    """A family is never written over another one (refused before any training)."""
    if out is not None and any((Path(out) / name).exists() for name in ("family.json", "family.safetensors")):
        raise FamilyError(f"out={out}: it already holds a family (family.json); choose another directory")


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
    :func:`~pinn_lora.runs.adapt.adapt_to` call (steps, solver, method options ...). ``warm_start``: every anchor
    after the first is adapted from the nearest anchor already placed (its merged network, as the base of
    that run) instead of from the base, so neighbouring anchors' weights stay close."""
    from pinn_lora.runs.adapt import adapt_to, resolve_device, resolve_dtype

    spec, low, high = _check_range(problem, over, low, high)
    over = spec.name
    _check_out(out)
    _check_bank_options(anchors, tol, interpolate)
    mode = "solution" if interpolate == "auto" else interpolate  # the anchors are placed with blended solutions
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    base_net, base_card = _resolve_pinn_base(problem, base, dt, dev, "build_family")
    t0 = time.perf_counter()
    start = [low, high] + ([_midpoint(spec, low, high)] if anchors >= 3 else [])
    values: list[float] = []
    states: list[dict[str, torch.Tensor]] = []
    rows: list[dict[str, Any]] = []
    used: dict[str, Any] = {}  # the method as the first anchor's run resolved it (options and recommendations)

    def say(msg: str) -> None:
        if progress:
            print(f"family: {msg}", file=sys.stderr, flush=True)

    def start_of(value: float) -> tuple[tuple[nn.Module, dict[str, Any]], float | None]:
        """The base of the adaptation at ``value``: the base, or (warm_start) the nearest anchor's network."""
        if not warm_start or not values:
            return (base_net, base_card), None
        c = spec.coordinate(value)
        k = min(range(len(values)), key=lambda i: abs(spec.coordinate(values[i]) - c))
        net = copy.deepcopy(base_net)
        net.load_state_dict(states[k])
        return (net, {**base_card, "coefficients": {**base_card.get("coefficients", {}), over: values[k]}}), values[k]

    def add(value: float, reason: str) -> None:
        target = problem.with_coefficients(**{over: value})
        t = time.perf_counter()
        start, source = start_of(value)
        res = adapt_to(start, target, method, seed=seed, device=dev, dtype=dtype, progress=False, plots=False,
                       **adapt_options)
        s = res.summary()
        used.setdefault("method", _json_safe(res.method.describe()))
        values.append(value)
        states.append(merged_state(res.model))
        rows.append({"value": value, "reason": reason, "status": s["status"], "from": source,
                     "validation_residual": s["validation_residual"],
                     "validation_residual_base": s["validation_residual_base"],
                     "wall_s": round(time.perf_counter() - t, 2)})
        say(f"anchor {over}={value:.6g} ({reason}): {s['status']}, validation residual "
            f"{s['validation_residual_base']:.3e} -> {s['validation_residual']:.3e} in {rows[-1]['wall_s']:.0f} s")

    for v in start:
        add(v, "range end" if v in (low, high) else "middle")
    fam = Family(problem, over, low, high, values, states, base_net, {"interpolate": mode})
    checks: list[dict[str, Any]] = []
    while True:
        worst = None
        for a, b in zip(fam.anchors[:-1], fam.anchors[1:]):
            mid = _midpoint(spec, a, b)
            r = answer_residual(fam, mid)
            checks.append({"value": mid, "anchors": len(fam.anchors), "validation_residual": r})
            if worst is None or r > worst[1]:
                worst = (mid, r)
        if worst is None or worst[1] <= tol or len(values) >= anchors:
            break
        add(worst[0], f"largest midpoint residual {worst[1]:.3e}")
        fam = Family(problem, over, low, high, values, states, base_net, {"interpolate": mode})
    choice = None
    if interpolate == "auto":  # the answer whose worst final midpoint residual is smallest (reference-free)
        final = checks[-(len(fam.anchors) - 1):]
        choice = {"solution": max(c["validation_residual"] for c in final)}
        for other in ("weights", "cubic"):
            fam.interpolate = other
            choice[other] = max(answer_residual(fam, c["value"]) for c in final)
        mode = min(choice, key=choice.get)
    statuses = [r["status"] for r in rows]
    card = {
        "problem": problem.name, "coefficients": dict(problem.coefficients), "over": over, "range": [low, high],
        "coordinate": spec.scale, "builder": "bank", "interpolate": mode, "method": used["method"],
        **({"interpolate_choice": choice} if choice else {}),
        "base": _base_entry(base_card),
        "network": base_net.architecture(),
        "anchors": sorted(rows, key=lambda r: r["value"]),
        "midpoint_checks": checks, "tol": tol, "max_anchors": anchors,
        "build": {"seed": seed, "dtype": dtype, "device": str(dev), "adapt_options": _json_safe(adapt_options),
                  "warm_start": bool(warm_start),
                  "wall_time_s": round(time.perf_counter() - t0, 1)},
        "status": "completed" if all(s == "completed" for s in statuses) else "some_anchors_failed",
    }
    fam = Family(problem, over, low, high, values, states, base_net, card)
    if out is not None:
        fam.save(out)
        if plots:
            plot_family(fam, Path(out) / "plots" / "family.png")
    return fam


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
                       resample_every: int = 5, lm_mu: float = 0.01, seed: int = 0,
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

    spec, low, high = _check_range(problem, over, low, high)
    over = spec.name
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
        fam.save(out)
        plot_family(fam, Path(out) / "plots" / "family.png")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
