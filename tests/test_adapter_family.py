"""Defining properties of the LoRA-family baselines and the cLA family."""
import math

import pytest
import torch
from tiny import make_closure, setup
from torch import nn
from torch.nn import functional as F

from pinn_lora.model.adapters import adapter_layers
from pinn_lora.model.adapters.dora import DoRALinear
from pinn_lora.model.adapters.selector import SelectorLinear, n_windows, window


def _layer(m=6, n=5, seed=0):
    lin = nn.Linear(n, m).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return lin


def _attach(method_name, problem="burgers", layers=(2, 8, 8, 1), **opts):
    """A tiny adapted PINN with its dynamics and a ``train(steps, start)`` that runs the schedule hooks."""
    prob, base, model, method, pts = setup(problem, method_name, layers, **opts)
    dyn = method.dynamics(model)
    closure = make_closure(prob, model, pts)

    def train(steps, start=0):
        for step in range(start, start + steps):
            dyn.step(closure)
            method.after_step(step, model, dyn)

    train.closure = closure
    return base, model, method, dyn, pts, train


# -- LoRA variants --------------------------------------------------------------------------
def test_rslora_scale_is_alpha_over_sqrt_rank():
    _, model, _, _, _, _ = _attach("rslora", rank=4, alpha=3.0)
    _, lora, _, _, _, _ = _attach("lora", rank=4, alpha=3.0)
    for (_, lay), (_, ref) in zip(adapter_layers(model), adapter_layers(lora)):
        assert lay.scale == pytest.approx(3.0 / 2.0) and ref.scale == pytest.approx(3.0 / 4.0)
        with torch.no_grad():
            lay.lora_B.normal_()
        assert torch.allclose(lay.delta_weight(), 1.5 * lay.lora_B @ lay.lora_A, atol=1e-14)


def test_loraplus_b_learns_lr_ratio_times_faster():
    """Adam's first step moves every element with a nonzero gradient by exactly its lr."""
    _, model, _, dyn, _, train = _attach("loraplus", lr=1e-3, lr_ratio=16.0, schedule="constant")
    lay = model.linears[1]
    b0, a0 = lay.lora_B.detach().clone(), lay.lora_A.detach().clone()
    train(1)
    db = (lay.lora_B.detach() - b0).abs()
    assert db.max() == pytest.approx(16e-3, rel=1e-6) and db.max() <= 16e-3 * (1 + 1e-12)
    assert torch.equal(lay.lora_A.detach(), a0)  # g_A = s·Bᵀ·G = 0 while B = 0
    train(1, start=1)
    da = (lay.lora_A.detach() - a0).abs()
    # A's first nonzero gradient comes at Adam's step 2: bias-corrected m̂/√v̂ = (0.1/0.19)/√(0.001/0.001999)
    assert da.max() == pytest.approx(1e-3 * (0.1 / 0.19) / math.sqrt(0.001 / 0.001999), rel=1e-4)


def test_pissa_starts_from_principal_components():
    _, model, _, _, _, _ = _attach("pissa", layers=(2, 8, 8, 1), rank=3)
    lay = model.linears[1]
    w = lay.weight0 + lay.delta_weight()
    u, sig, vh = torch.linalg.svd(w.detach())
    principal = (u[:, :3] * sig[:3]) @ vh[:3]
    assert torch.allclose(lay.delta_weight().detach(), principal, atol=1e-12)
    assert torch.allclose(lay.weight0, w.detach() - principal, atol=1e-12)  # the frozen residual
    b, a = lay.factors()
    assert torch.allclose(b.T @ b, a @ a.T, atol=1e-12)  # split evenly: √Σ on each side


