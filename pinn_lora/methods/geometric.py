"""Methods whose dynamics or parameterisation follow the factors' geometry: ODELoRA (balanced factors on the
projected gradient flow of full fine-tuning), Riemannian-preconditioned LoRA (ScaledGD), and OD-LoRA (orthonormal
bases after a LoRA warm-up)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pinn_lora.core.recipe import Adaptation as RECIPE
from pinn_lora.model.adapters import LoRALinear, adapter_layers, attach_adapters
from pinn_lora.model.adapters.base import resolve_targets
from pinn_lora.model.adapters.lora import layer_rank
from pinn_lora.model.adapters.odlora import ODLoRALinear
from pinn_lora.methods.base import AttachContext, Method, MethodOptionError, Option
from pinn_lora.methods.dynamics import Dynamics
from pinn_lora.methods.dynamics.odelora import (
    IMPLICIT,
    INITS,
    PRECONDITIONERS,
    ODELoRADynamics,
    balanced_factors,
    implicit_dynamics,
)
from pinn_lora.methods.dynamics.riemannian import RiemannianDynamics
from pinn_lora.methods.dynamics.runge_kutta import TABLEAUS
from pinn_lora.methods.lora_family import LoRA


class ODELoRA(LoRA):
    name = "odelora"
    summary = ("ODELoRA (Gao & Tan 2026): balanced factors follow the projected full-FT gradient flow, "
               "integrated by a Runge–Kutta tableau (lr = time step h; bs23/dopri5 adapt h to rtol/atol)")
    declared = {
        **LoRA.declared,
        "lr": Method.declared["lr"].with_default(0.05, help="the time step h of the flow"),
        "schedule": Method.declared["schedule"].with_default("constant"),
        "scheme": Option("auto", str, "euler, heun, midpoint, rk4: fixed step h; bs23, dopri5: h adapted to "
                                      "rtol/atol; implicit: the implicit step (as solver=lm); auto: implicit under "
                                      "solver=lm, else euler", choices=(*TABLEAUS, *IMPLICIT)),
        "damping": Option(1e-8, float, "the factors' Gram matrices BᵀB, AAᵀ take + damping·tr/r before they are "
                                       "inverted", minimum=0),
        "rebalance": Option(True, bool, "rebalance the factors (BᵀB = AAᵀ, W unchanged) after each step"),
        "init": Option("gradient", str, "the balanced start: from the full-weight gradient's top-r SVD, random, or "
                                        "W0's (pissa)", choices=INITS),
        "init_scale": Option(0.1, float, "gradient, random: ‖s·B0·A0‖_F = init_scale·‖W0‖_F", above=0),
        "precondition": Option("none", str, "none: the paper's flow; rmsprop: the flow in RMSprop's diagonal "
                                            "metric", choices=PRECONDITIONERS, from_problem=True),
        "metric_floor": Option(0.1, float, "rmsprop: the metric's floor, × the layer's RMS of √v", minimum=0),
        "rtol": Option(1e-3, float, "bs23, dopri5: relative error tolerance of a step", above=0),
        "atol": Option(1e-6, float, "bs23, dopri5: absolute error tolerance of a step", above=0),
        "h_max_ratio": Option(10.0, float, "bs23, dopri5: the largest step, × lr", minimum=1),
    }

    def solver_for(self, requested: str, explicit: bool) -> str:
        """``scheme=implicit`` runs as solver=lm; an explicit tableau as solver=method (asking for
        both is refused); ``auto`` follows the solver."""
        if self.scheme == "implicit":
            return "lm"
        if self.scheme != "auto" and requested == "lm":
            if explicit:
                raise MethodOptionError(f"method odelora: scheme={self.scheme} is an explicit scheme, run by "
                                        "solver=method; solver=lm takes ODELoRA's implicit step (scheme=implicit "
                                        "or auto)")
            return "method"
        return super().solver_for(requested, explicit)

    def step_for(self, model: nn.Module, solver: str = "method", mu: float = RECIPE.lm_mu,
                 adaptive: bool = RECIPE.lm_adaptive) -> Dynamics:
        """``scheme=implicit``: its own implicit step with h = lr (:meth:`dynamics`), whatever the solver."""
        if self.scheme == "implicit":
            return self.dynamics(model)
        return super().step_for(model, solver, mu, adaptive)

    def second_order(self, model: nn.Module, mu: float, adaptive: bool = True) -> Dynamics:
        """ODELoRA's implicit scheme (:func:`pinn_lora.methods.dynamics.odelora.implicit_dynamics`)."""
        return implicit_dynamics([lay for _, lay in adapter_layers(model)], mu=mu, adaptive=adaptive,
                                 rebalance_factors=self.rebalance)

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        idx = resolve_targets(len(net.linears), self.targets)
        grads = dict(zip(idx, weight_gradients(net, idx, ctx.loss_fn))) if self.init == "gradient" else {}
        gen = torch.Generator().manual_seed(ctx.seed)

        def make(i: int, lin: nn.Linear) -> LoRALinear:
            scale = self.alpha / self.rank
            factors = balanced_factors(self.init, lin.weight.detach(), grads.get(i), layer_rank(self.rank, lin),
                                       scale, self.init_scale, gen)
            return LoRALinear(lin, self.rank, self.alpha, factors=factors)

        return attach_adapters(net, make, self.targets)

    def dynamics(self, model: nn.Module) -> Dynamics:
        layers = [lay for _, lay in adapter_layers(model)]
        if self.scheme == "implicit":
            return self.second_order(model, mu=1.0 / self.lr)
        return ODELoRADynamics(layers, lr=self.lr, scheme="euler" if self.scheme == "auto" else self.scheme,
                               damping=self.damping,
                               rebalance=self.rebalance, schedule=self.schedule, final_ratio=self.final_ratio,
                               precondition=self.precondition, metric_floor=self.metric_floor,
                               rtol=self.rtol, atol=self.atol,
                               h_max=self.h_max_ratio * self.lr)


