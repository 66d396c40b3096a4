"""The jet (Taylor-mode) derivative path equals nested autograd: values, derivatives and
parameter gradients, on every problem and every registered method."""
import pytest
import torch

from pinn_lora.model.derivatives import (Derivatives, JetDerivatives, why_no_jets, mlp_jets, needed_derivatives,
                                   provider)
from pinn_lora.model.network import build_network
from pinn_lora.core.registry import METHODS, PROBLEMS, get_problem
from pinn_lora.training.trainer import TrainConfig, residual_loss
from tests.tiny import setup
from ours import OUR_PROBLEMS, OUR_METHODS

torch.set_default_dtype(torch.float64)


@pytest.mark.parametrize("name", OUR_PROBLEMS)
def test_jets_equal_autograd_on_every_problem(name):
    prob = get_problem(name).default_target()
    net = build_network([2, 16, 16, 1], "tanh", seed=3, output_transform=prob.output_transform)
    pts = torch.as_tensor(prob.sample(200, seed=2))
    names = needed_derivatives(prob)
    assert names and all(n.startswith("u_") for n in names)
    ref = Derivatives(net, pts, prob.variables)
    jet = JetDerivatives(net, pts, prob.variables, names)
    torch.testing.assert_close(jet.u, ref.u, rtol=0, atol=1e-12)
    for n in names:
        torch.testing.assert_close(getattr(jet, n), getattr(ref, n), rtol=1e-10, atol=1e-10)
    params = list(net.parameters())
    g_ref = torch.autograd.grad(residual_loss(prob, net, pts, derivatives="autograd"), params)
    g_jet = torch.autograd.grad(residual_loss(prob, net, pts, derivatives="jets"), params)
    for a, b in zip(g_ref, g_jet):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_mixed_and_sin_without_transform():
    """Mixed second derivatives, the sin activation, no output transform."""
    net = build_network([3, 8, 8, 2], "sin", seed=1)
    x = torch.rand(50, 3)
    out = mlp_jets([(lin.weight, lin.bias) for lin in net.linears], "sin", x, [0, 1, 2], [(0, 0), (0, 2), (1, 1)])
    assert out.shape == (1, 1 + 3 + 3, 50, 2)
    u = lambda p: net(p)[:, 1:2]  # noqa: E731
    ref = Derivatives(u, x, ("a", "b", "c"))
    torch.testing.assert_close(out[0, 0, :, 1:2], ref.u, rtol=0, atol=1e-13)
    for slot, name in enumerate(["u_a", "u_b", "u_c", "u_aa", "u_ac", "u_bb"], start=1):
        torch.testing.assert_close(out[0, slot, :, 1:2], getattr(ref, name), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", OUR_METHODS)
def test_jets_equal_autograd_for_every_method(method):
    """Each adapter computes F.linear(x, W0 + ΔW, b) on the jet path: same loss and gradients."""
    prob, _, model, meth, pts = setup("burgers", method)
    if method not in ("scratch", "full"):
        assert why_no_jets(model) == ""
    params = [p for p in model.parameters() if p.requires_grad]
    l_ref = residual_loss(prob, model, pts, derivatives="autograd")
    g_ref = torch.autograd.grad(l_ref, params)
    l_jet = residual_loss(prob, model, pts, derivatives="jets")
    g_jet = torch.autograd.grad(l_jet, params)
    assert abs(float(l_jet.detach()) - float(l_ref.detach())) <= 1e-12 * max(1.0, abs(float(l_ref.detach())))
    for a, b in zip(g_ref, g_jet):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_odelora_weight_gradient_hook_on_jet_path():
    """ODELoRA's preconditioned flow reads G = dL/dW through a hook: the jet path gives the same G."""
    prob, _, model, meth, pts = setup("burgers", "odelora", precondition="rmsprop")
    meth.dynamics(model)  # switches the hooks on
    grads = {}
    for engine in ("autograd", "jets"):
        residual_loss(prob, model, pts, derivatives=engine).backward()
        grads[engine] = [lay.weight_grad.clone() for lay in model.linears]
    for a, b in zip(grads["autograd"], grads["jets"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_engine_errors():
    prob = get_problem("burgers")
    net = build_network([2, 8, 1], "gelu", seed=0)
    pts = torch.rand(4, 2)
    assert "gelu" in why_no_jets(net)
    with pytest.raises(ValueError, match="derivatives=jets cannot run this network: activation 'gelu'"):
        provider(prob, net, pts, "jets")
    assert isinstance(provider(prob, net, pts, "auto"), Derivatives)  # falls back quietly
    with pytest.raises(ValueError, match="derivatives='fast'; choose one of auto, autograd, jets"):
        provider(prob, net, pts, "fast")
    with pytest.raises(ValueError, match="train: derivatives='fast'"):
        TrainConfig(derivatives="fast")
