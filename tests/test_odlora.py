"""OD-LoRA (ICLR 2026 submission 3878; SDS-LoRA, arXiv 2606.16454): projected factor
gradients, function-preserving split and refresh, the refresh schedule."""
import copy

import pytest
import torch
from tiny import setup
from torch import nn
from torch.nn import functional as F

from pinn_lora.model.adapters import LoRALinear, adapter_layers, merge_adapters
from pinn_lora.model.adapters.odlora import ODLoRALinear
from pinn_lora.methods.dynamics import GradientDynamics
from pinn_lora.methods import (
    MethodOptionError,
    ODLoRA,
    get_method,
    trainable_parameters,
)
from pinn_lora.core.registry import METHODS
from pinn_lora.training.trainer import TrainConfig, Trainer, residual_loss

if "odlora" not in METHODS:  # until the entry point is installed
    METHODS.register("odlora", ODLoRA)


def _layer(m=12, n=9, rank=3, alpha=6.0, seed=0, split=False, noise=0.3):
    """A random float64 layer with non-trivial factors (and, split, non-trivial two-branch factors)."""
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(n, m).double()
    with torch.no_grad():
        base.weight.copy_(torch.randn(m, n, generator=g, dtype=torch.float64))
        base.bias.copy_(torch.randn(m, generator=g, dtype=torch.float64))
    lay = ODLoRALinear(base, rank, alpha, generator=g)
    with torch.no_grad():
        lay.lora_B.copy_(torch.randn(m, lay.rank, generator=g, dtype=torch.float64))
        if split:
            lay.split()
            lay.lora_A.add_(noise * torch.randn(lay.lora_A.shape, generator=g, dtype=torch.float64))
            lay.lora_B.add_(noise * torch.randn(lay.lora_B.shape, generator=g, dtype=torch.float64))
    return lay, torch.randn(20, n, generator=g, dtype=torch.float64)


def _orthonormal(q):
    return torch.allclose(q.T @ q, torch.eye(q.shape[1], dtype=q.dtype), atol=1e-10, rtol=0)


def _setup(problem="burgers", **opts):
    return setup(problem, "odlora", **opts)


def _loss(prob, model, pts):
    return residual_loss(prob, model, pts)


