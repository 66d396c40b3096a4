"""Problems: coefficient validation, resonances, sampling, hard constraints,
residuals against exact solutions, and the derivative provider."""
import math

import numpy as np
import pytest
import torch

from pinn_lora.model.derivatives import Derivatives
from pinn_lora.pde.problem import CoefficientError
from pinn_lora.core.registry import PROBLEMS, UnknownNameError, get_problem
from pinn_lora.problems.helmholtz import nearest_resonance
from ours import OUR_PROBLEMS


@pytest.mark.parametrize("name,kwargs,match", [
    ("burgers", {"nu": 0.0}, r"nu=0.0 is out of range \(allowed: 0.00031831 <= nu <= 100: the range in which"),
    ("burgers", {"nu": -1}, "nu=-1 is out of range"),
    ("burgers", {"nu": float("nan")}, "nu=nan is out of range"),
    ("burgers", {"nu": float("inf")}, "nu=inf is out of range"),
    ("burgers", {"nu": "abc"}, "nu='abc' is not a number"),
    ("burgers", {"viscosity": 0.1}, "unknown coefficient viscosity; the coefficients are: nu"),
    ("allen_cahn", {"gamma": 0}, "gamma=0 is out of range"),
    ("allen_cahn", {"d": -1e-3}, "d=-0.001 is out of range"),
    ("helmholtz", {"k": -1}, r"allowed: 0 <= k"),
    ("helmholtz", {"k": 8.0}, r"k=8 is within 5% of the resonance k²=π²\(1²\+5²\)/4"),
    ("helmholtz", {"k": math.pi / math.sqrt(2)}, r"resonance k²=π²\(1²\+1²\)/4"),
])
def test_bad_coefficients(name, kwargs, match):
    with pytest.raises(CoefficientError, match=match):
        get_problem(name, **kwargs)


def test_unknown_problem_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid problems: ") as info:
        get_problem("burger")
    listed = str(info.value).split("valid problems: ")[1].split(", ")
    assert set(OUR_PROBLEMS) <= {name.strip(" .)") for name in listed}, listed


def test_resonance_search_finds_any_mode_pair():
    mu, m, n = nearest_resonance(8.0)
    assert (m, n) == (1, 5) and abs(8 - math.sqrt(mu)) / math.sqrt(mu) < 0.002
    for k in (0.0, 1.0, 2.5, 3.0, 5.5):  # the source, default target and others away from resonances
        get_problem("helmholtz", k=k)


def test_defaults_and_targets():
    assert get_problem("burgers").nu == pytest.approx(0.01 / math.pi)
    assert get_problem("burgers").default_target().nu == pytest.approx(0.02 / math.pi)
    ac = get_problem("allen_cahn").default_target()
    assert (ac.d, ac.gamma) == (1e-3, 3.0)
    h = get_problem("helmholtz").default_target()
    assert h.mode_weights() == pytest.approx([1.7450, 1.1983], abs=1e-4)


@pytest.mark.parametrize("name", OUR_PROBLEMS)
@pytest.mark.parametrize("sampler", ["pseudo", "Hammersley", "Sobol"])
def test_sampling_in_domain_and_resampled(name, sampler):
    p = get_problem(name)
    a, b = p.sample(500, seed=1, sampler=sampler), p.sample(500, seed=2, sampler=sampler)
    assert a.shape == (500, 2) and a.dtype == np.float64
    assert np.all(a >= np.array(p.lower)) and np.all(a <= np.array(p.upper))
    assert not np.allclose(a, b)  # resampling gives new points
    assert np.array_equal(a, p.sample(500, seed=1, sampler=sampler))  # and is reproducible


@pytest.mark.parametrize("name", ["burgers", "allen_cahn", "helmholtz"])  # each family's own data, written below
def test_hard_constraints_hold(name):
    p = get_problem(name)
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
    t = torch.rand(11, 1, dtype=torch.float64)
    junk = torch.randn(11, 1, dtype=torch.float64)
    if name == "helmholtz":
        for pts in (torch.cat([x, torch.ones_like(x)], 1), torch.cat([-torch.ones_like(x), t], 1)):
            assert torch.allclose(p.output_transform(pts, junk), torch.zeros_like(junk), atol=1e-15)
        return
    u0 = p.output_transform(torch.cat([x, torch.zeros_like(x)], 1), junk)
    expect = -torch.sin(math.pi * x) if name == "burgers" else x**2 * torch.cos(math.pi * x)
    assert torch.allclose(u0, expect, atol=1e-15)
    ub = p.output_transform(torch.cat([torch.ones_like(t), t], 1), junk)
    assert torch.allclose(ub, torch.full_like(ub, 0.0 if name == "burgers" else -1.0), atol=1e-15)