class Riemannian(LoRA):
    """LoRA's parameterisation and start (B = 0, A Kaiming-uniform) trained with the r×r
    Riemannian (ScaledGD) preconditioner of Zhang & Pilanci 2024, :mod:`pinn_lora.methods.dynamics.riemannian`."""

    name = "riemannian"
    summary = ("Riemannian-preconditioned LoRA (Zhang & Pilanci 2024, ScaledGD): gradients g_B (AAᵀ+λI)⁻¹ "
               "and (BᵀB+λI)⁻¹ g_A, then Adam or SGD")
    declared = {
        **LoRA.declared,
        "optimizer": Option("adam", str, "what takes the preconditioned gradients",
                            choices=tuple(RiemannianDynamics.OPTIMIZERS)),
        "damping": Option(1e-6, float, "λ in (AAᵀ + λI)⁻¹ and (BᵀB + λI)⁻¹", above=0),
    }

    def dynamics(self, model: nn.Module) -> Dynamics:
        layers = [lay for _, lay in adapter_layers(model)]
        return RiemannianDynamics(layers, lr=self.lr, optimizer=self.optimizer, damping=self.damping,
                                  schedule=self.schedule, final_ratio=self.final_ratio)


class ODLoRA(LoRA):
    """OD-LoRA (ICLR 2026 submission 3878; same idea as SDS-LoRA, arXiv 2606.16454).

    ``warmup`` steps of plain LoRA, then a function-preserving split into
    ΔW = s·(Q_B A + B Q_Aᵀ) with orthonormal bases, whose factor gradients are
    the projections s·Q_Bᵀ G and s·G Q_A (see :mod:`pinn_lora.model.adapters.odlora`).
    The bases are refreshed after ``refresh_every`` more steps, then at intervals
    growing by ``refresh_growth`` (a schedule that gets sparser over training;
    ``refresh_every: 0`` never refreshes). Trained with Adam (the base dynamics).

    The optimiser moments are reset after the split and after every refresh:
    both re-express A and B in new coordinates (rotated, rescaled bases), so
    the old first/second moments would point in meaningless directions.

    ``warmup: 0`` splits at attach time. B = 0 then, so the core is zero:
    Q_A comes from A's (Kaiming) row space, Q_B is a random orthonormal basis
    (seeded), and A = B = 0; training starts from the projections directly
    (they do not depend on the factors, so the zero start is not a saddle).
    """

    name = "odlora"
    summary = ("OD-LoRA (ICLR 2026 sub. 3878 / SDS-LoRA): LoRA warm-up, then W0 + s(Q_B A + B Q_A^T) with "
               "orthonormal bases refreshed on a growing schedule, Adam")
    declared = {
        **LoRA.declared,
        "warmup": Option(10, int, "steps of plain LoRA before the split (0: split at attach)", minimum=0),
        "refresh_every": Option(100, int, "steps from the split to the first refresh of the bases (0: never)",
                                minimum=0),
        "refresh_growth": Option(2.0, float, "each interval between refreshes is this × the one before",
                                 minimum=1),
    }
    hook_in_place = True  # the split and refreshes write the bases, factors and W0 in place

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        gen = torch.Generator().manual_seed(ctx.seed)
        model = attach_adapters(net, lambda i, lin: ODLoRALinear(lin, self.rank, self.alpha, generator=gen),
                                self.targets)
        if self.warmup == 0:
            self._split(model)
        return model

    def refresh_steps(self, until: int) -> list[int]:
        """Step counts (steps completed) ≤ ``until`` after which the bases are refreshed:
        warmup + refresh_every, then intervals refresh_every·growth^k (rounded, ≥ 1)."""
        out, t, k = [], self.warmup, 0
        if self.refresh_every == 0:
            return out
        while True:
            gap = self.refresh_every * self.refresh_growth**k
            if not gap < 2**62:  # grown past any run length
                return out
            t += max(1, round(gap))
            if t > until:
                return out
            out.append(t)
            k += 1

    def _is_refresh(self, t: int) -> bool:
        cache = self.__dict__.setdefault("_refresh_cache", (0, frozenset()))
        if t > cache[0]:  # extend the cached schedule geometrically (O(log) work per run)
            until = max(t, 2 * cache[0])
            cache = (until, frozenset(self.refresh_steps(until)))
            self.__dict__["_refresh_cache"] = cache
        return t in cache[1]

    @staticmethod
    def _split(model: nn.Module) -> None:
        for _, lay in adapter_layers(model):
            if not lay.split_done:
                lay.split()

    def after_step(self, step: int, model: nn.Module, dynamics: Dynamics) -> None:
        t = step + 1  # steps completed
        if t == self.warmup:
            self._split(model)
            dynamics.reset_state()
        elif t > self.warmup and self._is_refresh(t):
            self._split(model)  # no-op unless a layer missed its split
            for _, lay in adapter_layers(model):
                lay.refresh()
            dynamics.reset_state()


def weight_gradients(net: nn.Module, indices: list[int], loss_fn: Callable[[nn.Module], torch.Tensor]
                     ) -> list[torch.Tensor]:
    """∂L/∂W of the linear layers ``indices`` at the current network."""
    ws = [net.linears[i].weight for i in indices]
    flags = [w.requires_grad for w in ws]
    for w in ws:
        w.requires_grad_(True)
    try:
        grads = torch.autograd.grad(loss_fn(net), ws)
    finally:
        for w, f in zip(ws, flags):
            w.requires_grad_(f)
    return [g.detach() for g in grads]