def _perturb(model, size=0.1, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, lay in adapter_layers(model):
            for p in lay.factors():
                p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_gradients_after_split_are_projections():
    lay, x = _layer(split=True)
    target = torch.randn(20, lay.out_features, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss_of(y):
        return ((torch.tanh(y) - target) ** 2).sum()

    w = (lay.weight0 + lay.delta_weight()).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(F.linear(x, w, lay.bias0)), w)
    loss_of(lay(x)).backward()
    s = lay.scale
    assert torch.allclose(lay.lora_A.grad, s * lay.Q_B.T @ g, atol=1e-10, rtol=0)
    assert torch.allclose(lay.lora_B.grad, s * g @ lay.Q_A, atol=1e-10, rtol=0)


def test_split_and_refresh_keep_layer_exact_and_bases_orthonormal():
    lay, x = _layer()
    before, w_before = lay(x).detach(), lay.merged().weight.detach().clone()
    lay.split()
    assert lay.split_done
    assert torch.allclose(lay(x), before, atol=1e-10, rtol=0)
    assert torch.allclose(lay.merged().weight, w_before, atol=1e-10, rtol=0)
    assert _orthonormal(lay.Q_A) and _orthonormal(lay.Q_B)
    # after the split both branches carry the same Σ/2: s·Q_B A = s·B Q_Aᵀ
    assert torch.allclose(lay.Q_B @ lay.lora_A, lay.lora_B @ lay.Q_A.T, atol=1e-12, rtol=0)
    with torch.no_grad():  # train-like move: ΔW now has rank up to 2r
        lay.lora_A.add_(0.3 * torch.randn_like(lay.lora_A))
        lay.lora_B.add_(0.3 * torch.randn_like(lay.lora_B))
    before, w_before = lay(x).detach(), lay.merged().weight.detach().clone()
    old_qa, old_qb = lay.Q_A.clone(), lay.Q_B.clone()
    lay.refresh()
    assert torch.allclose(lay(x), before, atol=1e-10, rtol=0)
    assert torch.allclose(lay.merged().weight, w_before, atol=1e-10, rtol=0)
    assert _orthonormal(lay.Q_A) and _orthonormal(lay.Q_B)
    # signs aligned with the old bases, pair by pair
    assert ((lay.Q_A * old_qa).sum(0) + (lay.Q_B * old_qb).sum(0) >= 0).all()
    assert torch.linalg.matrix_rank(lay.delta_weight()) <= lay.rank  # the tail went into weight0


def test_split_of_zero_b_gives_random_basis_and_zero_factors():
    lay, x = _layer()
    with torch.no_grad():
        lay.lora_B.zero_()
    before, a = lay(x).detach(), lay.lora_A.detach().clone()
    lay.split()
    assert torch.allclose(lay(x), before, atol=1e-12, rtol=0)
    assert _orthonormal(lay.Q_A) and _orthonormal(lay.Q_B)
    assert not lay.lora_A.any() and not lay.lora_B.any()
    assert (lay.Q_B.abs() > 1e-3).sum() > lay.Q_B.numel() // 2  # random, not identity columns
    assert torch.allclose(a @ lay.Q_A @ lay.Q_A.T, a, atol=1e-12, rtol=0)  # Q_A spans A's rows


def _ill(rows, cols, sv, gen):
    """A random rows × cols matrix with singular values ``sv``."""
    u, _ = torch.linalg.qr(torch.randn(rows, len(sv), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(sv), generator=gen, dtype=torch.float64))
    return u @ torch.diag(sv) @ v.T


def _sgd_cosine(lay, g, lr=1e-4):
    """cos(W_after − W_before, −G) for one SGD step on the linear loss <G, W>."""
    w0 = lay.merged().weight.detach().clone()
    opt = torch.optim.SGD([p for p in lay.parameters() if p.requires_grad], lr=lr)
    opt.zero_grad()
    (g * lay.delta_weight()).sum().backward()
    opt.step()
    step = lay.merged().weight.detach() - w0
    return float(F.cosine_similarity(step.reshape(1, -1), -g.reshape(1, -1)).squeeze())


def test_one_step_follows_gradient_better_than_lora_on_ill_conditioned_factors():
    m, n, r = 24, 20, 4
    cos_lora, cos_od = [], []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        sv = torch.logspace(-3, 0, r, dtype=torch.float64)

        b, a = _ill(m, r, sv, gen), _ill(r, n, sv, gen)
        g = torch.randn(m, n, generator=gen, dtype=torch.float64)
        base = nn.Linear(n, m).double()
        lora = LoRALinear(base, r, 4.0, factors=(b, a))
        od = ODLoRALinear(base, r, 4.0, generator=gen)
        with torch.no_grad():
            od.weight0.copy_(lora.weight0)
            od.lora_A.copy_(a)
            od.lora_B.copy_(b)
        od.split()
        assert torch.allclose(od.merged().weight, lora.merged().weight, atol=1e-12, rtol=0)
        cos_lora.append(_sgd_cosine(lora, g))
        cos_od.append(_sgd_cosine(od, g))
        # OD-LoRA's step is exactly −η s² (Q_B Q_Bᵀ G + G Q_A Q_Aᵀ)
        pg = od.Q_B @ od.Q_B.T @ g + g @ od.Q_A @ od.Q_A.T
        assert abs(cos_od[-1] - float(F.cosine_similarity(pg.reshape(1, -1), g.reshape(1, -1)))) < 1e-8
    print(f"cos(step, -G): lora {cos_lora}, odlora {cos_od}")
    assert all(o > lo + 0.1 for o, lo in zip(cos_od, cos_lora))


def test_tiny_pinn_split_refresh_exact_and_second_derivatives_flow():
    prob, base, model, _, pts = _setup(warmup=5)
    assert torch.allclose(model(pts), base(pts), atol=1e-12, rtol=0)
    _perturb(model)
    out, loss = model(pts).detach(), float(_loss(prob, model, pts).detach())
    for _, lay in adapter_layers(model):
        lay.split()
    assert torch.allclose(model(pts), out, atol=1e-10, rtol=0)
    assert abs(float(_loss(prob, model, pts).detach()) - loss) < 1e-10
    _perturb(model, seed=4)
    out, loss = model(pts).detach(), float(_loss(prob, model, pts).detach())
    for _, lay in adapter_layers(model):
        lay.refresh()
        assert _orthonormal(lay.Q_A) and _orthonormal(lay.Q_B)
    assert torch.allclose(model(pts), out, atol=1e-10, rtol=0)
    assert abs(float(_loss(prob, model, pts).detach()) - loss) < 1e-10
    # residual gradients (through u_xx) match a central difference along a random direction
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(prob, model, pts), params)
    g = torch.Generator().manual_seed(9)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    eps = 1e-5
    vals = []
    for sign in (1, -1):  # the residual itself needs autograd: only the moves are no_grad
        with torch.no_grad():
            for p, d in zip(params, dirs):
                p.add_(sign * eps * d)
        vals.append(float(_loss(prob, model, pts).detach()))
        with torch.no_grad():
            for p, d in zip(params, dirs):
                p.sub_(sign * eps * d)
    fd = (vals[0] - vals[1]) / (2 * eps)
    an = float(sum((gr * d).sum() for gr, d in zip(grads, dirs)))
    assert abs(fd - an) < 1e-6 * max(1.0, abs(an))
    # and a residual step reduces the loss
    dyn = GradientDynamics(params, lr=1e-3, optimizer="sgd")

    def closure():
        for p in params:
            p.grad = None
        loss = _loss(prob, model, pts)
        loss.backward()
        return loss.detach()
    first = float(dyn.step(closure))
    assert float(_loss(prob, model, pts).detach()) < first


