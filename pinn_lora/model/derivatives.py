"""Derivative provider: ``u`` and its partial derivatives from one network call.

Residuals are written against this object (``d.u``, ``d.u_x``, ``d.u_t``,
``d.u_xx`` …), so the same residual definition serves any engine that can
provide those names. Every derivative is computed at most once per provider:
all first derivatives come from one reverse pass, each second derivative
``u_vv`` from one more.

Two engines fill the provider (``train.derivatives``):

- ``autograd`` (:class:`Derivatives`): nested reverse mode; any network.
- ``jets`` (:class:`JetDerivatives`): Taylor mode for pinn_lora's MLPs: the value, the
  first derivatives and only the second derivatives the residual reads travel forward
  together, one stacked matrix product per layer; training then needs a single
  first-order backward. Fewer, larger kernels (what a GPU and a CUDA graph want), and
  it runs K stacked networks at once (:mod:`pinn_lora.runs.many`). Equal to ``autograd`` to
  rounding (tests: 1e-10 in float64, every problem and method).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn


def derivative_indices(name: str, variables: tuple[str, ...]) -> list[int]:
    """The input columns of a derivative name (``u_x`` → [i_x], ``u_xt`` → [i_x, i_t]); an
    AttributeError naming the variables for anything else (first and second derivatives only)."""
    wrt = name[2:]
    if not name.startswith("u_") or not wrt or len(wrt) > 2 or any(v not in variables for v in wrt):
        raise AttributeError(f"unknown derivative {name!r} for variables {variables}")
    return [variables.index(v) for v in wrt]


class Derivatives:
    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                 variables: tuple[str, ...]) -> None:
        self.variables = variables
        self.points = points if points.requires_grad else points.detach().requires_grad_(True)
        self.u = net(self.points)
        self._first: torch.Tensor | None = None
        self._cache: dict[str, torch.Tensor] = {}

    def column(self, name: str) -> torch.Tensor:
        """The input column ``name`` (e.g. ``d.column("x")``), shape (N, 1)."""
        return self.points[:, self.variables.index(name)].unsqueeze(1)

    def _grad(self) -> torch.Tensor:
        if self._first is None:
            (self._first,) = torch.autograd.grad(self.u.sum(), self.points, create_graph=True)
        return self._first

    def __getattr__(self, name: str) -> torch.Tensor:
        if not name.startswith("u_") or "_cache" not in self.__dict__:
            raise AttributeError(name)
        cache = self._cache
        if name in cache:
            return cache[name]
        idx = derivative_indices(name, self.variables)
        if len(idx) == 1:
            out = self._grad()[:, idx[0]].unsqueeze(1)
        else:
            first = getattr(self, "u_" + name[2])
            (g,) = torch.autograd.grad(first.sum(), self.points, create_graph=True)
            out = g[:, idx[1]].unsqueeze(1)
        cache[name] = out
        return out


# ---------------------------------------------------------------------------------------------
# Taylor-mode ("jet") path
# ---------------------------------------------------------------------------------------------
ENGINES = ("auto", "autograd", "jets")


def _activation_jet(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """σ(z), σ'(z), σ''(z) for the activations the jet path knows."""
    if name == "tanh":
        t = torch.tanh(z)
        s1 = 1 - t * t
        return t, s1, -2 * t * s1
    if name == "sin":
        s, c = torch.sin(z), torch.cos(z)
        return s, c, -s
    raise KeyError(name)


JET_ACTIVATIONS = ("tanh", "sin")


class _Recorder:
    """Stands in for a provider to find which derivatives a residual reads."""

    def __init__(self, variables: tuple[str, ...]) -> None:
        self.variables, self.used = variables, set()

    def column(self, name: str) -> torch.Tensor:
        return torch.zeros(1, 1, dtype=torch.float64)

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("u_") or name == "u":
            self.used.add(name)
            return torch.zeros(1, 1, dtype=torch.float64)
        raise AttributeError(name)


def needed_derivatives(problem: Any) -> tuple[str, ...]:
    """The derivative names (``u_x``, ``u_xx`` …) the problem's residuals read, found by
    running them once on a recorder (cached per problem)."""
    key = problem.key() if hasattr(problem, "key") else id(problem)
    if key not in _NEEDED:
        rec = _Recorder(problem.variables)
        problem.residuals(rec)
        _NEEDED[key] = tuple(sorted(n for n in rec.used if n != "u"))
    return _NEEDED[key]


_NEEDED: dict[Any, tuple[str, ...]] = {}


