"""Update rules: how the trainable tensors move (Adam, ODELoRA's integrated field, Levenberg–Marquardt,
L-BFGS …), each a :class:`Step` over an :class:`Objective` (:mod:`pinn_lora.methods.dynamics.base`)."""
from pinn_lora.methods.dynamics.base import Dynamics, GradientDynamics, Objective, Step, lr_factor
from pinn_lora.methods.dynamics.runge_kutta import TABLEAUS, ButcherTableau, get_tableau, rk_step

__all__ = ["Step", "Objective", "Dynamics", "GradientDynamics", "lr_factor", "TABLEAUS", "ButcherTableau",
           "get_tableau", "rk_step"]
