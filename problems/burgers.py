"""Viscous Burgers: u_t + u u_x = nu u_xx on x in [-1, 1], t in [0, 1],
u(x, 0) = -sin(pi x), u(+-1, t) = 0. Reference: Cole–Hopf."""
from __future__ import annotations

import math

import numpy as np
import torch

from pinn_lora.pde.problem import Coefficient, Problem, geometry_xt


class Burgers(Problem):
    name = "burgers"
    variables = ("x", "t")
    lower = (-1.0, 0.0)
    upper = (1.0, 1.0)
    # the Cole–Hopf reference: accurate down to 0.001/π (docs/problems.md); its cost grows like 1/sqrt(nu) below
    # (hours at 1e-12) and like sqrt(nu) above (4 s at 100, minutes at 1e6)
    coefficient_specs = (Coefficient("nu", 0.01 / math.pi, low=0.001 / math.pi, low_inclusive=True, high=100.0,
                                     doc="viscosity", why="the range in which the Cole–Hopf reference solution "
                                                          "is accurate and takes seconds",
                                     scale="log", stage=math.log(2) / 10),)
    target = {"nu": 0.02 / math.pi}
    eval_points = (256, 101)
    network = {"layers": [2, 64, 64, 64, 64, 1], "activation": "tanh"}

    def geometry(self):
        return geometry_xt(self.lower, self.upper)

    def output_transform(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        # u = -sin(pi x) + t (1 - x^2) N: initial and boundary data hold exactly.
        x, t = inputs[:, :1], inputs[:, 1:2]
        return -torch.sin(math.pi * x) + t * (1 - x * x) * outputs

    def residuals(self, d):
        return {"pde": d.u_t + d.u * d.u_x - self.nu * d.u_xx}

    def residual_scale(self) -> float:
        # mean square of u_t at t = 0 (from the initial condition): the size of
        # the residual's terms, so a learning rate means the same for every nu.
        x = np.linspace(-1, 1, 2001)
        u0, u0x, u0xx = -np.sin(np.pi * x), -np.pi * np.cos(np.pi * x), np.pi**2 * np.sin(np.pi * x)
        return float(np.mean((-u0 * u0x + self.nu * u0xx) ** 2))

    def reference_grid(self, axes):
        from .reference_solvers import burgers_cole_hopf

        from pinn_lora.pde.problem import reference_progress

        return burgers_cole_hopf(self.nu, axes[0], axes[1], progress=reference_progress())
