"""Update rules: how the trainable tensors move (Adam, ODELoRA's integrated field …)."""
from pinn_lora.methods.dynamics.base import Dynamics, GradientDynamics, lr_factor
from pinn_lora.methods.dynamics.runge_kutta import TABLEAUS, ButcherTableau, get_tableau, rk_step

__all__ = ["Dynamics", "GradientDynamics", "lr_factor", "TABLEAUS", "ButcherTableau", "get_tableau", "rk_step"]
