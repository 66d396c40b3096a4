"""The residual vector and its Jacobian with respect to the trainable parameters.

The training loss is Σ_terms mean_i r_i² / scale (:func:`pinn_lora.training.trainer.residual_terms`
without causal weights); written as ‖ρ‖² with ρ = r / √(N·scale) per term (term-major), it is
a least-squares problem, and ``J = ∂ρ/∂θ`` (rows: points of each term, columns: the trainable
parameters in the model's order) is what a Gauss–Newton or Levenberg–Marquardt step needs.

J is built point by point with ``torch.func``: the residual at one point is a function of the
parameters (``functional_call``) whose input derivatives come from forward-mode ``jacfwd``
(first and second derivatives of one scalar output with respect to one input point);
``vmap`` runs it over a chunk of points and ``jacrev`` gives each point's gradient — per-point
gradients in one vectorised reverse pass, the adapter's structure (e.g. for W = W0 + sBA the
gradient with respect to B is an outer product through A) taken care of by autograd, and no
per-point m×n matrix is formed. Chunks bound the memory (``chunk`` points at a time).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev, vmap

from pinn_lora.model.derivatives import derivative_indices


class PointDerivatives:
    """A derivative provider (``d.u``, ``d.u_x``, ``d.u_xx`` …) at one input point ``x`` (shape
    (dim,)), for residuals evaluated under ``torch.func`` transforms; values have shape (1, 1)."""

    def __init__(self, u_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 variables: tuple[str, ...]) -> None:
        self.u_fn, self.x, self.variables = u_fn, x, variables
        self.u = u_fn(x).reshape(1, 1)
        self._first: torch.Tensor | None = None
        self._second: torch.Tensor | None = None

    def column(self, name: str) -> torch.Tensor:
        return self.x[self.variables.index(name)].reshape(1, 1)

    def __getattr__(self, name: str) -> torch.Tensor:
        if not name.startswith("u_") or "variables" not in self.__dict__:
            raise AttributeError(name)
        idx = derivative_indices(name, self.variables)
        if len(idx) == 1:
            if self._first is None:
                self._first = jacfwd(self.u_fn)(self.x)
            return self._first[idx[0]].reshape(1, 1)
        if self._second is None:
            self._second = jacfwd(jacfwd(self.u_fn))(self.x)
        return self._second[idx[0], idx[1]].reshape(1, 1)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, in the model's order (the columns of J)."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _plain_forward(model: nn.Module) -> Iterator[None]:
    """Switch off weight-gradient hooks (ODELoRA's preconditioner) while transforms run."""
    hooked = [m for m in model.modules() if getattr(m, "capture_weight_grad", False)]
    for m in hooked:
        m.capture_weight_grad = False
    try:
        yield
    finally:
        for m in hooked:
            m.capture_weight_grad = True


def _point_residual(problem: Any, model: nn.Module) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """r(θ, x): the residual terms at one point x, shape (terms,)."""

    def residual(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def u_fn(y: torch.Tensor) -> torch.Tensor:
            return functional_call(model, params, (y.unsqueeze(0),)).reshape(())

        terms = problem.residuals(PointDerivatives(u_fn, x, problem.variables))
        return torch.stack([v.reshape(()) for v in terms.values()])

    return residual


def term_names(problem: Any) -> list[str]:
    from pinn_lora.model.derivatives import _Recorder

    return list(problem.residuals(_Recorder(problem.variables)))


def residual_vector(problem: Any, model: nn.Module, points: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """ρ (terms·N,): the normalised residuals, so that ‖ρ‖² is the training loss (no causal weights)."""
    from pinn_lora.model.derivatives import why_no_jets, provider

    # no parameter gradients are needed: the Taylor-mode pass (forward only through the network)
    # costs a third to a half of nested reverse mode here, on a CPU too
    engine = "autograd" if why_no_jets(model) else "jets"
    parts = []
    with torch.enable_grad(), _plain_forward(model):
        for c in points.detach().split(chunk):
            terms = problem.residuals(provider(problem, model, c, engine))
            parts.append(torch.stack([v.detach().reshape(-1) for v in terms.values()]))
    r = torch.cat(parts, dim=1)  # (terms, N)
    return r.reshape(-1) / (points.shape[0] * problem.residual_scale()) ** 0.5


def residual_jacobian(problem: Any, model: nn.Module, points: torch.Tensor,
                      chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(ρ, J): the normalised residual vector (terms·N,) and its Jacobian (terms·N, P) with
    respect to the trainable parameters (flattened in :func:`trainable` order). The structured
    engine (:func:`structured_jacobian`) where the network allows it, else per-point transforms."""
    why = structured_unsupported(model)
    parts = [(structured_jacobian if not why else transform_jacobian)(problem, model, c)
             for c in points.detach().split(chunk)]
    norm = (points.shape[0] * problem.residual_scale()) ** -0.5
    terms = parts[0][0].shape[0]
    r = torch.cat([p[0] for p in parts], dim=1)  # (terms, N)
    jac = torch.cat([p[1] for p in parts], dim=1)  # (terms, N, P)
    return r.reshape(-1) * norm, jac.reshape(terms * points.shape[0], -1) * norm


def transform_jacobian(problem: Any, model: nn.Module, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised (r (terms, N), J (terms, N, P)) by ``vmap`` over points of ``jacrev`` of the
    one-point residual (any network ``functional_call`` can run)."""
    params = {k: p.detach() for k, p in trainable(model).items()}
    point = _point_residual(problem, model)

    def with_value(p: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = point(p, x)
        return r, r

    with torch.no_grad(), _plain_forward(model):
        jac, r = vmap(jacrev(with_value, has_aux=True), in_dims=(None, 0))(params, points)
    jac = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)  # (N, terms, P)
    return r.T, jac.transpose(0, 1)


# -- the structured engine ----------------------------------------------------------------------
def _own_formula(lin: nn.Module) -> bool:
    """Whether the layer's ``point_gradients`` was written for the weight it computes with: the class
    defining it is the one defining ``weight`` and ``delta_weight`` or a subclass of it (a subclass
    that changed the weight's formula without writing its gradients gets the generic contraction)."""
    def owner(attr: str) -> type:
        return next(k for k in type(lin).__mro__ if attr in k.__dict__)

    if not hasattr(lin, "point_gradients"):
        return False
    mine = owner("point_gradients")
    return all(issubclass(mine, owner(attr)) for attr in ("weight", "delta_weight"))


def structured_unsupported(model: nn.Module) -> str:
    """'' when :func:`structured_jacobian` can run ``model``, else why not."""
    from pinn_lora.model.derivatives import why_no_jets

    why = why_no_jets(model)
    if why:
        return why
    covered = {id(p) for lin in model.linears for p in lin.parameters()}
    if any(id(p) not in covered for p in trainable(model).values()):
        return "a trainable parameter outside the linear layers"
    return ""


class _Weight(nn.Module):
    """W(θ) of an adapter layer as a module's output, so ``functional_call`` can differentiate it."""

    def __init__(self, lin: nn.Module) -> None:
        super().__init__()
        self.lin = lin

    def forward(self) -> torch.Tensor:
        return self.lin.weight()


def weight_with(lin: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``lin.weight()`` computed with ``tensors`` (its own parameter and buffer names) in place of its own."""
    return functional_call(_Weight(lin), {f"lin.{k}": v for k, v in tensors.items()}, ())


def structured_jacobian(problem: Any, model: nn.Module, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised (r (terms, N), J (terms, N, P)) from one Taylor-mode pass and one reverse
    pass per term.

    The jet forward (:func:`pinn_lora.model.derivatives.mlp_jets`, written out to keep each layer's
    input jets H (S slots × N × in) and output Z) makes each point's residual depend on that
    point's rows only, so the reverse pass of Σᵢ rᵢ gives every point's own ∂rᵢ/∂Z = Δ at once.
    A layer's per-point gradient is then Σ_s Δ[s,i] H[s,i]ᵀ through the layer's parameterisation:
    each adapter writes it for its own formula (``AdapterLinear.point_gradients``: for W = W0 + s·B·A,
    ∂rᵢ/∂B = s Σ_s Δ[s,i] (A H[s,i])ᵀ and ∂rᵢ/∂A = s Σ_s (BᵀΔ[s,i]) H[s,i]ᵀ; no per-point m×n
    matrix); a layer without one gets the per-point m×n gradient contracted with ∂W/∂θ (one small
    Jacobian per layer and step); an ``nn.Linear``'s is the gradient itself (its bias: Δ[0,i])."""
    from pinn_lora.model.derivatives import JetDerivatives, _activation_jet, _plan, layer_weight, needed_derivatives

    names = needed_derivatives(problem)
    first, second = _plan(names, problem.variables)
    x = points.detach()
    n, dim = x.shape
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    h = torch.cat([x.unsqueeze(0), eye[first].unsqueeze(1).expand(-1, n, -1),
                   x.new_zeros(len(second), n, dim)])  # the input's jets: value, ∂x/∂v = e_v, 0
    pi = [first.index(i) for i, _ in second]
    pj = [first.index(j) for _, j in second]
    inputs, outs = [], []
    with torch.no_grad(), _plain_forward(model):
        weights = [(w.detach(), None if b is None else b.detach()) for w, b in map(layer_weight, model.linears)]
    with torch.enable_grad():
        z = None
        for li, (w, b) in enumerate(weights):
            if li:
                a, s1, s2 = _activation_jet(model.activation_name, z[0])
                zd, zdd = z[1:1 + len(first)], z[1 + len(first):]
                h = torch.cat([a.unsqueeze(0), s1 * zd, s2 * zd[pi] * zd[pj] + s1 * zdd])
            inputs.append(h.detach())
            out = h @ w.T
            if b is not None:
                out = torch.cat([out[:1] + b, out[1:]])
            z = out if li else out.requires_grad_(True)
            outs.append(z)
        d = JetDerivatives(None, x, problem.variables, names, stacked=z.unsqueeze(0),
                           transform=getattr(model, "_output_transform", None))
        terms = list(problem.residuals(d).values())
        r = torch.stack([t.reshape(-1) for t in terms])  # (terms, N)
        deltas = [torch.autograd.grad(t.sum(), outs, retain_graph=i < len(terms) - 1) for i, t in enumerate(terms)]
    per_term = []
    for grads in deltas:
        cols = []
        for lin, hin, delta in zip(model.linears, inputs, grads):
            cols += _layer_columns(lin, hin, delta)
        per_term.append(torch.cat(cols, dim=1))
    return r.detach(), torch.stack(per_term)


def _layer_columns(lin: nn.Module, h: torch.Tensor, delta: torch.Tensor) -> list[torch.Tensor]:
    """Per-point gradients (N, p) of one layer's trainable parameters, in ``parameters()`` order."""
    own = [(k, p) for k, p in lin.named_parameters() if p.requires_grad]
    if not own:
        return []
    n = h.shape[1]
    if _own_formula(lin):
        got = lin.point_gradients(delta, h, {k for k, _ in own})
        if got is not None:
            return [got[k] for k, _ in own]
    full = torch.einsum("sim,sin->imn", delta, h).reshape(n, -1)  # per-point dr/dW (N, m·n)
    if isinstance(lin, nn.Linear):
        got = {"weight": full, "bias": delta[0]}
        return [got[k] for k, _ in own]
    params = {k: p.detach() for k, p in own}
    with _plain_forward(lin):
        phi = jacrev(lambda ps: weight_with(lin, ps))(params)  # name: (m, n, *shape)
    return [full @ phi[k].reshape(full.shape[1], -1) for k, _ in own]