def test_dora_formula_and_magnitude_start():
    lin = _layer(6, 5)
    lay = DoRALinear(lin, 2, 4.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lay.magnitude, lin.weight.norm(dim=1))
    with torch.no_grad():
        lay.lora_B.normal_()
        lay.magnitude.mul_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    v = lin.weight + 2.0 * lay.lora_B @ lay.lora_A
    expected = lay.magnitude[:, None] * v / v.norm(dim=1, keepdim=True)
    assert torch.allclose(lay.merged().weight, expected, atol=1e-13)
    assert torch.allclose(lay.merged().weight.norm(dim=1), lay.magnitude, atol=1e-13)  # m is the row norm
    x = torch.randn(7, 5, dtype=torch.float64)
    assert torch.allclose(lay(x), x @ expected.T + lin.bias, atol=1e-13)


def test_asymlora_keeps_a_fixed():
    _, model, _, _, _, train = _attach("asymlora", lr=1e-2)
    a0 = [lay.lora_A.clone() for _, lay in adapter_layers(model)]
    train(5)
    for (_, lay), a in zip(adapter_layers(model), a0):
        assert not isinstance(lay.lora_A, nn.Parameter) and torch.equal(lay.lora_A, a)
        assert lay.lora_B.abs().sum() > 0


@pytest.mark.parametrize("method", ["cola", "rac"])
def test_chain_step_merges_restarts_and_resets_the_optimiser(method):
    _, model, meth, dyn, pts, train = _attach(method, lr=1e-2, chain_every=4)
    train(3)
    a_before = [lay.lora_A.detach().clone() for _, lay in adapter_layers(model)]
    dyn.step(train.closure)  # step 3; the chain step follows it
    assert dyn.optimizer.state
    with torch.no_grad():
        out = model(pts)
    meth.after_step(3, model, dyn)
    with torch.no_grad():
        assert torch.allclose(model(pts), out, atol=1e-13, rtol=0)
    for (_, lay), a in zip(adapter_layers(model), a_before):
        assert torch.count_nonzero(lay.lora_B) == 0
        assert not torch.allclose(lay.lora_A, a)  # a fresh A
    moments = [v for st in dyn.optimizer.state.values() for v in st.values()]
    assert moments and all(float(v.abs().max()) == 0 for v in moments)  # reset: zeroed in place (a fresh state)
    meth.after_step(4, model, dyn)  # not a multiple of chain_every: nothing happens
    assert all(torch.count_nonzero(lay.lora_B) == 0 for _, lay in adapter_layers(model))


# -- cLA family -------------------------------------------------------------------------------
def test_selector_is_a_gather_equal_to_the_dense_formula():
    lin = _layer(6, 9)
    lay = SelectorLinear(lin, 3, 0.5, torch.tensor([1, 4, 7]))
    with torch.no_grad():
        lay.lora_B.normal_()
    x = torch.randn(11, 9, dtype=torch.float64, requires_grad=True)
    a = lay.selector()
    assert torch.equal(a.sum(1), torch.ones(3)) and torch.equal(a.sum(0)[[1, 4, 7]], torch.ones(3))
    dense = F.linear(x, lin.weight, lin.bias) + 0.5 * x @ a.T @ lay.lora_B.T
    out = lay(x)
    assert torch.allclose(out, dense, atol=1e-13)
    assert torch.allclose(lay.merged().weight, lin.weight + 0.5 * lay.lora_B @ a, atol=1e-13)
    # a gather, not a matmul with A: the adapter's graph selects columns
    names = set()
    stack = [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and type(fn).__name__ not in names:
            names.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
    assert "IndexSelectBackward0" in names
    assert sum(p.numel() for p in lay.parameters()) == 6 * 3


@pytest.mark.parametrize("method", ["cla", "rcla"])
def test_fixed_selector_never_changes(method):
    _, model, _, _, _, train = _attach(method, layers=(2, 16, 16, 1), lr=1e-2, rank=3)
    cols = [lay.cols.clone() for _, lay in adapter_layers(model)]
    if method == "cla":
        assert [c.tolist() for c in cols] == [[0, 1], [0, 1, 2], [0, 1, 2]]
    train(6)
    for (_, lay), c in zip(adapter_layers(model), cols):
        assert torch.equal(lay.cols, c)
        assert lay.lora_B.abs().sum() > 0


def test_random_cla_columns_depend_on_the_seed_only():
    _, m1, _, _, _, _ = _attach("rcla", layers=(2, 32, 32, 1), rank=4)
    _, m2, _, _, _, _ = _attach("rcla", layers=(2, 32, 32, 1), rank=4)
    c1 = [lay.cols.tolist() for _, lay in adapter_layers(m1)]
    assert c1 == [lay.cols.tolist() for _, lay in adapter_layers(m2)]
    assert c1[1] != [0, 1, 2, 3] and len(set(c1[1])) == 4


def test_window_sequence_wraps_around():
    assert [window(k, 3, 8).tolist() for k in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 0], [1, 2, 3]]
    assert n_windows(3, 8) == 3 and n_windows(4, 8) == 2