def layer_weight(lin: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) a linear layer computes with: ``nn.Linear``'s own, an adapter's W0 + ΔW
    (formed once, so its gradient hook, when asked for, sees the whole dL/dW)."""
    if isinstance(lin, nn.Linear):
        return lin.weight, lin.bias
    w = lin.weight()
    if getattr(lin, "capture_weight_grad", False) and w.requires_grad and torch.is_grad_enabled():
        w.register_hook(lin._store_weight_grad)
    return w, lin.bias0


def why_no_jets(net: nn.Module) -> str:
    """'' when the jet path can run ``net``, else the reason it cannot."""
    from pinn_lora.model.adapters.base import AdapterLinear

    if not hasattr(net, "linears") or not hasattr(net, "activation_name"):
        return f"{type(net).__name__} is not a pinn_lora PINN (needs .linears and .activation_name)"
    if net.activation_name not in JET_ACTIVATIONS:
        return f"activation {net.activation_name!r} has no jet rule (known: {', '.join(JET_ACTIVATIONS)})"
    for lin in net.linears:
        if not isinstance(lin, (nn.Linear, AdapterLinear)):
            return f"layer {type(lin).__name__} is neither nn.Linear nor an AdapterLinear"
        if isinstance(lin, AdapterLinear) and type(lin).forward is not AdapterLinear.forward and not getattr(
                type(lin), "forward_is_linear", False):
            # a layer with its own forward must declare that it computes F.linear(x, weight(), bias0)
            return f"{type(lin).__name__} overrides forward without declaring forward_is_linear"
    return ""


def mlp_jets(weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]], activation: str, x: torch.Tensor,
             first: Sequence[int], second: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Value, first and second derivatives of an MLP at the points ``x`` (N, d), propagated
    forward together (Taylor mode): one stacked matrix product per layer, no reverse pass.

    ``weights``: per layer (W, b), W of shape (out, in) or (K, out, in) for K stacked
    networks. Returns (K, S, N, out) with slots [u, u_{first[0]}, …, u_{second[0]}, …]
    (K = 1 for unstacked weights)."""
    w0 = weights[0][0]
    batched = w0.dim() == 3
    n_first = len(first)
    slot = {v: i for i, v in enumerate(first)}
    for i, j in second:
        if i not in slot or j not in slot:
            raise ValueError("mlp_jets: each second-derivative variable must also be in 'first'")
    dev = x.device
    pi = _index(tuple(slot[i] for i, _ in second), dev)
    pj = _index(tuple(slot[j] for _, j in second), dev)

    def affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # h (K, S, N, in) -> (K, S, N, out); the bias on slot 0 only
        k, s, n, _ = h.shape
        wt = w.transpose(-1, -2)
        out = (h.reshape(k, s * n, -1) @ (wt if batched else wt.unsqueeze(0))).reshape(k, s, n, -1)
        if b is not None:
            bias = b.reshape(k if batched else 1, 1, 1, -1)
            out = torch.cat([out[:, :1] + bias, out[:, 1:]], dim=1)
        return out

    # first layer: the input's derivatives are unit vectors, so W's columns are z's derivatives
    w, b = weights[0]
    wt = w.transpose(-1, -2) if batched else w.T.unsqueeze(0)  # (K, d, out)
    z0 = x @ wt + (b.reshape(wt.shape[0], 1, -1) if b is not None else 0)  # (K, N, out)
    n = x.shape[0]
    zd = wt.index_select(1, _index(tuple(first), dev)).unsqueeze(2).expand(-1, -1, n, -1)  # (K, F, N, out)
    zdd = None  # second derivatives are zero after the first (affine) layer
    for w, b in weights[1:]:
        a, s1, s2 = _activation_jet(activation, z0)
        s1u, s2u = s1.unsqueeze(1), s2.unsqueeze(1)
        ad = s1u * zd
        add = s2u * zd.index_select(1, pi) * zd.index_select(1, pj)
        if zdd is not None:
            add = add + s1u * zdd
        out = affine(torch.cat([a.unsqueeze(1), ad, add], dim=1), w, b)
        z0, zd, zdd = out[:, 0], out[:, 1:1 + n_first], out[:, 1 + n_first:]
    if zdd is None:
        zdd = zd.new_zeros(zd.shape[0], len(second), *zd.shape[2:])
    return torch.cat([z0.unsqueeze(1), zd, zdd], dim=1)


_INDEX: dict[tuple, torch.Tensor] = {}