@pytest.mark.parametrize("k", [1.0, 3.0, 5.5])
def test_helmholtz_exact_solution_has_zero_residual(k):
    p = get_problem("helmholtz", k=k)

    def exact(pts):
        x, y = pts[:, :1], pts[:, 1:]
        return sum(w * torch.sin(m * math.pi * x) * torch.sin(n * math.pi * y)
                   for (m, n), w in zip(p.modes, p.mode_weights()))

    pts = torch.as_tensor(p.sample(200, seed=0))
    r = p.residuals(Derivatives(exact, pts, p.variables))["pde"]
    assert float(r.detach().abs().max()) < 1e-10
    pts_g, ref = p.eval_grid()
    assert np.allclose(exact(torch.tensor(pts_g)).reshape(-1).numpy(), ref, atol=1e-13)


def test_derivatives_match_analytic():
    f = lambda p: torch.sin(2 * p[:, :1]) * torch.exp(p[:, 1:])  # noqa: E731
    pts = torch.rand(50, 2, dtype=torch.float64)
    d = Derivatives(f, pts, ("x", "t"))
    x, t = pts[:, :1], pts[:, 1:]
    assert torch.allclose(d.u_x, 2 * torch.cos(2 * x) * torch.exp(t), atol=1e-12)
    assert torch.allclose(d.u_t, d.u, atol=1e-12)
    assert torch.allclose(d.u_xx, -4 * d.u, atol=1e-12)
    assert torch.allclose(d.u_xt, 2 * torch.cos(2 * x) * torch.exp(t), atol=1e-12)
    with pytest.raises(AttributeError, match="unknown derivative"):
        _ = d.u_y


@pytest.mark.parametrize("name,coeffs", [("burgers", {"nu": 0.02 / math.pi}), ("allen_cahn", {"gamma": 3.0})])
def test_reference_satisfies_pde(name, coeffs):
    """Finite differences of the cached reference solve the PDE away from steep fronts."""
    p = get_problem(name, **coeffs)
    x = np.linspace(-0.5, -0.2, 61) if name == "burgers" else np.linspace(0.3, 0.6, 61)
    t = np.linspace(0.3, 0.5, 41)
    u = p.reference((x, t))
    assert u.shape == (61, 41)
    hx, ht = x[1] - x[0], t[1] - t[0]
    ut = (u[1:-1, 2:] - u[1:-1, :-2]) / (2 * ht)
    ux = (u[2:, 1:-1] - u[:-2, 1:-1]) / (2 * hx)
    uxx = (u[2:, 1:-1] - 2 * u[1:-1, 1:-1] + u[:-2, 1:-1]) / hx**2
    c = u[1:-1, 1:-1]
    if name == "burgers":
        r = ut + c * ux - p.nu * uxx
    else:
        r = ut - p.d * uxx - p.gamma * (c - c**3)
    assert np.abs(r).max() < 2e-3 * max(np.abs(ut).max(), 1.0)
    assert p.reference((x, t)) is p.reference((x, t))  # cached


def test_registry_lists_families():
    assert OUR_PROBLEMS == ["allen_cahn", "burgers", "helmholtz"] and set(OUR_PROBLEMS) <= set(PROBLEMS.names())


def test_a_slow_reference_shows_progress(monkeypatch, capsys):
    """Issue 14, item 11: a reference computed for more than a few seconds shows a progress bar (here with the
    delay set to 0); the solvers report the fraction done."""
    from pinn_lora.pde import problem as problem_module

    monkeypatch.setattr(problem_module, "PROGRESS_DELAY", 0.0)
    seen = []
    from pinn_lora.problems.reference_solvers import burgers_cole_hopf

    burgers_cole_hopf(0.01, np.linspace(-1, 1, 5), np.linspace(0, 1, 4), progress=seen.append)
    assert seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    prob = get_problem("burgers", nu=0.0123)  # not cached yet
    prob.reference()
    err = capsys.readouterr().err
    assert "burgers reference (nu=0.0123):  " in err and "%|" in err
