"""Helmholtz: Δu + k² u = q on [-1, 1]², u = 0 on the boundary, with
q = Σ_j (1 - λ_j) sin(m_j π x) sin(n_j π y), λ_j = π² (m_j² + n_j²).
Exact: u = Σ_j (1 - λ_j)/(k² - λ_j) sin(m_j π x) sin(n_j π y).

The Dirichlet problem on [-1, 1]² is singular where k² = π² (m² + n²)/4 for
any integers m, n >= 1; wavenumbers within a relative margin of one are refused.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pinn_lora.pde.problem import Coefficient, CoefficientError, Problem

RESONANCE_MARGIN = 0.05


def nearest_resonance(k: float) -> tuple[float, int, int]:
    """The Dirichlet eigenvalue π²(m²+n²)/4 nearest to k² (relative), with m, n."""
    k2 = k * k
    top = int(math.ceil(2 * k / math.pi)) + 2
    candidates = ((math.pi**2 * (m * m + n * n) / 4, m, n)
                  for m in range(1, top + 1) for n in range(m, top + 1))
    return min(candidates, key=lambda c: abs(k2 - c[0]) / c[0])


class Helmholtz(Problem):
    name = "helmholtz"
    variables = ("x", "y")
    lower = (-1.0, -1.0)
    upper = (1.0, 1.0)
    coefficient_specs = (Coefficient("k", 1.0, low=0.0, low_inclusive=True, doc="wavenumber",
                                    scale="square", stage=2.0),)
    target = {"k": 3.0}
    eval_points = (201, 201)
    network = {"layers": [2, 64, 64, 64, 1], "activation": "sin"}
    # what differs from the package's recipe (pinn_lora.core.recipe): the first-order path's budget and
    # ODELoRA's explicit steps there, and a shorter pretraining
    recipe = {"first_order": {"steps": 1000, "n_points": 2000, "lbfgs_steps": 0},
              "method": {"odelora": {"lr": 0.1, "precondition": "none"}},
              "pretrain": {"steps": 8000, "n_points": 2000, "lbfgs_steps": 1500, "lbfgs_points": 4000}}
    modes: tuple[tuple[int, int], ...] = ((1, 1), (1, 2))

    def __init__(self, modes=None, **coefficients) -> None:
        if modes is not None:
            ok = isinstance(modes, (list, tuple)) and len(modes) > 0 and all(
                isinstance(mode, (list, tuple)) and len(mode) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in mode) for mode in modes)
            if not ok:
                raise CoefficientError(f"helmholtz: modes={modes!r}; give a list of pairs [m, n] of integers >= 1, "
                                       "e.g. [[1, 1], [1, 2]]")
            self.modes = tuple((m, n) for m, n in modes)
        super().__init__(**coefficients)

    def validate(self) -> None:
        mu, m, n = nearest_resonance(self.k)
        if abs(self.k**2 - mu) / mu < RESONANCE_MARGIN:
            raise CoefficientError(
                f"helmholtz: k={self.k:g} is within {RESONANCE_MARGIN:.0%} of the resonance "
                f"k²=π²({m}²+{n}²)/4 (k={math.sqrt(mu):.4f}), where the Dirichlet problem is singular; "
                "choose k with k² at least 5% away from every π²(m²+n²)/4, m, n >= 1"
            )

    def continuation_blocked(self, source) -> str:
        """A path in k² that crosses λ_j = π²(m_j² + n_j²) of a forced mode passes through solutions
        whose amplitude (1 − λ_j)/(k² − λ_j) blows up: no continuation across it."""
        k2 = sorted((float(source.get("k", self.k)) ** 2, self.k ** 2))
        crossed = [(m, n) for (m, n), lam in zip(self.modes, self._lambdas()) if k2[0] < lam < k2[1]]
        if not crossed:
            return ""
        m, n = crossed[0]
        return (f"the path from k={math.sqrt(k2[0]):g} to k={math.sqrt(k2[1]):g} crosses the resonance "
                f"k²=π²({m}²+{n}²) of the forced mode ({m}, {n}), where the solution blows up")

    def with_coefficients(self, **changes):
        return type(self)(modes=self.modes, **{**self.coefficients, **changes})

    def key(self) -> tuple:
        return super().key() + (self.modes,)

    def __repr__(self) -> str:
        return f"Helmholtz(k={self.k:.6g}, modes={list(self.modes)})"

    def geometry(self):
        from pinn_lora.core.dde import deepxde

        return deepxde().geometry.Rectangle(list(self.lower), list(self.upper))

    def _lambdas(self) -> list[float]:
        return [math.pi**2 * (m * m + n * n) for m, n in self.modes]

    def output_transform(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        x, y = inputs[:, :1], inputs[:, 1:2]
        return (1 - x * x) * (1 - y * y) * outputs

    def forcing(self, x, y):
        lib = torch if isinstance(x, torch.Tensor) else np
        return sum((1 - lam) * lib.sin(m * math.pi * x) * lib.sin(n * math.pi * y)
                   for (m, n), lam in zip(self.modes, self._lambdas()))

    def residuals(self, d):
        x, y = d.column("x"), d.column("y")
        return {"pde": d.u_xx + d.u_yy + self.k**2 * d.u - self.forcing(x, y)}

    def residual_scale(self) -> float:
        # mean square of q over the square: the modes are orthogonal, each sin·sin has mean square 1/4
        return float(sum((1 - lam) ** 2 for lam in self._lambdas()) / 4)

    def mode_weights(self) -> list[float]:
        return [(1 - lam) / (self.k**2 - lam) for lam in self._lambdas()]

    def reference_grid(self, axes):
        x, y = np.meshgrid(axes[0], axes[1], indexing="ij")
        return sum(w * np.sin(m * np.pi * x) * np.sin(n * np.pi * y)
                   for (m, n), w in zip(self.modes, self.mode_weights()))
