"""Low-rank matrix sensing: a small, exactly solvable testbed for the factor
dynamics of ODELoRA and Riemannian-preconditioned LoRA (ScaledGD).

Problem: recover a rank-r matrix ``X*`` (m×n) from ``N`` linear measurements
``y_i = <A_i, X*>`` with i.i.d. standard Gaussian sensing matrices ``A_i``
(the setting of Tong, Ma & Chi, JMLR 2021, for ScaledGD). The loss is

    L(X) = ½ · mean_i (<A_i, X> − y_i)²,

the *mean*, not the sum: with E[vec(A_i) vec(A_i)ᵀ] = I the expected loss is
½‖X − X*‖²_F, whose Hessian is the identity, so a step size ``h`` has the
same meaning as for gradient descent on ½‖X − X*‖²_F (stable for h < 2)
whatever m, n and N are; with the sum it would be N times larger.

The adapter is a :class:`~pinn_lora.model.adapters.lora.LoRALinear` with frozen
weight W0 = 0 and scale s = 1, so X = B·A exactly, started from small balanced
random factors (BᵀB = AAᵀ = ``init_scale``·I). The *package's own* dynamics
classes move it: :class:`~pinn_lora.methods.dynamics.odelora.ODELoRADynamics` (any
scheme, including the adaptive ``bs23`` and ``dopri5``, and its implicit scheme, a Levenberg–Marquardt step
at a fixed h) and
:class:`~pinn_lora.methods.dynamics.riemannian.RiemannianDynamics` (SGD or Adam).
With s = 1 and SGD, one Riemannian step moves X by −h·(P_B G + G P_A) to first
order, one ODELoRA Euler step by −h·P_T(G) = −h·(P_B G + G P_A − P_B G P_A):
on the "core" block P_B G P_A the ScaledGD step is twice as long. Linearised
at X* (where G = 0, so only the first-order terms matter), with H the
empirical measurement operator (1/N)·Σ vec(A_i) vec(A_i)ᵀ restricted to the
tangent space T of the rank-r manifold at X*, the two maps are

    ScaledGD:  e ← (I − h·M·H) e,   M = P_U ⊗ I + I ⊗ P_V (eigenvalue 2 on the core, 1 elsewhere),
    ODELoRA:   e ← R(−h·H) e,       R the scheme's stability polynomial (1 + z for Euler),

(:func:`linear_rates`). H ≈ I only as N → ∞; for finite N its largest
eigenvalues exceed 1 by O(√(dim/N)), and ScaledGD's doubled core step makes it
unstable at a smaller h than projected gradient descent. On the 20×20, rank-3
problem with N = 2·m·n = 800 (seed 0) at h = 0.9 the spectral radius is
≈ 1.35 for ScaledGD and ≈ 0.66 for ODELoRA-Euler: Riemannian SGD diverges,
even from next to X*, and ODELoRA converges linearly (the claim of
``shared/methods.md``). With many more measurements (N ≳ 10·m·n) H → I and
both are (marginally) stable at h = 0.9; ScaledGD's step bound is then the
h < 2/3 of Tong, Ma & Chi's analysis from a good start, not a linear
instability.

``python -m pinn_lora.methods.sensing`` runs a comparison and prints a table.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pinn_lora.model.adapters.lora import LoRALinear
from pinn_lora.methods.dynamics.base import Dynamics, GradientDynamics, Objective
from pinn_lora.methods.dynamics.odelora import ODELoRADynamics, implicit_dynamics
from pinn_lora.methods.dynamics.riemannian import RiemannianDynamics


@dataclass
class MatrixSensing:
    """``y_i = <A_i, X*>``; ``loss(X) = ½·mean_i (<A_i, X> − y_i)²``."""

    sensors: torch.Tensor  # (N, m, n): the A_i
    target: torch.Tensor  # (m, n): X*
    observations: torch.Tensor  # (N,): the y_i

    @classmethod
    def random(cls, m: int, n: int, rank: int, measurements: int | None = None, condition: float = 1.0,
               seed: int = 0, dtype: torch.dtype = torch.float64) -> MatrixSensing:
        """Gaussian A_i and X* = U·diag(σ)·Vᵀ with random orthonormal U, V and σ geometric
        from 1 down to 1/``condition``. ``measurements`` defaults to 2·m·n."""
        if not 1 <= rank <= min(m, n):
            raise ValueError(f"rank={rank} must be in 1..{min(m, n)}")
        g = torch.Generator().manual_seed(seed)
        u, _ = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
        sig = torch.logspace(0.0, -math.log10(condition), rank, dtype=torch.float64)
        target = (u * sig) @ v.T
        n_meas = 2 * m * n if measurements is None else int(measurements)
        sensors = torch.randn(n_meas, m, n, generator=g, dtype=torch.float64)
        obs = torch.einsum("kij,ij->k", sensors, target)
        return cls(sensors.to(dtype), target.to(dtype), obs.to(dtype))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.target.shape)  # type: ignore[return-value]

    @property
    def rank(self) -> int:
        return int(torch.linalg.matrix_rank(self.target))

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kij,ij->k", self.sensors, x) - self.observations

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.residuals(x) ** 2).mean()


def sensing_layer(m: int, n: int, rank: int, init_scale: float = 1e-2, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> LoRALinear:
    """A LoRA layer whose weight is X = B·A (W0 = 0, s = 1), from balanced random factors
    B0 = U·√c, A0 = √c·Vᵀ (U, V random orthonormal, c = ``init_scale``), so BᵀB = AAᵀ = c·I."""
    g = torch.Generator().manual_seed(seed + 1)
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
    root = math.sqrt(init_scale)
    base = nn.Linear(n, m, bias=False, dtype=dtype)
    lay = LoRALinear(base, rank, alpha=float(rank), factors=(u * root, root * v.T))  # alpha = rank: s = 1
    with torch.no_grad():
        lay.weight0.zero_()  # LoRALinear subtracted s·B0·A0 from the base weight; here W0 = 0 and X = B·A
    return lay


class SensingObjective(Objective):
    """The sensing loss of ``layer``'s weight as a step's objective: calling it zeroes the factor
    gradients, computes L(W0 + s·B·A), runs backward and returns the loss; ``residual()`` is
    ρ = (<A_i, W> − y_i) / √(2N), so ‖ρ‖² = L, and ``residual_jacobian()`` adds J = ∂ρ/∂(B, A) (the
    factors in the layer's order, B before A) by the chain rule (ρ is affine in W). Every evaluation,
    of the loss or of ρ, is counted in ``calls``."""

    def __init__(self, problem: MatrixSensing, layer: LoRALinear, calls: list[int] | None = None) -> None:
        self.problem, self.layer, self.calls = problem, layer, calls
        self.norm = math.sqrt(2 * problem.observations.numel())

    def _count(self) -> None:
        if self.calls is not None:
            self.calls.append(1)

    def __call__(self) -> torch.Tensor:
        self._count()
        for p in self.layer.parameters():
            p.grad = None
        loss = self.problem.loss(self.layer.weight())
        loss.backward()
        return loss.detach()

    def residual(self) -> torch.Tensor:
        self._count()
        with torch.no_grad():
            return self.problem.residuals(self.layer.weight()) / self.norm

    def residual_jacobian(self) -> tuple[torch.Tensor, torch.Tensor]:
        lay = self.layer
        b, a = (t.detach() for t in lay.factors())
        jw = self.problem.sensors / self.norm  # ∂ρ_i/∂W = A_i / √(2N)
        jb = lay.scale * torch.einsum("ipj,qj->ipq", jw, a)  # ∂ρ/∂B[p,q] = s Σ_j ∂ρ/∂W[p,j] A[q,j]
        ja = lay.scale * torch.einsum("ipj,pq->iqj", jw, b)  # ∂ρ/∂A[q,j] = s Σ_p ∂ρ/∂W[p,j] B[p,q]
        r = self.residual()
        return r, torch.cat([jb.reshape(jb.shape[0], -1), ja.reshape(ja.shape[0], -1)], 1)


def sensing_closure(problem: MatrixSensing, layer: LoRALinear, calls: list[int] | None = None) -> SensingObjective:
    """Zero the factor gradients, compute L(W0 + s·B·A), backward, return the loss (a
    :class:`SensingObjective`, which second-order steps also take)."""
    return SensingObjective(problem, layer, calls)


@dataclass
class SensingRun:
    label: str
    losses: list[float]  # the loss before each step and, last, after the final one
    evaluations: list[int]  # closure calls spent to reach the state of each entry of ``losses``
    diverged: bool
    steps: list[float] = field(default_factory=list)  # the step size of each step (accepted h for bs23/dopri5)
    dynamics: Dynamics | None = None
    layer: LoRALinear | None = None

    def slope(self, **kwargs: Any) -> tuple[float, float]:
        """(slope, R²) of log(loss) per iteration; see :func:`log_loss_slope`."""
        slope, r2, _ = log_loss_slope(self.losses, **kwargs)
        return slope, r2


def make_dynamics(method: str, layer: LoRALinear, h: float, *, scheme: str = "euler", optimizer: str = "sgd",
                  **options: Any) -> Dynamics:
    """``odelora`` (``scheme``; options of :class:`ODELoRADynamics`, e.g. ``rtol``, ``rebalance``; ``implicit``:
    its implicit scheme at the fixed step h, :func:`~pinn_lora.methods.dynamics.odelora.implicit_dynamics`) or
    ``riemannian`` (``optimizer`` sgd | adam; option ``damping``) or plain ``lora`` (``optimizer`` sgd |
    adam on the factor gradients), with step / learning rate ``h``. Each is a
    :class:`~pinn_lora.methods.dynamics.base.Step` over the :class:`SensingObjective`."""
    if method == "odelora" and scheme == "implicit":
        return implicit_dynamics([layer], mu=1.0 / h, adaptive=False, rebalance_factors=options.get("rebalance", True))
    if method == "odelora":
        return ODELoRADynamics([layer], lr=h, scheme=scheme, **{"damping": 0.0, **options})
    if method == "riemannian":
        return RiemannianDynamics([layer], lr=h, optimizer=optimizer, **{"damping": 1e-12, **options})
    if method == "lora":  # plain LoRA: the optimiser on the factors' own gradients
        return GradientDynamics([layer.lora_B, layer.lora_A], lr=h, optimizer=optimizer, schedule="constant",
                                **options)
    raise ValueError(f"unknown method {method!r}; choose odelora, riemannian or lora")


def train(problem: MatrixSensing, method: str, h: float, steps: int, *, rank: int | None = None,
          init_scale: float = 1e-2, seed: int = 0, scheme: str = "euler", optimizer: str = "sgd",
          divergence_factor: float = 1e6, floor: float = 0.0, **options: Any) -> SensingRun:
    """Train X = B·A on ``problem`` for ``steps`` steps of ``method`` (see :func:`make_dynamics`).

    Stops early when the loss is non-finite or exceeds ``divergence_factor`` × the initial
    loss (``diverged``), or falls below ``floor``."""
    m, n = problem.shape
    layer = sensing_layer(m, n, rank or problem.rank, init_scale, seed, problem.target.dtype)
    dyn = make_dynamics(method, layer, h, scheme=scheme, optimizer=optimizer, **options)
    calls: list[int] = []
    objective = SensingObjective(problem, layer, calls)
    label = f"odelora-{scheme}" if method == "odelora" else f"{method}-{optimizer}"
    losses, evals, hs = [], [], []
    diverged = False
    for _ in range(steps):
        before = len(calls)
        loss = float(dyn.step(objective))
        losses.append(loss)
        evals.append(before)
        if not math.isfinite(loss) or loss > divergence_factor * losses[0]:
            diverged = True
            break
        hs.append(dyn.lr)
        if loss < floor:
            break
    else:
        with torch.no_grad():
            final = float(problem.loss(layer.weight()))
        losses.append(final)
        evals.append(len(calls))
        diverged = not math.isfinite(final) or final > divergence_factor * losses[0]
    return SensingRun(label, losses, evals, diverged, hs, dyn, layer)


def log_loss_slope(losses: Sequence[float], start: int | None = None, floor: float = 1e-20,
                   drop: float = 1e-2) -> tuple[float, float, tuple[int, int]]:
    """Least-squares fit of log(loss_k) = a + slope·k over the linear phase.

    The window starts at ``start`` or, by default, at the first iteration whose loss is
    below ``drop`` × the initial loss (past the escape from the small initialisation) and
    ends before the loss first falls below ``floor`` (rounding) or stops being finite.
    Returns (slope, R², (first, last + 1)); slope < 0 and R² ≈ 1 mean linear convergence."""
    vals = [float(v) for v in losses]
    if start is None:
        start = next((k for k, v in enumerate(vals) if v < drop * vals[0]), len(vals))
    stop = next((k for k in range(start, len(vals)) if not (math.isfinite(vals[k]) and vals[k] > floor)),
                len(vals))
    if stop - start < 3:
        return math.nan, math.nan, (start, stop)
    k = torch.arange(start, stop, dtype=torch.float64)
    y = torch.tensor(vals[start:stop], dtype=torch.float64).log()
    kc, yc = k - k.mean(), y - y.mean()
    slope = float((kc * yc).sum() / (kc**2).sum())
    resid = yc - slope * kc
    r2 = 1.0 - float((resid**2).sum() / (yc**2).sum().clamp_min(1e-300))
    return slope, r2, (start, stop)


def tangent_basis(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Orthonormal basis (mn × r(m+n−r), row-major vec) of the tangent space of the rank-r
    matrices at ``x``: vec(U e_jᵀ) for the r·n directions U·anything and vec(u⊥ vᵀ) for the rest."""
    n = x.shape[1]
    u, _, vh = torch.linalg.svd(x.double())
    q1 = torch.kron(u[:, :rank].contiguous(), torch.eye(n, dtype=torch.float64))
    q2 = torch.kron(u[:, rank:].contiguous(), vh[:rank].T.contiguous())
    return torch.cat([q1, q2], dim=1)


def stability_function(z: torch.Tensor, scheme: str) -> torch.Tensor:
    """R(z) = 1 + z·bᵀ(I − zA)⁻¹𝟙 of an explicit Runge–Kutta tableau (the propagated weights b):
    one step of y' = λy multiplies y by R(hλ)."""
    from pinn_lora.methods.dynamics.runge_kutta import get_tableau

    tab = get_tableau(scheme)
    s = tab.stages
    a = torch.zeros(s, s, dtype=torch.complex128)
    for i, row in enumerate(tab.a):
        for j, aij in enumerate(row):
            a[i, j] = aij
    b = torch.tensor(tab.b, dtype=torch.complex128)
    z = z.to(torch.complex128).reshape(-1)
    eye, ones = torch.eye(s, dtype=torch.complex128), torch.ones(s, dtype=torch.complex128)
    return torch.stack([1 + zk * (b @ torch.linalg.solve(eye - zk * a, ones)) for zk in z])


def linear_rates(problem: MatrixSensing, h: float, scheme: str = "euler") -> dict[str, float]:
    """Spectral radii, on the tangent space at X*, of the linearised steps of ScaledGD (plain SGD,
    s = 1) and of ODELoRA with ``scheme`` at step ``h``: < 1 contracts, > 1 diverges from any
    start near X* (see the module docstring)."""
    x = problem.target.double()
    m, n = x.shape
    r = problem.rank
    q = tangent_basis(x, r)
    qm = q.T.reshape(-1, m, n)
    sq = torch.einsum("kij,dij->kd", problem.sensors.double(), qm)
    h_t = sq.T @ sq / problem.sensors.shape[0]  # QᵀHQ
    u, _, vh = torch.linalg.svd(x)
    pu, pv = u[:, :r] @ u[:, :r].T, vh[:r].T @ vh[:r]
    m_t = q.T @ (pu @ qm + qm @ pv).reshape(-1, m * n).T  # QᵀMQ (M maps the normal space to 0)
    eye = torch.eye(q.shape[1], dtype=torch.float64)
    rho_scaled = torch.linalg.eigvals(eye - h * m_t @ h_t).abs().max().item()
    lam = torch.linalg.eigvalsh(h_t)
    rho_ode = stability_function(-h * lam, scheme).abs().max().item()
    return {"riemannian-sgd": rho_scaled, f"odelora-{scheme}": rho_ode}


def compare(m: int = 20, n: int = 20, rank: int = 3, h: float = 0.9, steps: int = 200, scheme: str = "rk4",
            measurements: int | None = None, adam_lr: float = 1e-2, seed: int = 0, init_scale: float = 1e-2
            ) -> list[SensingRun]:
    """ODELoRA (``scheme`` and Euler), Riemannian and plain LoRA (SGD at ``h``, Adam at ``adam_lr``) on one
    problem."""
    prob = MatrixSensing.random(m, n, rank, measurements, seed=seed)
    common = {"steps": steps, "init_scale": init_scale, "seed": seed, "floor": 1e-28}
    runs = [train(prob, "odelora", h, scheme=scheme, **common)]
    if scheme != "euler":
        runs.append(train(prob, "odelora", h, scheme="euler", **common))
    runs.append(train(prob, "riemannian", h, optimizer="sgd", **common))
    runs.append(train(prob, "riemannian", adam_lr, optimizer="adam", **common))
    runs.append(train(prob, "lora", h, optimizer="sgd", **common))
    runs.append(train(prob, "lora", adam_lr, optimizer="adam", **common))
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pinn_lora.methods.sensing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=20)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--rank", type=int, default=3)
    ap.add_argument("--measurements", type=int, default=None, help="number of A_i (default 2·m·n)")
    ap.add_argument("--h", type=float, default=0.9, help="ODELoRA time step = Riemannian and LoRA SGD learning rate")
    ap.add_argument("--adam-lr", type=float, default=1e-2, help="learning rate of Riemannian and LoRA Adam")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--scheme", default="rk4", help="ODELoRA scheme: euler | heun | midpoint | rk4 | bs23 | dopri5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None, metavar="PATH", help="save a log-loss plot (PNG) here")
    args = ap.parse_args(argv)
    runs = compare(args.m, args.n, args.rank, args.h, args.steps, args.scheme, args.measurements, args.adam_lr,
                   args.seed)
    print(f"matrix sensing {args.m}x{args.n}, rank {args.rank}, h = {args.h:g}")
    if args.m * args.n <= 10_000:
        prob = MatrixSensing.random(args.m, args.n, args.rank, args.measurements, seed=args.seed)
        rates = linear_rates(prob, args.h, "euler" if args.scheme in ("bs23", "dopri5") else args.scheme)
        print("linearised at X* (spectral radius per step; > 1 diverges): "
              + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    print(f"{'method':<18} {'steps':>6} {'evals':>6} {'last h':>8} {'final loss':>11} {'slope log-loss':>15} "
          f"{'R^2':>6}  diverged")
    for r in runs:
        slope, r2 = r.slope()
        last_h = f"{r.steps[-1]:>8.3g}" if r.steps else f"{'-':>8}"
        print(f"{r.label:<18} {len(r.losses) - 1:>6} {r.evaluations[-1]:>6} {last_h} {r.losses[-1]:>11.3e} "
              f"{slope:>15.4f} {r2:>6.3f}  {'yes' if r.diverged else 'no'}")
    print("slope: least-squares slope of log(loss) per step between loss < 1e-2 x initial and 1e-20")
    if args.plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))  # no pyplot: the caller's backend stays as it was
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for r in runs:
            ax.semilogy(range(len(r.losses)), r.losses, label=r.label + (" (diverged)" if r.diverged else ""))
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(f"matrix sensing {args.m}x{args.n}, rank {args.rank}, h = {args.h:g}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
