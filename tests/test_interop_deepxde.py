"""The residual definitions evaluate identically through DeepXDE's derivative operators."""
import pytest
import torch

from pinn_lora.core.dde import deepxde
from pinn_lora.model.derivatives import Derivatives
from pinn_lora.interop.deepxde import deepxde_pde
from pinn_lora.model.network import build_network, to_deepxde
from pinn_lora.core.registry import PROBLEMS, get_problem
from ours import OUR_PROBLEMS


@pytest.mark.parametrize("name", OUR_PROBLEMS)
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

    from pinn_lora.core.dde import deepxde

    deepxde()
    assert _get_current_function_mode_stack() == []
    assert torch.get_default_device() == torch.device("cpu")


# ----------------------------------------------------------------------------- methods inside dde.Model
import copy  # noqa: E402
import math  # noqa: E402

import pinn_lora  # noqa: E402
from pinn_lora.interop.deepxde import DynamicsOptimizer, MonitorCallback, data_loss, optimizer  # noqa: E402
from pinn_lora.training.monitors import MetricsWriter, Stability, UpdateNorm, read_metrics  # noqa: E402


def burgers_data(nu, n=200):
    """DeepXDE's own Burgers setup (TimePDE, DirichletBC, IC), soft constraints."""
    dde = deepxde()
    geom = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), dde.geometry.TimeDomain(0, 1))

    def pde(x, y):
        dy_x = dde.grad.jacobian(y, x, i=0, j=0)
        dy_t = dde.grad.jacobian(y, x, i=0, j=1)
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        return dy_t + y * dy_x - nu * dy_xx

    bc = dde.icbc.DirichletBC(geom, lambda x: 0 * x[:, :1], lambda _, on_boundary: on_boundary)
    ic = dde.icbc.IC(geom, lambda x: -torch.sin(math.pi * torch.as_tensor(x[:, :1])).numpy(),
                     lambda _, on_initial: on_initial)
    import numpy as np

    np.random.seed(0)
    return dde.data.TimePDE(geom, pde, [bc, ic], num_domain=n, num_boundary=20, num_initial=40)


def fnn(seed=0):
    torch.manual_seed(seed)
    return deepxde().nn.FNN([2, 16, 16, 1], "tanh", "Glorot normal")  # float32, DeepXDE's default


@pytest.mark.parametrize("opt", ["adam", "ours"])
def test_frozen_base_bit_identical_after_model_train(opt):
    """DeepXDE's Model calls net.requires_grad_() at every evaluation; the base stays frozen."""
    dde = deepxde()
    net = fnn()
    method = pinn_lora.get_method("lora", rank=2, targets="hidden")
    model_net = pinn_lora.attach(net, method, seed=0)
    frozen = {k: v.clone() for k, v in model_net.state_dict().items() if "lora_" not in k}
    trained = {k: v.clone() for k, v in model_net.named_parameters()}
    model = dde.Model(burgers_data(0.01 / math.pi), model_net)
    model.compile("adam", lr=1e-2) if opt == "adam" else model.compile(optimizer(method, model_net, 20))
    model.train(iterations=20, display_every=10, verbose=0)
    after = model_net.state_dict()
    assert set(frozen) == {k for k in after if "lora_" not in k} and len(frozen) == 6  # W0, b0 of layers 0-1; W, b of 2
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k
    assert all(not torch.equal(after[k], v) for k, v in trained.items() if k.endswith("lora_B"))
    assert sum(p.numel() for p in model_net.parameters() if p.requires_grad) == sum(v.numel() for v in trained.values())


