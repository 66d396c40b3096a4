"""The loop's settings (:class:`TrainConfig`); a method's own settings live in the method."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pinn_lora.core.recipe import Adaptation as _Recipe
from pinn_lora.model.derivatives import ENGINES
from pinn_lora.pde.problem import SAMPLERS

SOLVERS = ("method", "lm")
SAMPLINGS = ("uniform", "rad", "rar_d")


@dataclass
class TrainConfig:
    """Loop settings (the method's own settings live in the method). The loop options a recipe holds (damping,
    RAD, RAR-D, continuation stages) default to the package's recipe (:mod:`pinn_lora.core.recipe`); ``steps``
    here counts every step the loop takes (a run's continuation stages included), not the recipe's ``steps``
    at the target."""

    steps: int = 2000
    n_points: int = 2000
    sampler: str = "pseudo"
    resample_every: int = 100
    causal_eps: float = 0.0  # causal weighting in time (Wang, Sankaran & Perdikaris 2022); 0 = off
    causal_bins: int = 32
    lbfgs_steps: int = 0
    lbfgs_points: int = 0  # 0: same as n_points
    eval_every: int = 100
    seed: int = 0
    progress: bool = True
    checkpoint_every: int = 0  # steps between checkpoints (0 = off); needs a checkpoint path
    divergence_factor: float = 1e6  # stop when loss > factor × initial loss
    derivatives: str = "auto"  # autograd | jets | auto (jets on CUDA, autograd on CPU)
    cuda_graph: Any = "auto"  # capture the whole step in a CUDA graph: auto (on CUDA when possible) | True | False
    sync_every: int = 0  # graph mode: steps between host reads of the losses (0: eval_every)
    solver: str = "method"  # method: the method's own dynamics | lm: Levenberg–Marquardt on its parameters
    lm_mu: float = _Recipe.lm_mu  # lm: the starting damping μ (the implicit Euler step h = 1/μ)
    lm_adaptive: bool = _Recipe.lm_adaptive  # lm: adapt μ by the trust-region rule (False: a fixed h)
    sampling: str = "uniform"  # uniform | rad | rar_d (residual-based adaptive distribution / refinement, Wu et al. 2023)
    rad_k: float = _Recipe.rad_k  # rad, rar_d: density ∝ |r|^k / mean(|r|^k) + c
    rad_c: float = _Recipe.rad_c
    rad_pool: int = _Recipe.rad_pool  # rad, rar_d: candidates per point drawn
    rar_add: int = _Recipe.rar_add  # rar_d: points added to the set at each draw (0: n_points // 10; see rar_points)
    stage_steps: int = _Recipe.stage_steps  # continuation: the most steps of each intermediate stage (Trainer ``stages``)
    stage_tol: float = _Recipe.stage_tol  # continuation: a stage ends early once a step starts at a loss <= this

    @property
    def rar_points(self) -> int:
        """RAR-D: the points each draw adds (``rar_add``, or n_points // 10, at least 1)."""
        return self.rar_add or max(self.n_points // 10, 1)

    def __post_init__(self) -> None:
        for key in ("lm_adaptive", "progress"):  # bool("no") is True: a string would silently mean true
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"train: {key}={getattr(self, key)!r} must be true or false")
        if self.cuda_graph not in ("auto", True, False):
            raise ValueError(f"train: cuda_graph={self.cuda_graph!r}; use auto, true or false")
        for keys, low in ((("steps", "lbfgs_steps", "lbfgs_points", "checkpoint_every", "sync_every"), 0),
                          (("n_points", "resample_every", "eval_every", "causal_bins"), 1)):
            for key in keys:
                value = getattr(self, key)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"train: {key}={value!r} must be an integer >= {low}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"train: sampler={self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.derivatives not in ENGINES:
            raise ValueError(f"train: derivatives={self.derivatives!r}; choose one of {', '.join(ENGINES)}")
        if not self.causal_eps >= 0:
            raise ValueError(f"train: causal_eps={self.causal_eps!r} must be >= 0")
        if self.solver not in SOLVERS:
            raise ValueError(f"train: solver={self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"train: sampling={self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if self.solver == "lm" and self.causal_eps > 0:
            raise ValueError("train: solver=lm works on the plain residual vector; causal weights (causal_eps > 0) "
                             "are for first-order steps")
        for key in ("rad_k", "rad_c"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"train: {key}={value!r} must be a finite number >= 0")
        if isinstance(self.rad_pool, bool) or not isinstance(self.rad_pool, int) or self.rad_pool < 1:
            raise ValueError(f"train: rad_pool={self.rad_pool!r} must be an integer >= 1")
        if isinstance(self.rar_add, bool) or not isinstance(self.rar_add, int) or self.rar_add < 0:
            raise ValueError(f"train: rar_add={self.rar_add!r} must be an integer >= 0 (0: n_points // 10)")
        if isinstance(self.stage_steps, bool) or not isinstance(self.stage_steps, int) or self.stage_steps < 1:
            raise ValueError(f"train: stage_steps={self.stage_steps!r} must be an integer >= 1")
        if isinstance(self.stage_tol, bool) or not isinstance(self.stage_tol, (int, float)) or not self.stage_tol >= 0:
            raise ValueError(f"train: stage_tol={self.stage_tol!r} must be a number >= 0")
