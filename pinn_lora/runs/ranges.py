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
        """Write ``path``/family.safetensors + family.json; returns the card written. ``path`` is claimed for
        it unless this process owns it already (:mod:`pinn_lora.store.rundir`: a folder pinn_lora did not create,
        or one holding another run, is refused)."""
        from pinn_lora.store import rundir
        from pinn_lora.store.tensors import card_metadata, save_tensors, write_json
        from pinn_lora.store.schema import family_card_schema, validate

        path = Path(path)
        _check_out(path)
        if not rundir.owned(path):
            with rundir.claim(path, key="out"):
                return self.save(path)
        card = {**self.card, "kind": FAMILY_KIND}
        validate({**card, "weights_sha256": "0" * 64}, family_card_schema(), f"family card in {path}")
        tensors = {k: v.cpu().contiguous() for k, v in self.tensors().items()}
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
    from pinn_lora.core.runtime import check_device

    check_device(device, "load_family")
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


def _check_out(out: str | Path | None) -> None:
    """A family is never written over another one, nor into a folder pinn_lora may not claim (refused
    before any training)."""
    from pinn_lora.store import rundir

    if out is not None and any((Path(out) / name).exists() for name in ("family.json", "family.safetensors")):
        raise FamilyError(f"out={out}: it already holds a family (family.json); choose another directory")
    if out is not None and not rundir.owned(out):
        rundir.check(out, key="out")


# the builds live in pinn_lora.runs.range_build (re-exported here: pinn_lora.build_family)