def test_odelora_rk4_through_compile_equals_our_dynamics():
    """ODELoRA's four RK4 stages go through DeepXDE's closure; the factors follow the same
    trajectory as our dynamics stepping on the same loss."""
    dde = deepxde()
    data = burgers_data(0.02 / math.pi)
    method = pinn_lora.get_method("odelora", scheme="rk4", lr=1e-3, precondition="rmsprop")
    net = pinn_lora.attach(fnn(), method, loss_fn=data_loss(data), seed=0)
    twin = copy.deepcopy(net)
    model = dde.Model(data, net)
    opt = optimizer(method, net, total_steps=5)
    model.compile(optimizer=opt)
    model.train(iterations=5, display_every=5, verbose=0)
    assert isinstance(model.opt, DynamicsOptimizer) and opt.steps == 5 and opt.evaluations == 20
    # the same steps outside DeepXDE: our dynamics on data_loss
    dyn = method.dynamics(twin)
    loss_fn = data_loss(data)
    params = [p for p in twin.parameters() if p.requires_grad]

    def closure():
        for p in params:
            p.grad = None
        loss = loss_fn(twin)
        loss.backward()
        return loss.detach()

    for k in range(5):
        dyn.set_progress(k / 5)
        dyn.step(closure)
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name  # float32
    assert not torch.equal(net.linears[1].lora_B, copy.deepcopy(pinn_lora.attach(fnn(), pinn_lora.get_method(
        "odelora", scheme="rk4", lr=1e-3, precondition="rmsprop"), loss_fn=data_loss(data)).linears[1].lora_B))


def test_optimizer_errors_are_clear():
    with pytest.raises(ValueError, match="no trainable tensors"):
        optimizer("lora", pinn_lora.attach(fnn(), "cla", targets=[1]).requires_grad_(False))
    net = pinn_lora.attach(fnn(), "lora")
    with pytest.raises(RuntimeError, match="call step\\(closure\\)"):
        optimizer("lora", net).step()
    with pytest.raises(ValueError, match="total_steps"):
        optimizer("lora", net, total_steps=0)


def test_monitors_as_callbacks_write_metrics(tmp_path):
    dde = deepxde()
    data = burgers_data(0.02 / math.pi)
    method = pinn_lora.get_method("lora", rank=2, lr=1e-2)
    net = pinn_lora.attach(fnn(), method)
    model = dde.Model(data, net)
    model.compile(optimizer=optimizer(method, net, total_steps=12))
    stability = Stability()
    cb = MonitorCallback([UpdateNorm(), stability, MetricsWriter(tmp_path / "metrics.jsonl")],
                         problem=pinn_lora.get_problem("burgers", nu=0.02 / math.pi), eval_every=6)
    assert isinstance(cb, dde.callbacks.Callback)
    model.train(iterations=12, display_every=6, verbose=0, callbacks=[cb])
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(12))
    assert all(r["update_norm"] > 0 for r in recs[1:]) and all(r["evaluations"] == i + 1 for i, r in enumerate(recs))
    assert [r["step"] for r in recs if "rel_l2" in r] == [5, 11]
    assert recs[-1]["loss"] < recs[0]["loss"] and cb.status == "completed"
    assert stability.summary()["spikes"] == 0


def test_callback_stops_a_diverging_run():
    dde = deepxde()
    method = pinn_lora.get_method("lora", rank=2, lr=1e6, schedule="constant")
    net = pinn_lora.attach(fnn(), method)
    model = dde.Model(burgers_data(0.02 / math.pi), net)
    model.compile(optimizer=optimizer(method, net))
    cb = MonitorCallback()
    model.train(iterations=200, display_every=1000, verbose=0, callbacks=[cb])
    assert cb.status == "diverged" and "at step" in cb.message and len(cb.history.records) < 200


def test_deepxde_lbfgs_on_an_attached_odelora_model():
    """ODELoRA's weight-gradient path leaves factor gradients transposed; attach makes them
    contiguous, so DeepXDE's L-BFGS (which views gradients flat) trains the adapter only."""
    dde = deepxde()
    data = burgers_data(0.02 / math.pi)
    method = pinn_lora.get_method("odelora", lr=1e-3, precondition="rmsprop")
    net = pinn_lora.attach(fnn(), method, loss_fn=data_loss(data))
    for lay in net.linears:
        lay.capture_weight_grad = True  # as ODELoRA's dynamics set it
    frozen = {k: v.clone() for k, v in net.state_dict().items() if "lora_" not in k}
    model = dde.Model(data, net)
    dde.optimizers.set_LBFGS_options(maxiter=5)
    options = dde.optimizers.config.LBFGS_options
    per_step, options["iter_per_step"] = options["iter_per_step"], 5  # else one call runs 1000 iterations
    model.compile("L-BFGS")
    before = float(data_loss(data)(net))
    try:
        model.train(verbose=0)
    finally:
        options["iter_per_step"] = per_step
        dde.optimizers.set_LBFGS_options()
    assert float(data_loss(data)(net)) < before
    assert all(torch.equal(net.state_dict()[k], v) for k, v in frozen.items())