def _index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An index tensor on ``device``, made once: indexing with a Python list would copy it from
    the host at every call, which a CUDA graph capture refuses."""
    key = (values, str(device))
    if key not in _INDEX:
        _INDEX[key] = torch.tensor(values, dtype=torch.long, device=device)
    return _INDEX[key]


def _plan(names: Sequence[str], variables: tuple[str, ...]) -> tuple[list[int], list[tuple[int, int]]]:
    first, second = set(), []
    for name in names:
        wrt = name[2:]
        idx = [variables.index(v) for v in wrt]
        first.update(idx)
        if len(idx) == 2:
            pair = tuple(sorted(idx))
            if pair not in second:
                second.append(pair)
    return sorted(first), second


class JetDerivatives:
    """The provider of the jet path: the same names as :class:`Derivatives` (``u``, ``u_x``,
    ``u_xx`` …, ``column``), computed by :func:`mlp_jets` through the network and, when the
    network has an output transform, through that transform by the chain rule.

    The transform is differentiated exactly without a rule of its own: the network's output
    near each point is replaced by its second-order Taylor polynomial built from the jets,
    whose value and derivatives up to second order at the point are the network's; reverse
    mode then runs through the transform and the polynomial only (element-wise operations on
    (N, 1) tensors), never through the network.

    ``stacked``: ``mlp_jets`` output of K networks at the same points (then the points are
    repeated K times, network k owns rows k·N … (k+1)·N − 1)."""

    def __init__(self, net: nn.Module, points: torch.Tensor, variables: tuple[str, ...], names: Sequence[str],
                 stacked: torch.Tensor | None = None, transform: Any = None) -> None:
        self.variables = variables
        first, second = _plan(names, variables)
        x = points.detach()
        if stacked is None:
            weights = [layer_weight(lin) for lin in net.linears]
            stacked = mlp_jets(weights, net.activation_name, x, first, second)
            transform = getattr(net, "_output_transform", None)
        k = stacked.shape[0]
        xk = x.repeat(k, 1) if k > 1 else x
        flat = stacked.permute(1, 0, 2, 3).reshape(stacked.shape[1], k * x.shape[0], -1)  # (S, K·N, 1)
        self._cache: dict[str, torch.Tensor] = {}
        if transform is None:
            self.points = xk
            self.u = flat[0]
            for i, v in enumerate(first):
                self._cache["u_" + variables[v]] = flat[1 + i]
            for i, (a, b) in enumerate(second):
                self._cache["u_" + variables[a] + variables[b]] = flat[1 + len(first) + i]
                self._cache["u_" + variables[b] + variables[a]] = flat[1 + len(first) + i]
            self._inner = None
            return
        leaf = xk.clone().requires_grad_(True)
        dx = leaf - xk
        poly = flat[0]
        for i, v in enumerate(first):
            poly = poly + flat[1 + i] * dx[:, v:v + 1]
        for i, (a, b) in enumerate(second):
            c = 0.5 if a == b else 1.0
            poly = poly + c * flat[1 + len(first) + i] * dx[:, a:a + 1] * dx[:, b:b + 1]
        self._inner = Derivatives(lambda p: transform(p, poly), leaf, variables)
        self.points, self.u = leaf, self._inner.u

    def column(self, name: str) -> torch.Tensor:
        return self.points[:, self.variables.index(name)].unsqueeze(1)

    def __getattr__(self, name: str) -> torch.Tensor:
        if not name.startswith("u_") or "_cache" not in self.__dict__:
            raise AttributeError(name)
        if self._inner is not None:
            return getattr(self._inner, name)
        if name not in self._cache:
            raise AttributeError(f"derivative {name!r} was not planned; planned: {sorted(self._cache)}")
        return self._cache[name]


def provider(problem: Any, net: nn.Module, points: torch.Tensor, engine: str = "auto") -> Any:
    """The derivative provider for ``engine``: 'autograd' (nested reverse mode, any network),
    'jets' (Taylor mode, pinn_lora PINNs with tanh/sin), or 'auto' (jets on CUDA where
    supported, autograd otherwise: on a CPU the two take about the same time)."""
    if engine not in ENGINES:
        raise ValueError(f"derivatives={engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "jets" if points.is_cuda and not why_no_jets(net) else "autograd"
    if engine == "autograd":
        return Derivatives(net, points, problem.variables)
    why = why_no_jets(net)
    if why:
        raise ValueError(f"derivatives=jets cannot run this network: {why}")
    return JetDerivatives(net, points, problem.variables, needed_derivatives(problem))
