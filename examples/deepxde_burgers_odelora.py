"""ODELoRA inside a plain DeepXDE workflow.

DeepXDE's own Burgers set-up (TimePDE, DirichletBC, IC; soft constraints, as in DeepXDE's
examples/pinn_forward/Burgers.py) is pretrained briefly at nu = 0.01/pi with DeepXDE's Adam, then
adapted to nu = 0.02/pi: pinn_lora attaches ODELoRA to the same ``deepxde.nn.FNN``, its dynamics
become the optimizer of ``Model.compile`` and pinn_lora's monitors run as a DeepXDE callback.
Errors are measured against pinn_lora's Cole–Hopf reference solution.

    python examples/deepxde_burgers_odelora.py                  # about a minute on a 2-core CPU
    PINN_LORA_FAST=1 python examples/deepxde_burgers_odelora.py # a few steps, for a smoke check
"""
import math
import os

import numpy as np
import torch

import pinn_lora
from pinn_lora.core.dde import deepxde
from pinn_lora.interop.deepxde import MonitorCallback, data_loss, optimizer
from pinn_lora.training.monitors import MetricsWriter, Stability

dde = deepxde()  # DeepXDE with the PyTorch backend, imported without side effects on torch
fast = bool(os.environ.get("PINN_LORA_FAST"))
pretrain_steps, adapt_steps, lbfgs_steps, n_domain = (100, 5, 10, 200) if fast else (5000, 1000, 2000, 1000)
geom = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), dde.geometry.TimeDomain(0, 1))


def burgers_data(nu):
    def pde(x, y):
        dy_x = dde.grad.jacobian(y, x, i=0, j=0)
        dy_t = dde.grad.jacobian(y, x, i=0, j=1)
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        return dy_t + y * dy_x - nu * dy_xx

    bc = dde.icbc.DirichletBC(geom, lambda x: np.zeros((len(x), 1)), lambda _, on_boundary: on_boundary)
    ic = dde.icbc.IC(geom, lambda x: -np.sin(np.pi * x[:, 0:1]), lambda _, on_initial: on_initial)
    np.random.seed(0)
    return dde.data.TimePDE(geom, pde, [bc, ic], num_domain=n_domain, num_boundary=80, num_initial=160)


# 1. pretrain a base at nu = 0.01/pi, all in DeepXDE
torch.manual_seed(0)
net = dde.nn.FNN([2] + [32] * 3 + [1], "tanh", "Glorot normal")
base_model = dde.Model(burgers_data(0.01 / math.pi), net)
base_model.compile("adam", lr=1e-3)
base_model.train(iterations=pretrain_steps, display_every=max(pretrain_steps // 4, 1), verbose=0)
source = pinn_lora.get_problem("burgers", nu=0.01 / math.pi)
target = pinn_lora.get_problem("burgers", nu=0.02 / math.pi)
base_on_target = target.relative_l2(net)
print(f"base: rel. L2 {source.relative_l2(net):.3e} at nu=0.01/pi, {base_on_target:.3e} at nu=0.02/pi")

# 2. adapt to nu = 0.02/pi with ODELoRA: attach, compile with its dynamics, train with monitors
data = burgers_data(0.02 / math.pi)
# RK4 in RMSprop's metric (our extension for stiff PINN losses); h = 3e-4: at 1e-3 RK4 is beyond the stability
# limit of this soft-constrained loss from a briefly trained base (Euler is stable at 1e-3)
method = pinn_lora.get_method("odelora", rank=4, lr=3e-4, precondition="rmsprop", scheme="rk4")
model_net = pinn_lora.attach(net, method, loss_fn=data_loss(data))  # frozen weights become buffers
frozen = {k: v.clone() for k, v in model_net.state_dict().items() if "lora_" not in k}
model = dde.Model(data, model_net)
model.compile(optimizer=optimizer(method, model_net, total_steps=adapt_steps))
os.makedirs("out", exist_ok=True)
stability = Stability()
monitor = MonitorCallback([stability, MetricsWriter("out/deepxde_odelora_metrics.jsonl")], problem=target,
                          eval_every=max(adapt_steps // 5, 1))
losshistory, _ = model.train(iterations=adapt_steps, display_every=max(adapt_steps // 5, 1), verbose=0,
                             callbacks=[monitor])
after_odelora = target.relative_l2(model_net)
records = monitor.history.records
evaluations = model.opt.evaluations
print(f"odelora (rk4, {adapt_steps} steps, {evaluations} loss evaluations): "
      f"loss {records[0]['loss']:.3e} -> {records[-1]['loss']:.3e}; "
      f"rel. L2 at nu=0.02/pi {base_on_target:.3e} -> {after_odelora:.3e}; spikes {stability.summary()['spikes']}")

# 3. an L-BFGS finish on the same adapter tensors (DeepXDE's L-BFGS sees only them: the base is buffers),
#    as pinn_lora's own Burgers recipe does; first-order steps alone leave the moving shock under-resolved
dde.optimizers.set_LBFGS_options(maxiter=lbfgs_steps)
# DeepXDE runs L-BFGS in calls of iter_per_step iterations, fixed at import to min(1000, default maxiter)
dde.optimizers.config.LBFGS_options["iter_per_step"] = min(1000, lbfgs_steps)
model.compile("L-BFGS")
model.train(verbose=0)
adapted = target.relative_l2(model_net)
print(f"+ L-BFGS ({lbfgs_steps} iterations): rel. L2 at nu=0.02/pi {adapted:.3e} "
      f"(base {base_on_target:.3e}, {base_on_target / adapted:.1f}x better)")

# the base stayed frozen through DeepXDE's requires_grad_() calls; ODELoRA used 4 evaluations per step
assert all(torch.equal(model_net.state_dict()[k], v) for k, v in frozen.items())
assert evaluations == 4 * adapt_steps and monitor.status == "completed"
assert all(math.isfinite(r["loss"]) for r in records) and len(records) == adapt_steps
if not fast:
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert adapted < base_on_target, (adapted, base_on_target)
