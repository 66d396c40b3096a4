"""Continuation: adapting through intermediate coefficients (Problem.stages_from, Trainer stages)."""
import copy
import math

import numpy as np
import pytest
import torch

import pinn_lora
from pinn_lora.runs import adapt as session
from pinn_lora.training.monitors import read_metrics
from pinn_lora.pde.problem import CoefficientError
from pinn_lora.core.registry import get_problem
from pinn_lora.training.trainer import TrainConfig, Trainer, residual_loss

from tiny import setup

pytestmark = pytest.mark.usefixtures("one_thread")
PI = math.pi


def test_stages_are_evenly_spaced_in_each_coefficients_coordinate():
    target = get_problem("burgers", nu=0.02 / PI)
    stages = target.stages_from({"nu": 0.01 / PI}, 3)
    nus = [0.01 / PI] + [s.nu for s in stages] + [target.nu]
    ratios = [b / a for a, b in zip(nus, nus[1:])]
    assert len(stages) == 3 and np.allclose(ratios, 2 ** 0.25, rtol=1e-12)  # geometric in a viscosity
    # auto: ceil(|ln 2| / (ln 2 / 10)) stages, the target the last of them
    assert len(target.stages_from({"nu": 0.01 / PI})) == 9
    assert target.stages_from({"nu": target.nu}) == [] and target.stages_from({"nu": 0.01 / PI}, 0) == []
    # two coefficients at once: gamma linear, d geometric
    ac = get_problem("allen_cahn", gamma=3.0, d=4e-3)
    st = ac.stages_from({"gamma": 5.0, "d": 1e-3}, 1)
    assert st[0].gamma == pytest.approx(4.0) and st[0].d == pytest.approx(2e-3)
    assert len(ac.stages_from({"gamma": 5.0, "d": 1e-3})) == 7  # d: 2 stage widths of ln2/4 ... x2 -> 8 stages
    # a wavenumber: linear in k^2
    hz = get_problem("helmholtz", k=3.0)
    ks = [s.k ** 2 for s in hz.stages_from({"k": 1.0}, 3)]
    assert np.allclose(ks[::2], [3.0, 7.0]) and 3.0 < ks[1] < 7.0  # k^2 = 5 is near a resonance: moved
    for bad in (-1, 1.5, True, "many"):
        with pytest.raises(ValueError, match="continuation"):
            target.stages_from({"nu": 0.01 / PI}, bad)


def test_no_automatic_continuation_across_a_resonance_of_the_solution():
    """Helmholtz from k = 1: to k = 3 (k² = 9) the path stays below the first forced mode's λ = 2π² ≈ 19.7 and is
    staged; to k = 6 it crosses it, where the solution (1 − λ)/(k² − λ) blows up: no automatic stages (an
    explicit count is still the user's)."""
    assert len(get_problem("helmholtz", k=3.0).stages_from({"k": 1.0})) == 3
    far = get_problem("helmholtz", k=6.0)
    assert "crosses the resonance k²=π²(1²+1²) of the forced mode (1, 1)" in far.continuation_blocked({"k": 1.0})
    assert far.stages_from({"k": 1.0}) == [] and len(far.stages_from({"k": 1.0}, 2)) == 2
    assert get_problem("helmholtz", k=4.0).continuation_blocked({"k": 1.0}) == ""
    assert get_problem("burgers", nu=0.001).continuation_blocked({"nu": 0.01}) == ""


def test_a_stage_the_family_refuses_is_moved_between_its_neighbours():
    """Helmholtz refuses k near a resonance: a stage that would fall there is shifted, never refused."""
    from pinn_lora.problems.helmholtz import nearest_resonance

    mu, _, _ = nearest_resonance(4.5)
    res_k = math.sqrt(mu)
    with pytest.raises(CoefficientError):
        get_problem("helmholtz", k=res_k)
    lo, hi = math.sqrt(res_k ** 2 - 3.0), math.sqrt(res_k ** 2 + 3.0)  # the resonance at the midpoint in k^2
    stages = get_problem("helmholtz", k=hi).stages_from({"k": lo}, 1)
    assert len(stages) == 1 and lo < stages[0].k < hi and abs(stages[0].k - res_k) > 1e-3


