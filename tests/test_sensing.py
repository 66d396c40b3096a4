"""Matrix sensing (pinn_lora.methods.sensing) as a testbed for the factor dynamics: ODELoRA's linear
convergence, its stability where Riemannian-preconditioned LoRA (ScaledGD) diverges, RK4's order
on the ODELoRA flow, the adaptive embedded pairs, and the Riemannian preconditioner's formula."""
import math

import pytest
import torch
from tiny import make_closure, setup

from pinn_lora.model.adapters import adapter_layers
from pinn_lora.model.adapters.lora import LoRALinear
from pinn_lora.methods.dynamics.riemannian import RiemannianDynamics, preconditioned_gradients
from pinn_lora.methods.dynamics.runge_kutta import TABLEAUS
from pinn_lora.methods import MethodOptionError, ODELoRA, Riemannian
from pinn_lora.core.registry import get_problem
from pinn_lora.methods.sensing import MatrixSensing, linear_rates, log_loss_slope, main, train


@pytest.fixture(scope="module")
def sensing20():
    """The 20×20 rank-3 problem of shared/methods.md, N = 2·m·n = 800 Gaussian measurements."""
    return MatrixSensing.random(20, 20, 3, seed=0)


@pytest.fixture(scope="module")
def odelora09(sensing20):
    """ODELoRA runs at h = 0.9 (until the loss reaches 1e-28), shared by two tests."""
    return {s: train(sensing20, "odelora", 0.9, steps=200, scheme=s, floor=1e-28) for s in ("euler", "rk4")}


@pytest.mark.parametrize("scheme", ["euler", "rk4"])
def test_odelora_converges_linearly(odelora09, scheme):
    """log(loss) is a straight line in the iteration count between the escape from the small
    start (loss < 1e-2 × initial) and the rounding floor (1e-20)."""
    run = odelora09[scheme]
    slope, r2, (lo, hi) = log_loss_slope(run.losses, floor=1e-20)
    print(f"{scheme}: slope {slope:.4f}, R^2 {r2:.5f} over iterations {lo}..{hi}")
    assert hi - lo >= 30  # the fit spans a long phase
    assert slope < -0.1 and r2 >= 0.98
    assert run.losses[-1] < 1e-20 and not run.diverged


def test_riemannian_sgd_diverges_where_odelora_converges(sensing20, odelora09):
    """h = 0.9 on 20×20, rank 3 (the case measured in shared/methods.md). With the loss ½·mean of
    squared residuals the measurement operator H ≈ I, so h is a full-GD step; at X* ScaledGD's
    linearised step I − h·M·H (M = 2 on the core block P_U·P_V) has spectral radius > 1 while
    ODELoRA-Euler's I − h·P_T H P_T contracts; training shows the same."""
    rates = linear_rates(sensing20, 0.9)
    print(rates)
    assert rates["riemannian-sgd"] > 1.2 and rates["odelora-euler"] < 0.8
    riem = train(sensing20, "riemannian", 0.9, steps=200, optimizer="sgd")
    print(f"riemannian-sgd: {len(riem.losses)} losses, last {riem.losses[-1]:.3e}, initial {riem.losses[0]:.3e}")
    assert riem.diverged and (not math.isfinite(riem.losses[-1]) or riem.losses[-1] > 1e6 * riem.losses[0])
    for scheme, ode in odelora09.items():
        print(f"odelora-{scheme}: final loss {ode.losses[-1]:.3e}")
        assert not ode.diverged and ode.losses[-1] < 1e-20
    # the same instability from right next to X*: not an artefact of the small start
    assert linear_rates(sensing20, 0.5)["riemannian-sgd"] < 1  # and ScaledGD is fine at a smaller step
    assert not train(sensing20, "riemannian", 0.5, steps=60, optimizer="sgd").diverged


