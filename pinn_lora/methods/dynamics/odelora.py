"""ODELoRA (Gao & Tan, arXiv 2602.07479): the LoRA factors follow an ODE whose
induced weight motion is full fine-tuning's gradient flow projected onto the
rank-r manifold, while the factors stay balanced (BᵀB = AAᵀ); training
integrates that ODE with an explicit Runge–Kutta scheme.

The field below is *derived* (the paper's text was not reachable; it matches
its abstract and is tested for the property): with W = W0 + s·B·A,
G = ∂L/∂W, S_B = BᵀB, S_A = AAᵀ and C = S_B⁻¹ BᵀGAᵀ S_A⁻¹,

    dB/dt = (−G Aᵀ S_A⁻¹ + ½ B C) / s,   dA/dt = (−S_B⁻¹ Bᵀ G + ½ C A) / s,

so that dW/dt = s(Ḃ A + B Ȧ) = −P_T(G) with P_T(G) = P_B G + G P_A − P_B G P_A.
The time step ``h`` is therefore the learning rate of full gradient descent in
weight space. Only ``g_B = s G Aᵀ`` and ``g_A = s Bᵀ G`` (autograd on the
factors) are needed; all solves are r×r Cholesky solves in float64.
This field alone does not keep BᵀB = AAᵀ (the symmetric gauge term of
``shared/methods.md`` would; it is not implemented): balance comes from the
rebalance after each step (``rebalance=True``, the default), which returns the
factors to BᵀB = AAᵀ without changing B·A. The weight trajectory is the same
either way; with ``rebalance=False`` the factors drift off balance.

With an embedded pair (``scheme="bs23"`` or ``"dopri5"``, beyond the paper)
the step size adapts to the local error of the factor ODE: ``lr`` is the
first step tried, ``rtol``/``atol`` set the error tolerance, steps may grow up
to ``h_max`` (default ``10·lr``), and a step whose error is too large is
retried from the same point with a smaller ``h`` (:mod:`~pinn_lora.methods.dynamics.runge_kutta`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from pinn_lora.model.adapters.lora import LoRALinear
from pinn_lora.methods.dynamics.base import Closure, Dynamics, damped_cholesky
from pinn_lora.methods.dynamics.runge_kutta import (
    StepController,
    adaptive_step,
    get_tableau,
    rk_step,
)

INITS = ("gradient", "random", "pissa")
IMPLICIT = ("auto", "implicit")  # schemes besides the explicit tableaus (auto: implicit with solver=lm, else euler)
PRECONDITIONERS = ("none", "rmsprop")


def _spd_factor(s: torch.Tensor, damping: float) -> torch.Tensor:
    """Cholesky factor of S + λI, λ = damping·tr(S)/r, in float64 (no host sync)."""
    lam = damping * torch.diagonal(s.double()).sum() / s.shape[0]
    return damped_cholesky(s, lam + 1e-300)


def odelora_field(b: torch.Tensor, a: torch.Tensor, g_b: torch.Tensor, g_a: torch.Tensor, scale: float,
                  damping: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(dB/dt, dA/dt) from the factor gradients g_B = s G Aᵀ and g_A = s Bᵀ G."""
    dtype = b.dtype
    b64, a64 = b.double(), a.double()
    gat = g_b.double() / scale  # G Aᵀ (m × r)
    btg = g_a.double() / scale  # Bᵀ G (r × n)
    lb = _spd_factor(b64.T @ b64, damping)
    la = _spd_factor(a64 @ a64.T, damping)
    x = torch.cholesky_solve(gat.T, la).T  # G Aᵀ S_A⁻¹
    y = torch.cholesky_solve(btg, lb)  # S_B⁻¹ Bᵀ G
    c = torch.cholesky_solve(b64.T @ x, lb)  # S_B⁻¹ Bᵀ G Aᵀ S_A⁻¹
    db = (-x + 0.5 * b64 @ c) / scale
    da = (-y + 0.5 * c @ a64) / scale
    return db.to(dtype), da.to(dtype)


