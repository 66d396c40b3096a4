"""The residual definitions evaluate identically through DeepXDE's derivative operators."""
import pytest
import torch

from pinn_lora._dde import deepxde
from pinn_lora.derivatives import Derivatives
from pinn_lora.interop.deepxde import deepxde_pde
from pinn_lora.network import build_network, to_deepxde
from pinn_lora.registry import get_problem


@pytest.mark.parametrize("name", ["burgers", "allen_cahn", "helmholtz"])
def test_same_residual_through_deepxde(name):
    prob = get_problem(name).default_target()
    net = build_network([2, 16, 16, 1], "tanh", seed=1, output_transform=prob.output_transform)
    fnn = to_deepxde(net)
    x = torch.as_tensor(prob.sample(128, seed=0)).requires_grad_(True)
    ours = prob.residuals(Derivatives(net, x, prob.variables))["pde"]
    deepxde().grad.clear()
    theirs = deepxde_pde(prob)(x, fnn(x))[0]
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    assert float(ours.abs().max()) > 1e-3  # a real residual, not zeros


def test_importing_deepxde_leaves_torch_defaults_alone():
    before = (torch.get_default_dtype(), torch.get_default_device())
    deepxde()
    assert (torch.get_default_dtype(), torch.get_default_device()) == before


def test_importing_deepxde_leaves_no_torch_function_mode():
    """DeepXDE's import sets a default device; restoring it with set_default_device("cpu") would leave a
    DeviceContext mode that puts a Python call in front of every torch operation (17 % of a CPU step)."""
    from torch.overrides import _get_current_function_mode_stack

    from pinn_lora._dde import deepxde

    deepxde()
    assert _get_current_function_mode_stack() == []
    assert torch.get_default_device() == torch.device("cpu")
