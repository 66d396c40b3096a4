"""A tiny adapted PINN for method tests: a 2→8→8→1 tanh network on a problem's
default target, 64 collocation points and a dynamics closure."""
import copy

import torch

from pinn_lora.methods import AttachContext, get_method
from pinn_lora.model.network import build_network
from pinn_lora.core.registry import get_problem
from pinn_lora.training.trainer import residual_loss


def setup(problem="burgers", method="lora", layers=(2, 8, 8, 1), **opts):
    """(problem, base network, adapted model, method, points); ``method`` is a name or a Method class."""
    prob = get_problem(problem).default_target()
    net = build_network(list(layers), "tanh", seed=0, output_transform=prob.output_transform)
    base = copy.deepcopy(net)
    pts = torch.as_tensor(prob.sample(64, seed=1))
    ctx = AttachContext(prob, lambda m: residual_loss(prob, m, pts), seed=0)
    meth = get_method(method, **opts) if isinstance(method, str) else method(**opts)
    return prob, base, meth.attach(net, ctx), meth, pts


def make_closure(prob, model, pts, calls=None):
    """A dynamics closure: zero the gradients, residual loss on ``pts``, backward (counted in ``calls``)."""
    def closure():
        if calls is not None:
            calls.append(1)
        for p in model.parameters():
            p.grad = None
        loss = residual_loss(prob, model, pts)
        loss.backward()
        return loss.detach()
    return closure