@pytest.mark.parametrize("warmup", [0, 5])
def test_merged_equals_unmerged_in_both_modes(warmup):
    _, _, model, _, pts = _setup(warmup=warmup)
    assert all(lay.split_done == (warmup == 0) for _, lay in adapter_layers(model))
    _perturb(model)
    merged = merge_adapters(copy.deepcopy(model))
    assert not list(adapter_layers(merged))
    assert torch.allclose(merged(pts), model(pts), atol=1e-12, rtol=0)
    if warmup:
        for _, lay in adapter_layers(model):
            lay.split()
        _perturb(model, seed=5)
        merged = merge_adapters(copy.deepcopy(model))
        assert torch.allclose(merged(pts), model(pts), atol=1e-12, rtol=0)


def test_warmup_zero_starts_at_base_with_orthonormal_bases():
    _, base, model, _, pts = _setup(warmup=0)
    assert torch.allclose(model(pts), base(pts), atol=1e-12, rtol=0)
    for _, lay in adapter_layers(model):
        assert _orthonormal(lay.Q_A) and _orthonormal(lay.Q_B)


@pytest.mark.parametrize("rank,targets,expected", [
    (2, "all", 2 * (2 + 8) + 2 * (8 + 8) + 1 * (8 + 1)),  # rank clipped to 1 on the 8 -> 1 layer
    (3, [1], 3 * (8 + 8)),
])
def test_trainable_parameter_count(rank, targets, expected):
    _, _, model, _, _ = _setup(rank=rank, targets=targets)
    assert trainable_parameters(model) == expected
    for _, lay in adapter_layers(model):
        lay.split()
    assert trainable_parameters(model) == expected


class _Recorder:
    def __init__(self):
        self.resets = 0

    def reset_state(self):
        self.resets += 1


def test_refresh_schedule_grows():
    _, _, model, method, _ = _setup(warmup=3, refresh_every=2, refresh_growth=2.0)
    events = []
    layers = [lay for _, lay in adapter_layers(model)]
    for lay in layers:
        for name in ("split", "refresh"):
            orig = getattr(lay, name)

            def wrapped(orig=orig, name=name, lay=lay):
                events.append((name, current[0], layers.index(lay)))
                orig()
            setattr(lay, name, wrapped)
    dyn, current = _Recorder(), [0]
    for step in range(40):
        current[0] = step
        method.after_step(step, model, dyn)
    splits = sorted({s for n, s, _ in events if n == "split"})
    refreshes = sorted({s for n, s, _ in events if n == "refresh"})
    assert splits == [2]  # after 3 steps
    assert refreshes == [4, 8, 16, 32]  # 3 + 2, + 4, + 8, + 16 steps completed
    assert len(events) == len(layers) * 5
    assert dyn.resets == 5
    assert method.refresh_steps(100) == [5, 9, 17, 33, 65]
    assert get_method("odlora", refresh_every=0).refresh_steps(10**6) == []
    assert get_method("odlora", warmup=2, refresh_every=3, refresh_growth=1.0).refresh_steps(12) == [5, 8, 11]


@pytest.mark.parametrize("opts", [{"warmup": -1}, {"refresh_every": -2}, {"refresh_growth": 0.5},
                                  {"refresh_growth": "x"}, {"warmup": 1.5}])
def test_bad_options(opts):
    with pytest.raises(MethodOptionError):
        get_method("odlora", **opts)


def test_trainer_run_with_warmup_and_refreshes():
    prob, _, model, method, _ = _setup("burgers", warmup=5, refresh_every=5, refresh_growth=2.0, lr=1e-2)
    dyn = method.dynamics(model)
    refreshes = []
    for _, lay in adapter_layers(model):
        orig = lay.refresh

        def wrapped(orig=orig):
            refreshes.append(1)
            orig()
        lay.refresh = wrapped
    cfg = TrainConfig(steps=30, n_points=64, progress=False, eval_every=10**6)
    hist = Trainer(prob, model, dyn, cfg, after_step=method.after_step).run()
    losses = [r["loss"] for r in hist.records if r["phase"] == "train"]
    print(f"trainer: loss {losses[0]:.4e} -> {losses[-1]:.4e}")
    assert hist.status == "completed"
    assert all(lay.split_done for _, lay in adapter_layers(model))
    assert len(refreshes) == 2 * len(list(adapter_layers(model)))  # after 10 and 20 steps
    assert losses[-1] < 0.5 * losses[0]