def tangent_projection(g: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """P_T(G) = P_B G + G P_A − P_B G P_A at the point B·A (for tests and monitors)."""
    pb = b @ torch.linalg.solve(b.T @ b, b.T)
    pa = a.T @ torch.linalg.solve(a @ a.T, a)
    return pb @ g + g @ pa - pb @ g @ pa


def rebalance(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors with the same product: BᵀB = AAᵀ = Σ afterwards. Factors whose r×r core
    overflows (a step that blew up) come back unchanged, for the loop's divergence check to see
    (checked on the device: no host read)."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    core = rb @ ra.T
    ok = torch.isfinite(core).all()
    u, sig, vh = torch.linalg.svd(torch.where(ok, core, torch.zeros_like(core)))
    root = sig.clamp_min(0).sqrt()
    return (torch.where(ok, (qb @ (u * root)).to(b.dtype), b),
            torch.where(ok, ((root[:, None] * vh) @ qa.T).to(a.dtype), a))


def _roots(z: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z^(1/2), Z^(-1/2)) of a symmetric positive definite r×r matrix by the coupled Newton–Schulz
    iteration Y ← Y·T, W ← T·W, T = (3I − W·Y)/2 from Y = Z/c, W = I (c = ‖Z‖_F, so the spectrum of Z/c
    lies in (0, 1] and the iteration converges, quadratically near the end): matrix products only."""
    eye = torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    c = torch.linalg.matrix_norm(z)
    y, w = z / c, eye
    for _ in range(iters):
        t = 1.5 * eye - 0.5 * (w @ y)
        y, w = y @ t, t @ w
    return y * c.sqrt(), w / c.sqrt()


SYNC_FREE_ITERS = 60  # Newton–Schulz iterations: enough for a condition number of BᵀB up to about 1e8


def rebalance_sync_free(b: torch.Tensor, a: torch.Tensor, iters: int = SYNC_FREE_ITERS
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rebalance` by matrix products only (no QR, SVD or host read, so a CUDA graph can hold
    it): with P = BᵀB and Q = AAᵀ, G = P^(-1/2)(P^(1/2) Q P^(1/2))^(1/2) P^(-1/2) solves G P G = Q, and
    B' = B G^(1/2), A' = G^(-1/2) A have B'ᵀB' = A'A'ᵀ and B'A' = BA. The result differs from
    :func:`rebalance`'s by an r×r rotation (B'Ω, ΩᵀA'), which the ODELoRA field is invariant to, so
    the weights' trajectory is the same. Factors that are not finite, or whose P is singular, come
    back unchanged."""
    bd, ad = b.double(), a.double()
    p_half, p_inv_half = _roots(bd.T @ bd, iters)
    mid, _ = _roots(p_half @ (ad @ ad.T) @ p_half, iters)
    g = p_inv_half @ mid @ p_inv_half
    g = 0.5 * (g + g.T)
    g_half, g_inv_half = _roots(g, iters)
    nb, na = bd @ g_half, g_inv_half @ ad
    ok = torch.isfinite(nb).all() & torch.isfinite(na).all()
    return torch.where(ok, nb.to(b.dtype), b), torch.where(ok, na.to(a.dtype), a)


def balanced_factors(kind: str, weight0: torch.Tensor, grad: torch.Tensor | None, rank: int, scale: float,
                     init_scale: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced initial factors (B0, A0) for one layer.

    - ``gradient``: spectral init from the first full gradient, B0A0 ∝ top-r SVD of −∇W L(W0)
      (its singular values floored at 1e-2 of the largest so BᵀB is well conditioned);
    - ``random``: random orthonormal bases with equal singular values;
    - ``pissa``: the top-r SVD of W0 itself.
    ``gradient`` and ``random`` are scaled so ‖s·B0·A0‖_F = init_scale·‖W0‖_F.
    The caller subtracts s·B0·A0 from W0, so the network's function is unchanged."""
    w = weight0.double()
    m, n = w.shape
    if kind == "gradient":
        if grad is None:
            raise ValueError("init='gradient' needs the base gradient of the layer")
        u, sig, vh = torch.linalg.svd(-grad.double(), full_matrices=False)
        u, sig, vh = u[:, :rank], sig[:rank], vh[:rank]
        sig = sig.clamp_min(1e-2 * sig[0].clamp_min(1e-300))
    elif kind == "random":
        u, _ = torch.linalg.qr(torch.randn(m, rank, generator=generator, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(n, rank, generator=generator, dtype=torch.float64))
        sig, vh = torch.ones(rank, dtype=torch.float64), v.T
    elif kind == "pissa":
        u, sig, vh = torch.linalg.svd(w, full_matrices=False)
        u, vh = u[:, :rank], vh[:rank]
        sig = sig[:rank] / scale
        root = sig.sqrt()
        return u * root, root[:, None] * vh
    else:
        raise ValueError(f"unknown init {kind!r}; choose one of {', '.join(INITS)}")
    target = init_scale * torch.linalg.norm(w).clamp_min(1e-12)
    sig = sig * (target / (scale * torch.linalg.norm(sig)))
    root = sig.sqrt()
    return (u * root).to(weight0.device), (root[:, None] * vh).to(weight0.device)


class ODELoRADynamics(Dynamics):
    """Integrates the ODELoRA field with a Butcher tableau; all stages of a
    step use the same collocation batch (the closure's), which is called once
    per field evaluation.

    Fixed-step schemes take one step of size ``lr`` (times the schedule) per
    ``step``: ``stages`` evaluations. Embedded pairs (``tableau.adaptive``) take
    one *accepted* step per ``step``, starting from the controller's proposal
    (``lr`` at first, at most ``h_max``): ``1 + (stages − 1)·attempts``
    evaluations, the first stage at the start being shared by the retries.
    ``rtol``, ``atol``, ``h_max`` and ``max_rejections`` only matter for them;
    the schedule must then be ``constant`` (the controller sets the step).
    Counters: ``accepted``, ``rejected``, ``forced`` (steps accepted because
    ``max_rejections`` was reached) and ``field_evaluations``; ``lr`` is the
    last accepted step (``lr`` itself before the first), ``h_next`` the next
    step to try."""

    def __init__(self, layers: Sequence[LoRALinear], lr: float, scheme: str = "euler", damping: float = 1e-8,
                 rebalance: bool = True, schedule: str = "constant", final_ratio: float = 0.1,
                 precondition: str = "none", beta2: float = 0.999, eps: float = 1e-8, metric_floor: float = 0.1,
                 rtol: float = 1e-3,
                 atol: float = 1e-6, h_max: float | None = None, max_rejections: int = 10) -> None:
        if not layers:
            raise ValueError("odelora: no adapted layers")
        if not lr > 0:
            raise ValueError(f"odelora: lr (the time step h) must be > 0, got {lr!r}")
        if damping < 0:
            raise ValueError(f"odelora: damping must be >= 0, got {damping!r}")
        super().__init__(lr, schedule, final_ratio)
        self.layers = list(layers)
        self.tableau = get_tableau(scheme)
        self.damping, self.rebalance = float(damping), bool(rebalance)
        self.sync_free = False  # True: the matrix-product rebalance on any device (always on CUDA)
        self.evaluations_per_step = self.tableau.stages
        if precondition not in PRECONDITIONERS:
            raise ValueError(f"odelora: precondition={precondition!r}; choose one of {', '.join(PRECONDITIONERS)}")
        self.precondition, self.beta2, self.eps = precondition, float(beta2), float(eps)
        if not metric_floor >= 0:
            raise ValueError(f"odelora: metric_floor must be >= 0, got {metric_floor!r}")
        self.metric_floor = float(metric_floor)
        self.second_moments: list[torch.Tensor | None] = [None] * len(self.layers)
        self.n_updates = 0
        self._count: torch.Tensor | None = None
        self.metric: list[torch.Tensor] = []
        for lay in self.layers:
            lay.capture_weight_grad = precondition != "none"
        self.accepted = self.rejected = self.forced = self.field_evaluations = 0
        self.controller: StepController | None = None
        if self.tableau.adaptive:
            if schedule != "constant":
                raise ValueError(f"odelora: scheme {scheme} adapts the step itself; use schedule=constant, "
                                 f"not {schedule!r}")
            h_max = 10.0 * self.base_lr if h_max is None else float(h_max)
            if not h_max >= self.base_lr:
                raise ValueError(f"odelora: h_max={h_max!r} must be >= lr={self.base_lr!r} (h_max_ratio >= 1)")
            self.controller = StepController(rtol=float(rtol), atol=float(atol), h_max=h_max,
                                             max_rejections=int(max_rejections))
        self.h_accepted = self.h_next = self.base_lr

    @property
    def lr(self) -> float:
        """The step size: for an embedded pair, the last accepted step."""
        return self.h_accepted if self.controller is not None else super().lr

    def _state(self) -> list[torch.Tensor]:
        return [t.detach().clone() for lay in self.layers for t in lay.factors()]

    def _load(self, y: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for i, lay in enumerate(self.layers):
                b, a = lay.factors()
                b.copy_(y[2 * i])
                a.copy_(y[2 * i + 1])

    def _field_here(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i, lay in enumerate(self.layers):
            b, a = lay.factors()
            if self.precondition == "none":
                g_b, g_a = b.grad, a.grad
            else:  # the same flow in the diagonal metric of this step: G -> G / (sqrt(v) + eps + floor)
                g = lay.weight_grad / self.metric[i]
                g_b, g_a = lay.scale * g @ a.detach().T, lay.scale * b.detach().T @ g
            out.extend(odelora_field(b.detach(), a.detach(), g_b, g_a, lay.scale, self.damping))
        return out

    def _update_metric(self) -> None:
        """RMSprop's second moments of the full-weight gradients; the metric is
        held fixed for all stages of a step, so each step integrates a
        (preconditioned) gradient flow."""
        # updated in place, the step count on the device: a captured graph replays this correctly
        self.n_updates += 1
        self.metric = []
        for i, lay in enumerate(self.layers):
            g2 = lay.weight_grad**2
            if self.second_moments[i] is None:
                self.second_moments[i] = torch.zeros_like(g2)
            if self._count is None:
                self._count = torch.zeros((), dtype=torch.float64, device=g2.device)
            self.second_moments[i].mul_(self.beta2).add_(g2, alpha=1 - self.beta2)
        self._count.add_(1)
        correction = 1 - self.beta2**self._count
        for v in self.second_moments:
            root = (v / correction.to(v.dtype)).sqrt()
            # floor: metric_floor x the layer's RMS of sqrt(v). Without it an entry whose gradient was ~0 at
            # the first step has metric ~eps, and a later Runge-Kutta stage divides its (non-zero) gradient by
            # that: the flow is stiff there and RK4 diverged in its first steps (Allen-Cahn, Burgers)
            self.metric.append(root + (self.eps + self.metric_floor * root.square().mean().sqrt()))

    def step(self, closure: Closure) -> torch.Tensor:
        y0 = self._state()
        loss0 = closure()
        if self.precondition != "none":
            self._update_metric()
        k0 = self._field_here()
        self.field_evaluations += 1

        def field(y: list[torch.Tensor]) -> list[torch.Tensor]:
            self._load(y)
            closure()
            self.field_evaluations += 1
            return self._field_here()

        if self.controller is None:
            y1, _ = rk_step(y0, field, self.lr, self.tableau, k0=k0)
            self.accepted += 1
        else:
            res = adaptive_step(y0, field, self.h_next, self.tableau, self.controller, k0=k0)
            y1, self.h_accepted, self.h_next = res.y, res.h, res.h_next
            self.accepted += 1
            self.rejected += res.rejected
            self.forced += int(res.forced)
        # a step that blew up is left as it is: the loop's divergence check sees the non-finite loss
        # and rolls back (an SVD of non-finite factors would raise instead)
        if self.rebalance:  # without a host read: the rebalanced factors only where all are finite
            finite = torch.stack([torch.isfinite(t).all() for t in y1]).all()
            safe = [torch.where(finite, t, torch.zeros_like(t)) for t in y1]
            # on CUDA by matrix products only (QR and SVD read the host there, so a graph could not hold them)
            how = rebalance_sync_free if y1[0].device.type == "cuda" or self.sync_free else rebalance
            balanced = [t for i in range(0, len(safe), 2) for t in how(safe[i], safe[i + 1])]
            y1 = [torch.where(finite, b, t) for b, t in zip(balanced, y1)]
        self._load(y1)
        return loss0

    def graph_unsafe_reason(self) -> str:
        if self.controller is not None:
            return f"scheme {self.tableau.name} chooses its step size on the host"
        if self.schedule != "constant":
            return f"a {self.schedule} schedule changes the step size, which a graph freezes"
        return ""

    def count_replays(self, n: int) -> None:
        self.accepted += n
        self.field_evaluations += n * self.tableau.stages

    _STATE = ("h_accepted", "h_next", "accepted", "rejected", "forced", "field_evaluations", "n_updates",
              "second_moments", "_count")

    def state_dict(self) -> dict:
        """Counters, step sizes (the controller's next proposal ``h_next``) and the RMSprop moments."""
        return {**super().state_dict(), **{k: getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key in self._STATE:
            if key in state:
                setattr(self, key, state[key])


# -- the implicit scheme --------------------------------------------------------------------------
def weight_metric(layers: Sequence[LoRALinear], gauge: float = 1e-4) -> torch.Tensor:
    """The metric of ODELoRA's flow in factor coordinates: ‖ΔW‖²_F for the tangent vector
    ΔW = s(δB·A + B·δA), as a block-diagonal matrix over the layers' (vec δB, vec δA) (row-major,
    B before A: the order of the trainable parameters). Per layer, with S_A = AAᵀ, S_B = BᵀB:
    the δB block is s²(I_m ⊗ S_A), the δA block s²(S_B ⊗ I_n), and the cross block
    s²·B[i,b]·A[a,j] at ((i,a), (b,j)). It is singular along the gauge directions
    (δB, δA) = (BX, −XA), which leave W unchanged; ``gauge`` × its mean diagonal is added so
    the step is defined there (the rebalance after the step removes any gauge drift)."""
    blocks = []
    for lay in layers:
        b, a = (t.detach() for t in lay.factors())
        m, r = b.shape
        n = a.shape[1]
        s2 = lay.scale ** 2
        bb = s2 * torch.kron(torch.eye(m, dtype=b.dtype, device=b.device), a @ a.T)
        aa = s2 * torch.kron(b.T @ b, torch.eye(n, dtype=a.dtype, device=a.device))
        cross = s2 * torch.einsum("ib,aj->iabj", b, a).reshape(m * r, r * n)
        blocks.append(torch.cat([torch.cat([bb, cross], 1), torch.cat([cross.T, aa], 1)], 0))
    metric = torch.block_diag(*blocks)
    return metric + gauge * metric.diagonal().mean() * torch.eye(metric.shape[0], dtype=metric.dtype,
                                                                   device=metric.device)


def implicit_dynamics(layers: Sequence[LoRALinear], mu: float, adaptive: bool = True, rebalance_factors: bool = True):
    """ODELoRA's implicit scheme: the linearly implicit Euler step of the Gauss–Newton-linearised
    flow dW/dt = −P_T(G) on the rank-r manifold. With ρ the residual vector (loss ‖ρ‖²), J its
    Jacobian in the factors and M = :func:`weight_metric` (the Frobenius norm of the tangent vector
    the factor step induces), the step solves

        min over (δB, δA):  ‖ρ + J·δ‖² + μ ‖s(δB·A + B·δA)‖²_F ,

    i.e. (JᵀJ + μM) δ = −Jᵀρ. Every step of the factors moves W along the tangent space
    T = {δB·A + B·δA}, and the normal equations restricted to T are (P_T H P_T + μ I) ΔW = −P_T g
    with H, g the Gauss–Newton Hessian and gradient in weight space: one implicit Euler step of
    the projected flow with h = 1/μ (up to the factor 2 of ∇‖ρ‖² = 2Jᵀρ), where the explicit
    schemes take dW = −h·P_T(G). The factors then take δ, and the rebalance returns them to
    BᵀB = AAᵀ without changing W. h is adapted by the trust-region rule of
    :class:`~pinn_lora.methods.dynamics.gauss_newton.LevenbergMarquardt` (or fixed, ``adaptive=False``)."""
    from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt

    layers = list(layers)
    params = [t for lay in layers for t in lay.factors()]

    def balance() -> None:
        with torch.no_grad():
            for lay in layers:
                b, a = lay.factors()
                nb, na = rebalance(b, a)
                b.copy_(nb)
                a.copy_(na)

    return LevenbergMarquardt(params, mu=mu, adaptive=adaptive, metric=lambda: weight_metric(layers),
                              after_update=balance if rebalance_factors else None)