def _trainer(stages, steps, **cfg):
    prob, _, model, meth, _ = setup("burgers", "lora")
    cfg = TrainConfig(**{"steps": steps, "n_points": 64, "resample_every": 10**6, "eval_every": 1000,
                         "progress": False, "solver": "lm", **cfg})
    return prob, model, Trainer(prob, model, meth.dynamics(model), cfg, method=meth, stages=stages)


def test_stages_run_in_order_each_on_its_own_residual():
    target = get_problem("burgers").default_target()
    stages = target.stages_from({"nu": 0.01 / PI}, 3)
    prob, model, tr = _trainer(stages, 9, stage_steps=2, stage_tol=0.0)
    start = copy.deepcopy(model)
    hist = tr.run()
    assert [r["stage"] for r in hist.records if r["phase"] == "train"] == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    # the first step trains the first stage's residual on points drawn for it
    seed = int(np.random.default_rng(0).integers(2**31 - 1))
    pts = torch.as_tensor(stages[0].sample(64, seed=seed))
    assert hist.records[0]["loss"] == pytest.approx(float(residual_loss(stages[0], start, pts).detach()), rel=1e-10)
    assert hist.records[0]["loss"] != pytest.approx(float(residual_loss(target, start, pts).detach()), rel=1e-3)
    # the last steps train the target
    assert tr.physics is tr.problem


def test_a_stage_below_its_tolerance_ends_early_and_the_target_keeps_the_steps():
    target = get_problem("burgers").default_target()
    stages = target.stages_from({"nu": 0.01 / PI}, 3)
    _, _, tr = _trainer(stages, 9, stage_steps=2, stage_tol=1e9)
    hist = tr.run()
    assert [r["stage"] for r in hist.records if r["phase"] == "train"] == [0, 1, 2, 3, 3, 3, 3, 3, 3]


@pytest.mark.integration
def test_adapt_records_the_stages_and_resumes_mid_stage(tmp_path):
    """A continuation run interrupted inside a stage resumes to the same records as an uninterrupted
    one; summary()["continuation"] lists the stages in order."""
    from test_second_order import _Crash

    prob = get_problem("burgers").default_target()
    kw = dict(steps=3, n_points=96, resample_every=2, checkpoint_every=3, eval_every=2, device="cpu",
              progress=False, plots=False, solver="lm", sampling="rad", continuation=2,
              loop_options={"rad_pool": 4, "stage_steps": 3, "stage_tol": 0.0})
    res = session.adapt_to("burgers", prob, "odelora", run_dir=tmp_path / "full", monitors=[_Crash(None)], **kw)
    stages = res.summary()["continuation"]
    assert [s["stage"] for s in stages] == [0, 1, 2] and [s["steps"] for s in stages] == [3, 3, 3]
    nus = [s["coefficients"]["nu"] for s in stages]
    assert nus[0] < nus[1] < nus[2] == pytest.approx(prob.nu) and res.summary()["steps"] == 9
    with pytest.raises(KeyboardInterrupt):
        session.adapt_to("burgers", prob, "odelora", run_dir=tmp_path / "cut", monitors=[_Crash(4)], **kw)
    session.adapt_to("burgers", prob, "odelora", run_dir=tmp_path / "cut", monitors=[_Crash(None)], resume=True, **kw)
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("full", "cut"))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}


def test_continuation_is_validated():
    prob = get_problem("burgers").default_target()
    for bad in (-2, "sometimes", 1.5):
        with pytest.raises(ValueError, match="continuation"):
            session.adapt_to("burgers", prob, "lora", steps=1, n_points=16, continuation=bad, device="cpu",
                             progress=False, plots=False)
    with pytest.raises(ValueError, match="stage_steps"):
        TrainConfig(stage_steps=0)