def test_rk4_tracks_the_flow_with_order_four():
    """RK4 at h and h/2 against RK4 at h/20 over t ∈ [0, 2]; the products X = B·A are compared
    (gauge invariant; the rebalance after each step does not move them)."""
    prob = MatrixSensing.random(10, 8, 2, seed=0)

    def x_at(h):
        run = train(prob, "odelora", h, steps=round(2.0 / h), scheme="rk4", init_scale=0.1)
        return (run.layer.weight0 + run.layer.delta_weight()).detach()

    h = 0.25
    ref = x_at(h / 20)
    e1, e2 = torch.linalg.norm(x_at(h) - ref).item(), torch.linalg.norm(x_at(h / 2) - ref).item()
    order = math.log2(e1 / e2)
    print(f"errors {e1:.3e} (h={h}), {e2:.3e} (h={h / 2}); observed order {order:.3f}")
    assert 3.5 < order < 4.6


@pytest.mark.parametrize("scheme", ["bs23", "dopri5"])
def test_adaptive_step_grows_from_a_tiny_step(sensing20, scheme):
    """From h = 1e-3 the accepted step grows over the steps (the landscape allows it); each step
    costs 1 + (stages − 1)·attempts closure calls (the first stage is shared by the retries)."""
    run = train(sensing20, "odelora", 1e-3, steps=30, scheme=scheme, h_max=2.0)
    dyn = run.dynamics
    print(f"{scheme}: h {run.steps[0]:.3g} -> {run.steps[-1]:.3g}; accepted {dyn.accepted}, rejected "
          f"{dyn.rejected}, evaluations {dyn.field_evaluations}")
    assert run.steps[0] == pytest.approx(1e-3) and run.steps[-1] > 10 * run.steps[0]
    assert run.steps[-1] > run.steps[len(run.steps) // 2] > run.steps[0]
    s = TABLEAUS[scheme].stages
    assert dyn.accepted == 30 and dyn.forced == 0
    assert dyn.field_evaluations == 30 + (s - 1) * (dyn.accepted + dyn.rejected)
    assert run.evaluations[-1] == dyn.field_evaluations  # the closure is called once per evaluation
    assert run.losses[-1] < 1e-2 * run.losses[0]


def test_adaptive_step_shrinks_after_rejections(sensing20):
    """From a huge h the first attempts are rejected and the accepted step is far smaller."""
    run = train(sensing20, "odelora", 50.0, steps=5, scheme="dopri5", h_max=50.0)
    dyn = run.dynamics
    print(f"dopri5 from h=50: accepted h {run.steps}, rejected {dyn.rejected}")
    assert dyn.rejected >= 3 and dyn.forced == 0
    assert run.steps[0] < 0.1 * 50.0
    assert dyn.field_evaluations == 5 + 6 * (5 + dyn.rejected) == run.evaluations[-1]
    assert not run.diverged and run.losses[-1] < run.losses[0]


def test_adaptive_options_are_checked():
    lay = _pinn_layer()
    from pinn_lora.methods.dynamics.odelora import ODELoRADynamics

    with pytest.raises(ValueError, match="schedule=constant"):
        ODELoRADynamics([lay], lr=0.1, scheme="bs23", schedule="cosine")
    with pytest.raises(ValueError, match="h_max"):
        ODELoRADynamics([lay], lr=0.1, scheme="dopri5", h_max=0.01)
    with pytest.raises(MethodOptionError, match="rtol"):
        ODELoRA(rtol=-1.0)


def _pinn_layer():
    base = torch.nn.Linear(5, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    return LoRALinear(base, 2, 2.0, factors=(torch.randn(4, 2, generator=g, dtype=torch.float64),
                                             torch.randn(2, 5, generator=g, dtype=torch.float64)))


def _tiny(method_cls, problem="helmholtz", **opts):
    """A tiny adapted PINN, its collocation points, a closure and its call log."""
    prob, base, model, method, pts = setup(problem, method_cls, **opts)
    calls = []
    return base, model, method, pts, make_closure(prob, model, pts, calls), calls


@pytest.mark.parametrize("scheme", ["bs23", "dopri5"])
def test_adaptive_odelora_step_on_a_pinn(scheme):
    """One adaptive step on Helmholtz: the loss changes, BᵀB = AAᵀ after the rebalance, and the
    closure calls equal the reported field evaluations."""
    _, model, meth, _, closure, calls = _tiny(ODELoRA, scheme=scheme, lr=0.1)
    dyn = meth.dynamics(model)
    before = float(dyn.step(closure))
    n_step = len(calls)
    after = float(closure())
    assert after < before
    assert n_step == dyn.field_evaluations == 1 + (TABLEAUS[scheme].stages - 1) * (1 + dyn.rejected)
    assert dyn.lr <= 0.1 and (dyn.rejected > 0 or dyn.lr == 0.1)  # the accepted step: lr unless rejected
    for _, lay in adapter_layers(model):
        b, a = lay.factors()
        assert torch.allclose(b.T @ b, a @ a.T, atol=1e-10, rtol=0)


def test_trainer_reports_adaptive_steps_and_evaluations():
    """Through the Trainer: each record's lr is the dynamics' lr read before the step (for an
    embedded pair, the step accepted by the previous step), and ``evaluations`` counts every
    closure call, retries included (+1 for the Trainer's final check)."""
    from pinn_lora.training.trainer import TrainConfig, Trainer

    _, model, meth, _, _, _ = _tiny(ODELoRA, scheme="dopri5", lr=0.05)
    prob = get_problem("helmholtz").default_target()
    dyn = meth.dynamics(model)
    hist = Trainer(prob, model, dyn, TrainConfig(steps=3, n_points=64, eval_every=10, progress=False)).run()
    train_recs = [r for r in hist.records if r["phase"] == "train"]
    assert len(train_recs) == 3 and train_recs[0]["lr"] == 0.05
    assert hist.evaluations == dyn.field_evaluations + 1 == 3 + 6 * (3 + dyn.rejected) + 1
    assert train_recs[-1]["evaluations"] == dyn.field_evaluations


def test_riemannian_preconditioned_gradients_formula():
    """precondition() replaces (g_B, g_A) by g_B (AAᵀ + λI)⁻¹ and (BᵀB + λI)⁻¹ g_A."""
    lay = _pinn_layer()
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (lay(x).sin() ** 2).sum().backward()
    b, a = (t.detach().clone() for t in lay.factors())
    g_b, g_a = lay.lora_B.grad.clone(), lay.lora_A.grad.clone()
    lam = 0.3
    dyn = RiemannianDynamics([lay], lr=0.1, optimizer="sgd", damping=lam)
    dyn.precondition()
    eye = torch.eye(2, dtype=torch.float64)
    assert torch.allclose(lay.lora_B.grad, g_b @ torch.linalg.inv(a @ a.T + lam * eye), atol=1e-10, rtol=0)
    assert torch.allclose(lay.lora_A.grad, torch.linalg.inv(b.T @ b + lam * eye) @ g_a, atol=1e-10, rtol=0)
    # and it has teeth: the preconditioned gradients are not the raw ones
    assert torch.linalg.norm(lay.lora_B.grad - g_b) > 0.1 * torch.linalg.norm(g_b)
    pb, pa = preconditioned_gradients(b, a, g_b, g_a, lam)
    assert torch.equal(pb, lay.lora_B.grad) and torch.equal(pa, lay.lora_A.grad)


def test_riemannian_sgd_step_moves_w_by_scaled_projections():
    """One SGD step of size h moves W by −h·s²·(P_B G + G P_A) + O(h²) (λ → 0): the block
    P_B G P_A counts twice, unlike ODELoRA's −h·P_T(G)."""
    from pinn_lora.methods.dynamics.odelora import tangent_projection

    lay = _pinn_layer()
    s = lay.scale
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w0 = (lay.weight0 + lay.delta_weight()).detach()
    w = w0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((torch.nn.functional.linear(x, w, lay.bias0).sin() ** 2).sum(), w)
    b, a = (t.detach().clone() for t in lay.factors())
    pb = b @ torch.linalg.solve(b.T @ b, b.T)
    pa = a.T @ torch.linalg.solve(a @ a.T, a)
    h = 1e-6
    dyn = RiemannianDynamics([lay], lr=h, optimizer="sgd", damping=1e-14)

    def closure():
        for p in lay.parameters():
            p.grad = None
        loss = (lay(x).sin() ** 2).sum()
        loss.backward()
        return loss.detach()

    dyn.step(closure)
    dw = (lay.weight0 + lay.delta_weight()).detach() - w0
    expect = -h * s**2 * (pb @ g + g @ pa)
    assert torch.linalg.norm(dw - expect) <= 1e-4 * torch.linalg.norm(expect)
    projected = -h * s**2 * tangent_projection(g, b, a)
    assert torch.linalg.norm(dw - projected) > 0.05 * torch.linalg.norm(expect)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_riemannian_method_on_a_pinn(optimizer):
    """The Riemannian method starts at the base network, and a few steps reduce the residual loss
    (through second derivatives); bad options are clear."""
    base, model, meth, pts, closure, _ = _tiny(Riemannian, optimizer=optimizer,
                                               lr=3e-3 if optimizer == "adam" else 1e-3)
    assert torch.allclose(model(pts), base(pts), atol=1e-12, rtol=0)
    dyn = meth.dynamics(model)
    assert isinstance(dyn, RiemannianDynamics)
    before = float(closure())
    for _ in range(3):
        dyn.step(closure)
    assert float(closure()) < before
    with pytest.raises(MethodOptionError, match="optimizer='rmsprop'"):
        Riemannian(optimizer="rmsprop")
    with pytest.raises(MethodOptionError, match="damping=0"):
        Riemannian(damping=0.0)


def test_demo_prints_a_table_and_plots(tmp_path, capsys):
    path = tmp_path / "loss.png"
    main(["--m", "8", "--n", "6", "--rank", "2", "--h", "0.5", "--steps", "40", "--scheme", "bs23",
          "--plot", str(path)])
    out = capsys.readouterr().out
    assert "odelora-bs23" in out and "riemannian-sgd" in out and "riemannian-adam" in out
    assert path.stat().st_size > 1000


def test_step_controller_rule():
    """Error norm = RMS of err/(atol + rtol·max(|y0|, |y1|)); factor = clamp(safety·e^(−1/(q+1)))."""
    from pinn_lora.methods.dynamics.runge_kutta import StepController, adaptive_step, error_norm

    z = torch.zeros(2, dtype=torch.float64)
    err = [torch.tensor([3.0, 4.0], dtype=torch.float64)]
    assert error_norm(err, [z], [z], rtol=0.0, atol=2.0) == pytest.approx(math.sqrt((1.5**2 + 2**2) / 2), rel=1e-14)
    y1 = [torch.tensor([-10.0, 0.0], dtype=torch.float64)]
    assert error_norm(err, [z], y1, rtol=0.1, atol=1.0) == pytest.approx(math.sqrt((1.5**2 + 4**2) / 2), rel=1e-14)
    assert error_norm([torch.tensor([math.nan])], [z[:1]], [z[:1]], 1e-3, 1e-6) == math.inf
    c = StepController(safety=0.9, min_factor=0.2, max_factor=5.0)
    assert c.factor(0.5, 4, accepted=True) == pytest.approx(0.9 * 0.5 ** -0.2)
    assert c.factor(0.0, 4, accepted=True) == 5.0 and c.factor(1e-30, 2, accepted=False) == 1.0
    assert c.factor(4.0, 2, accepted=False) == pytest.approx(0.9 * 4 ** (-1 / 3))
    assert c.factor(math.inf, 2, accepted=False) == 0.2
    # with no retries allowed, a too-large step is taken anyway and reported as forced
    def f(y):
        return [-50.0 * y[0]]

    res = adaptive_step([torch.ones(1, dtype=torch.float64)], f, 1.0, TABLEAUS["bs23"],
                        StepController(max_rejections=0))
    assert res.forced and res.rejected == 0 and res.evaluations == 4 and res.h_next == pytest.approx(0.2)


def test_plain_lora_baseline_on_sensing():
    """The plain-LoRA baseline of the demo: gradient descent on the factors' own gradients converges at a
    moderate step and makes one gradient evaluation per step."""
    from pinn_lora.methods.sensing import MatrixSensing, train

    prob = MatrixSensing.random(20, 20, 3, seed=0)
    run = train(prob, "lora", 0.3, 300, optimizer="sgd", floor=1e-20)
    assert not run.diverged and run.losses[-1] < 1e-20
    assert run.evaluations[-1] == len(run.losses) - 1
