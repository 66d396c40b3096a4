"""ODELoRA's defining properties: the field moves W by the tangent projection
of the full gradient, and the rebalance restores BᵀB = AAᵀ without moving W."""
import math
import pytest
import torch

from pinn_lora.methods.dynamics.odelora import balanced_factors, odelora_field, rebalance, tangent_projection
from pinn_lora.methods.dynamics.runge_kutta import TABLEAUS, ButcherTableau, rk_step


def _balanced(m, n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    sig = torch.linspace(0.5, 2.0, r, dtype=torch.float64)
    return u * sig.sqrt(), sig.sqrt()[:, None] * v.T


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_field_is_projected_gradient_flow(scale):
    m, n, r = 12, 9, 3
    b, a = _balanced(m, n, r)
    g = torch.randn(m, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_b, g_a = scale * g @ a.T, scale * b.T @ g  # what autograd gives for W = W0 + s B A
    db, da = odelora_field(b, a, g_b, g_a, scale, damping=0.0)
    dw = scale * (db @ a + b @ da)
    target = -tangent_projection(g, b, a)
    assert torch.linalg.norm(dw - target) / torch.linalg.norm(target) < 1e-10
    # and it is not the unprojected gradient (the check has teeth)
    assert torch.linalg.norm(dw + g) / torch.linalg.norm(g) > 0.1


def test_field_from_autograd_matches_formula():
    """Feed the field with real autograd factor gradients of a loss of W."""
    m, n, r, s = 7, 5, 2, 0.5
    b, a = _balanced(m, n, r, seed=3)
    w0 = torch.randn(m, n, dtype=torch.float64)
    x = torch.randn(20, n, dtype=torch.float64)
    bb, aa = b.clone().requires_grad_(True), a.clone().requires_grad_(True)
    loss = ((x @ (w0 + s * bb @ aa).T).tanh() ** 2).sum()
    loss.backward()
    w = (w0 + s * b @ a).requires_grad_(True)
    (g,) = torch.autograd.grad(((x @ w.T).tanh() ** 2).sum(), w)
    db, da = odelora_field(b, a, bb.grad, aa.grad, s, damping=0.0)
    assert torch.allclose(s * (db @ a + b @ da), -tangent_projection(g, b, a), atol=1e-10, rtol=0)


def test_rebalance_after_step():
    m, n, r = 10, 8, 3
    b, a = _balanced(m, n, r, seed=2)
    g = torch.randn(m, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    db, da = odelora_field(b, a, g @ a.T, b.T @ g, 1.0, damping=0.0)
    b1, a1 = b + 0.3 * db, a + 0.3 * da  # an Euler step leaves the balanced manifold
    assert torch.linalg.norm(b1.T @ b1 - a1 @ a1.T) > 1e-3
    b2, a2 = rebalance(b1, a1)
    assert torch.allclose(b2.T @ b2, a2 @ a2.T, atol=1e-10, rtol=0)
    assert torch.allclose(b2 @ a2, b1 @ a1, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", ["gradient", "random", "pissa"])
def test_initialisations_are_balanced(kind):
    w0 = torch.randn(6, 5, dtype=torch.float64)
    grad = torch.randn(6, 5, dtype=torch.float64)
    b, a = balanced_factors(kind, w0, grad, 3, 0.5, 0.1, torch.Generator().manual_seed(0))
    assert torch.allclose(b.T @ b, a @ a.T, atol=1e-12, rtol=0)
    assert torch.linalg.matrix_rank(b @ a) == 3
    if kind != "pissa":
        assert abs(torch.linalg.norm(0.5 * b @ a) / torch.linalg.norm(w0) - 0.1) < 1e-12


def test_tableaus_validate_themselves():
    with pytest.raises(ValueError, match="sum"):
        ButcherTableau("bad", 1, (0.0, 0.5), ((), (0.4,)), (0.5, 0.5))
    with pytest.raises(ValueError, match="weights"):
        ButcherTableau("bad", 1, (0.0,), ((),), (0.9,))


def _pendulum_order(tab):
    """Observed orders (log2 of successive error ratios) of ``tab`` on the pendulum y'' = -sin y,
    y(0) = 1, y'(0) = 0, over t in [0, 2] at h = 1/8, 1/16, 1/32. (The scalar y' = -y·cos(y) used
    before is too easy for dopri5: its leading error term nearly cancels there, so h = 1/8..1/32
    is not yet asymptotic.)"""
    def f(y):
        return [y[1], -torch.sin(y[0])]

    def solve(h, t_end=2.0):
        y = [torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)]
        for _ in range(round(t_end / h)):
            y, _ = rk_step(y, f, h, tab)
        return torch.cat(y)

    exact = solve_reference()
    hs = [1 / 8, 1 / 16, 1 / 32]
    errs = [float(torch.linalg.norm(solve(h) - exact)) for h in hs]
    return [torch.log2(torch.tensor(errs[i] / errs[i + 1], dtype=torch.float64)).item() for i in range(len(hs) - 1)]


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_tableau_order(name):
    """Fit the slope of log-error vs log-step and compare with the declared order."""
    tab = TABLEAUS[name]
    slopes = _pendulum_order(tab)
    assert all(abs(s - tab.order) < 0.3 for s in slopes), (name, slopes)


@pytest.mark.parametrize("name", [n for n, t in sorted(TABLEAUS.items()) if t.adaptive])
def test_embedded_solution_order(name):
    """The embedded weights b̂ = b - b_err of a pair form a method of order embedded_order."""
    tab = TABLEAUS[name]
    b_hat = tuple(b - e for b, e in zip(tab.b, tab.b_err))
    slopes = _pendulum_order(ButcherTableau(f"{name}-embedded", tab.embedded_order, tab.c, tab.a, b_hat))
    assert all(abs(s - tab.embedded_order) < 0.3 for s in slopes), (name, slopes)


def solve_reference():
    import numpy as np
    from scipy.integrate import solve_ivp

    sol = solve_ivp(lambda t, y: [y[1], -np.sin(y[0])], (0, 2), [1.0, 0.0], rtol=1e-13, atol=1e-14,
                    method="DOP853")
    return torch.tensor(sol.y[:, -1], dtype=torch.float64)


def test_top_hessian_eigenvalue_of_a_quadratic():
    from pinn_lora.model.curvature import top_hessian_eigenvalue

    q = torch.diag(torch.tensor([-50.0, 3.0, 7.0, 0.5], dtype=torch.float64))
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    lam = top_hessian_eigenvalue(lambda: 0.5 * x @ q @ x, [x], iters=500, tol=1e-10)
    assert abs(lam - 7.0) < 1e-3  # the largest algebraic eigenvalue, not the dominant -50


@pytest.mark.integration  # 16 RK4 steps of the shipped Allen–Cahn base on 500 points (about a minute)
def test_rmsprop_metric_floor_keeps_rk4_stable():
    """With the metric taken from one gradient, entries whose gradient was ~0 get metric ~eps and
    a later RK stage divides a non-zero gradient by it: RK4 blew up in its first steps on
    Allen–Cahn (loss 0.52 -> diverged). The floor (0.1 x the layer's RMS of sqrt(v)) keeps it
    decreasing; Euler, which only uses the first stage, is stable either way."""
    import pinn_lora
    from pinn_lora.training.trainer import residual_loss

    prob = pinn_lora.get_problem("allen_cahn").default_target()
    x = torch.as_tensor(prob.sample(500, seed=0))

    def losses(**opts):
        method = pinn_lora.get_method("odelora", scheme="rk4", lr=1e-3, precondition="rmsprop", **opts)
        model = pinn_lora.attach(pinn_lora.load_base("allen_cahn")[0], method, prob)
        dyn, params = method.dynamics(model), [p for p in model.parameters() if p.requires_grad]

        def closure():
            for p in params:
                p.grad = None
            loss = residual_loss(prob, model, x)
            loss.backward()
            return loss.detach()

        out = [float(dyn.step(closure)) for _ in range(8)]
        return out, "completed" if all(math.isfinite(v) and v < 1e6 for v in out) else "diverged"

    floored, status = losses()
    assert status == "completed" and floored[-1] < 0.5 * floored[0]
    bare, status = losses(metric_floor=0.0)
    assert status == "diverged" or max(bare) > 2 * bare[0]
    with pytest.raises(ValueError, match="metric_floor"):
        pinn_lora.get_method("odelora", metric_floor=-1.0)


def test_sync_free_rebalance_follows_the_same_weights_and_stays_balanced():
    """The matrix-product rebalance (what CUDA graphs can hold, issue 17): over 100 ODELoRA steps on a
    tiny PINN, W after every step equals the QR/SVD rebalance's to 1e-10 and ‖BᵀB − AAᵀ‖/‖BᵀB‖ <= 1e-10."""
    import copy

    from pinn_lora.model.adapters import adapter_layers
    from pinn_lora.methods.dynamics.odelora import rebalance_sync_free

    from tiny import make_closure, setup

    prob, _, model, meth, pts = setup("burgers", "odelora")
    twin = copy.deepcopy(model)
    runs = []
    for m in (model, twin):
        dyn = meth.dynamics(m)
        runs.append((m, dyn, make_closure(prob, m, pts)))
    runs[1][1].sync_free = True
    worst_w = worst_balance = 0.0
    for _ in range(100):
        for m, dyn, closure in runs:
            dyn.step(closure)
        for (_, la), (_, lb) in zip(adapter_layers(runs[0][0]), adapter_layers(runs[1][0])):
            wa, wb = la.weight().detach(), lb.weight().detach()
            worst_w = max(worst_w, float((wa - wb).abs().max() / wa.abs().max()))
            b, a = (t.detach() for t in lb.factors())
            bb = b.T @ b
            worst_balance = max(worst_balance, float(torch.linalg.norm(bb - a @ a.T) / torch.linalg.norm(bb)))
    assert worst_w <= 1e-10 and worst_balance <= 1e-10, (worst_w, worst_balance)
    rotated = max(float((la.factors()[0] - lb.factors()[0]).abs().max())
                  for (_, la), (_, lb) in zip(adapter_layers(runs[0][0]), adapter_layers(runs[1][0])))
    assert rotated > 1e-6  # the two rebalances ran: their factors differ by an r×r rotation, the weights do not
    # and the factors it gives are balanced with the same product for an unbalanced pair (the check has teeth)
    b, a = _balanced(10, 8, 3, seed=4)
    b1, a1 = b @ torch.diag(torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)), \
        torch.diag(torch.tensor([1 / 3.0, 2.0, 1.0], dtype=torch.float64)) @ a
    assert torch.linalg.norm(b1.T @ b1 - a1 @ a1.T) > 1e-1
    b2, a2 = rebalance_sync_free(b1, a1)
    assert torch.allclose(b2.T @ b2, a2 @ a2.T, atol=1e-12, rtol=0) and torch.allclose(b2 @ a2, b1 @ a1, atol=1e-12)