@pytest.mark.parametrize("method", ["c3la", "rc3la"])
def test_c3la_chain_step_keeps_the_output_and_zeroes_b(method):
    _, model, meth, dyn, pts, train = _attach(method, layers=(2, 12, 12, 1), lr=1e-2, rank=4, chain_every=3)
    train(2)
    dyn.step(train.closure)
    with torch.no_grad():
        out = model(pts)
    cols = [lay.cols.clone() for _, lay in adapter_layers(model)]
    meth.after_step(2, model, dyn)
    with torch.no_grad():
        assert torch.allclose(model(pts), out, atol=1e-13, rtol=0)
    hidden = model.linears[1]
    assert torch.count_nonzero(hidden.lora_B) == 0
    assert all(float(v.abs().max()) == 0 for st in dyn.optimizer.state.values() for v in st.values())  # reset
    assert not torch.equal(hidden.cols, cols[1])


def test_c3la_shifts_by_rank_with_wrap():
    _, model, meth, dyn, _, train = _attach("c3la", layers=(2, 10, 10, 1), rank=4, chain_every=1, lr=1e-3)
    seen = []
    for step in range(4):
        seen.append(model.linears[1].cols.tolist())
        train(1, start=step)
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]


def test_random_c3la_visits_each_window_once_per_cycle():
    n, r = 12, 3  # 4 windows
    _, model, _, _, _, train = _attach("rc3la", layers=(2, n, n, 1), rank=r, chain_every=1, lr=1e-3)
    starts = []
    for step in range(3 * 4):
        starts.append(int(model.linears[1].cols[0]))
        train(1, start=step)
    cycles = [starts[i:i + 4] for i in range(0, 12, 4)]
    assert all(sorted(c) == [0, 3, 6, 9] for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # a new random order each cycle (fixed seed: deterministic)


def test_paca_trains_columns_of_w0_and_equals_random_cla_with_unit_scale():
    """PaCA trains W0's columns directly; under Adam that is random cLA with s = 1 on the same columns."""
    _, paca, _, _, pts, train_p = _attach("paca", layers=(2, 8, 8, 1), rank=3, lr=1e-2)
    _, rcla, _, _, _, train_c = _attach("rcla", layers=(2, 8, 8, 1), rank=3, alpha=3.0, lr=1e-2)
    for (_, p), (_, c) in zip(adapter_layers(paca), adapter_layers(rcla)):
        assert torch.equal(p.cols, c.cols)
        assert torch.count_nonzero(p.weight0[:, p.cols]) == 0  # the trained columns left the frozen weight
    train_p(5)
    train_c(5)
    with torch.no_grad():
        assert torch.allclose(paca(pts), rcla(pts), atol=1e-10, rtol=0)
    assert math.isclose(sum(p.numel() for p in paca.parameters() if p.requires_grad),
                        sum(p.numel() for p in rcla.parameters() if p.requires_grad))
