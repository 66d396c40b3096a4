"""Levenberg–Marquardt: the second-order step for any parameterisation with few trainable
parameters (an adapter's 1–2 k).

With the loss written as ‖ρ(θ)‖² (:mod:`pinn_lora.model.jacobian`) and J = ∂ρ/∂θ, one step solves

    (JᵀJ + μ D) δ = −Jᵀρ

and moves θ ← θ + δ. In the ODE view this is the *linearly implicit Euler step* of the
Gauss–Newton-linearised gradient flow θ' = −Jᵀρ with step h = 1/μ: implicit in the stiff
directions an explicit scheme cannot follow (Müller & Zeinhofer, ICML 2023, train PINNs to
1e-6–1e-7 relative L2 with this kind of step). D is the metric of the flow: ``marquardt``
(diag JᵀJ, floored; invariant to the scale of each parameter), ``identity``, or a matrix a method
supplies (ODELoRA's implicit scheme: the weight-space metric of its factors,
:mod:`pinn_lora.methods.dynamics.odelora`).

The step size is a trust region: a proposal is accepted only when it lowers the loss on the
step's points, and μ follows Nielsen's rule (μ ·= max(1/3, 1 − (2ϱ − 1)³) after an accepted
step with gain ratio ϱ = actual / predicted decrease; μ ·= ν, ν ·= 2 after a rejected one).
With ``adaptive=False`` μ stays fixed (a fixed h) and every proposal is taken.

Many parameters (``full``, ``scratch``: 12 737 on the shipped bases) and fewer residual rows N
than parameters P: the step is solved in its N×N *kernel* form. With a diagonal D and
J' = J D^(-1/2), the push-through identity (J'ᵀJ' + μI)⁻¹J'ᵀ = J'ᵀ(J'J'ᵀ + μI)⁻¹ gives

    δ = −D^(-1/2) J'ᵀ (J'J'ᵀ + μI)⁻¹ ρ,

the same step without forming the P×P matrix (the Gram-matrix form of the energy natural
gradient, Müller & Zeinhofer 2023). The dense factorisation then costs min(N, P)³/3.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from pinn_lora.core.recipe import Adaptation as RECIPE  # the starting damping: the recipe's
from pinn_lora.methods.dynamics.base import Dynamics, Objective

DAMPINGS = ("marquardt", "identity")
MAX_DENSE = 12000  # min(N, P) above this: one dense solve per step costs more than it buys (and its memory)


class LevenbergMarquardt(Dynamics):
    """Levenberg–Marquardt on ``params`` (see the module docstring). ``mu`` is the starting
    damping (h = 1/μ), ``max_tries`` the proposals per step before the step is given up (the
    parameters then stay where they were and μ keeps its increase).

    Through the step protocol: ``step(objective)`` takes the residual and its Jacobian from the
    :class:`~pinn_lora.methods.dynamics.base.Objective` and tries proposals by its ``trial_loss``
    (:meth:`gn_step` is the same step from given ρ, J and trial function)."""

    residual_step = True

    def __init__(self, params: Sequence[torch.Tensor], mu: float = RECIPE.lm_mu, damping: str = "marquardt",
                 adaptive: bool = True, max_tries: int = 10, metric: Callable[[], torch.Tensor] | None = None,
                 after_update: Callable[[], None] | None = None) -> None:
        if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu > 0):
            raise ValueError(f"lm: mu={mu!r} must be a finite number > 0")
        if damping not in DAMPINGS:
            raise ValueError(f"lm: damping={damping!r}; choose one of {', '.join(DAMPINGS)}")
        super().__init__(1.0 / mu)
        self.params = list(params)
        self.mu, self.nu = float(mu), 2.0
        self.damping, self.adaptive, self.max_tries = damping, bool(adaptive), int(max_tries)
        self.metric, self.after_update = metric, after_update
        self.accepted = self.rejected = 0
        self.last: dict[str, Any] = {}
        self.grad_norm = float("nan")

    @property
    def lr(self) -> float:
        """The implicit Euler step h = 1/μ of the last proposal."""
        return 1.0 / self.mu

    def graph_unsafe_reason(self) -> str:
        return "the Levenberg–Marquardt step decides on the host whether to accept a proposal"

    def eager_only(self) -> str:
        return "the second-order step (solver=lm) accepts or rejects each proposal on the host"

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _set(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            i = 0
            for p in self.params:
                p.copy_(flat[i:i + p.numel()].view_as(p))
                i += p.numel()

    def _damping_diagonal(self, diag: torch.Tensor) -> torch.Tensor:
        """D's diagonal from diag(JᵀJ): floored (marquardt) or its mean (identity)."""
        if self.damping == "identity":
            return torch.full_like(diag, float(diag.mean()))
        return diag.clamp_min(1e-3 * diag.mean())

    def _solver(self, r: torch.Tensor, jac: torch.Tensor) -> tuple[torch.Tensor, Callable[[float], Any]]:
        """Jᵀρ and a function μ -> (the step δ, or None where the factorisation failed), in the P×P
        form or, with more parameters than rows and a diagonal D, the N×N kernel form."""
        rows, n = jac.shape
        if min(rows, n) > MAX_DENSE:
            raise ValueError(f"solver=lm: {rows} residual rows and {n} trainable parameters; the dense "
                             f"Gauss–Newton step needs one of them <= {MAX_DENSE} (fewer points, or solver=method)")
        grad = jac.T @ r
        if self.metric is None and n > rows:  # the kernel form
            scale = self._damping_diagonal((jac * jac).sum(0)).rsqrt()
            scaled = jac * scale
            kernel = scaled @ scaled.T
            eye = torch.eye(rows, dtype=jac.dtype, device=jac.device)

            def kernel_step(mu: float) -> torch.Tensor | None:
                chol, bad = torch.linalg.cholesky_ex(kernel + mu * eye)
                if bad.item():
                    return None
                return -scale * (scaled.T @ torch.cholesky_solve(r.unsqueeze(1), chol).squeeze(1))

            return grad, kernel_step
        gram = jac.T @ jac
        damp = self.metric() if self.metric is not None else torch.diag(self._damping_diagonal(gram.diagonal()))

        def step(mu: float) -> torch.Tensor | None:
            chol, bad = torch.linalg.cholesky_ex(gram + mu * damp)
            if bad.item():
                return None
            return -torch.cholesky_solve(grad.unsqueeze(1), chol).squeeze(1)

        return grad, step

    def gn_step(self, r: torch.Tensor, jac: torch.Tensor, trial_loss: Callable[[], float]) -> float:
        """One step from the residual ``r`` and its Jacobian ``jac`` at the current parameters;
        ``trial_loss()`` evaluates ‖ρ‖² at the parameters as they are set. Returns the loss at the
        start (the parameters end at the accepted proposal, or where they were)."""
        loss = float(r @ r)
        start = self._flat()
        grad, solve = self._solver(r, jac)
        tries = 0
        info: dict[str, Any] = {"lm_tries": 0, "gain_ratio": float("nan"), "lm_accepted": False}
        while tries < self.max_tries:
            tries += 1
            delta = solve(self.mu)
            if delta is None:
                self.mu, self.nu = self.mu * self.nu, self.nu * 2
                continue
            jd = jac @ delta
            predicted = -float(2 * (r @ jd) + jd @ jd)
            self._set(start + delta)
            if self.after_update is not None:
                self.after_update()
            new = trial_loss()
            rho = (loss - new) / predicted if predicted > 0 else -math.inf
            info = {"lm_tries": tries, "gain_ratio": rho, "lm_accepted": True, "lm_h": 1.0 / self.mu}
            if not self.adaptive:
                break
            if math.isfinite(new) and new < loss:
                gain = min(rho, 1.0) if predicted > 0 else 1.0  # a decrease the linear model did not predict
                self.mu *= max(1 / 3, 1 - (2 * gain - 1) ** 3)
                self.nu = 2.0
                break
            self._set(start)
            self.mu, self.nu = self.mu * self.nu, self.nu * 2
            info["lm_accepted"] = False
        self.mu = min(max(self.mu, 1e-12), 1e12)
        self.accepted += info["lm_accepted"]
        self.rejected += not info["lm_accepted"]
        self.last = info
        self.grad_norm = float(2 * grad.norm())  # ‖∇‖ρ‖²‖ at the start, for the step's record
        return loss

    def step(self, objective: Objective | Callable[[], torch.Tensor]) -> float:
        """One step on ``objective``'s residual vector and Jacobian at the current parameters."""
        if not isinstance(objective, Objective):
            raise TypeError("LevenbergMarquardt steps need the residual Jacobian: give them an Objective "
                            "(run it with solver=lm in the Trainer)")
        r, jac = objective.residual_jacobian()
        return self.gn_step(r, jac, objective.trial_loss)

    def report(self, objective: Any) -> dict[str, Any]:
        """The step size h of the last proposal, the evaluations (the Jacobian's and one per proposal),
        the gradient norm at the start and the proposals' outcome (``lm_tries``, ``gain_ratio``,
        ``lm_accepted``)."""
        info = self.last
        return {"grad_norm": self.grad_norm, "lr": info.get("lm_h", self.lr), "evaluations": 1 + info["lm_tries"],
                **{k: v for k, v in info.items() if k != "lm_h"}}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mu": self.mu, "nu": self.nu, "accepted": self.accepted,
                "rejected": self.rejected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mu, self.nu = float(state["mu"]), float(state["nu"])
        self.accepted, self.rejected = int(state["accepted"]), int(state["rejected"])
