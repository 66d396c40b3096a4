"""The one step protocol (pinn_lora.methods.dynamics.base.Step over an Objective): every way to move the
parameters runs through ``step(objective)`` and ``report(objective)``, the method decides its step once,
and the loops see a small context, never the Trainer."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import pinn_lora
from pinn_lora.methods.dynamics.base import Objective, Step
from pinn_lora.methods.dynamics.gauss_newton import LevenbergMarquardt
from pinn_lora.methods.dynamics.lbfgs import LBFGSStep
from pinn_lora.methods.dynamics.odelora import ODELoRADynamics
from pinn_lora.model.jacobian import term_names
from pinn_lora.training.objective import PhysicsObjective
from pinn_lora.training.trainer import TrainConfig, Trainer, residual_loss, residual_losses
from tiny import setup

TRAINING = Path(pinn_lora.__file__).parent / "training"


def _objective(prob, model, pts):
    params = [p for p in model.parameters() if p.requires_grad]
    return PhysicsObjective(lambda: prob, model, params, lambda x: residual_losses(prob, model, x)).at(pts)


def _steppers(model, meth):
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "first-order (Adam)": meth.dynamics(model),
        "odelora explicit": pinn_lora.get_method("odelora", scheme="euler").dynamics(model),
        "odelora implicit": pinn_lora.get_method("odelora", scheme="implicit").step_for(model),
        "levenberg-marquardt": meth.step_for(model, "lm", mu=0.01),
        "l-bfgs": LBFGSStep(params, iterations=3),
    }


@pytest.mark.parametrize("name", ["first-order (Adam)", "odelora explicit", "odelora implicit",
                                  "levenberg-marquardt", "l-bfgs"])
def test_every_stepper_runs_through_the_one_protocol(name):
    """Each stepper is a Step; ``step(objective)`` returns the loss at the start of the step and moves the
    parameters; ``report(objective)`` gives the step size and the evaluations spent."""
    prob, _, model, _, pts = setup("burgers", "odelora")
    meth = pinn_lora.get_method("lora")
    step = _steppers(model, meth)[name]
    assert isinstance(step, Step)
    start = float(residual_loss(prob, model, pts).detach())
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    objective = _objective(prob, model, pts)
    assert isinstance(objective, Objective)
    loss = float(step.step(objective))
    assert loss == pytest.approx(start, rel=1e-12)
    report = step.report(objective)
    assert report["lr"] > 0 and report["evaluations"] >= 1
    moved = any(not torch.equal(a, p.detach()) for a, p in
                zip(before, [p for p in model.parameters() if p.requires_grad]))
    assert moved
    assert set(objective.stash["terms"]) == set(term_names(prob))  # the record's terms, whichever way it evaluated
    assert math.isfinite(float(residual_loss(prob, model, pts).detach()))


def test_the_residual_objective_is_the_loss():
    prob, _, model, _, pts = setup("burgers", "lora")
    objective = _objective(prob, model, pts)
    r, jac = objective.residual_jacobian()
    assert jac.shape == (r.numel(), sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert float(r @ r) == pytest.approx(float(objective()), rel=1e-12)
    assert objective.trial_loss() == pytest.approx(float(r @ r), rel=1e-12)


def test_a_closure_is_an_objective_for_first_order_steps_only():
    prob, _, model, meth, pts = setup("burgers", "lora")

    def closure():
        for p in model.parameters():
            p.grad = None
        loss = residual_loss(prob, model, pts)
        loss.backward()
        return loss.detach()

    assert math.isfinite(float(meth.dynamics(model).step(closure)))
    with pytest.raises(TypeError, match="residual Jacobian"):
        meth.step_for(model, "lm").step(closure)


def test_the_method_decides_its_step_once():
    """``Method.step_for``: solver=lm gives the second-order step (ODELoRA's implicit scheme for ODELoRA), else
    the method's own dynamics; scheme=implicit is ODELoRA's own step (h = lr) under either solver."""
    _, _, model, meth, _ = setup("burgers", "odelora")
    lm = meth.step_for(model, "lm", mu=0.25)
    assert isinstance(lm, LevenbergMarquardt) and lm.residual_step and lm.mu == 0.25 and lm.metric is not None
    assert isinstance(meth.step_for(model, "method"), ODELoRADynamics)
    implicit = pinn_lora.get_method("odelora", scheme="implicit", lr=0.5)
    for solver in ("method", "lm"):
        own = implicit.step_for(model, solver, mu=0.25)
        assert isinstance(own, LevenbergMarquardt) and own.mu == pytest.approx(2.0)


def test_a_decided_second_order_step_is_the_one_the_trainer_runs():
    prob, _, model, meth, _ = setup("burgers", "lora")
    step = meth.step_for(model, "lm", mu=0.01)
    cfg = TrainConfig(steps=3, n_points=64, eval_every=10, progress=False, solver="lm")
    tr = Trainer(prob, model, step, cfg, method=meth)
    assert tr.dynamics is step
    hist = tr.run()
    train = [r for r in hist.records if r["phase"] == "train"]
    assert len(train) == 3 and all("lm_accepted" in r and "loss_pde" in r and "grad_norm" in r for r in train)


def _names(path: Path) -> set[str]:
    """Every name, attribute and imported name a module's code uses (docstrings and comments left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(a.name for a in node.names)
            found.add(getattr(node, "module", None) or "")
    return found


def test_the_loops_never_see_the_trainer():
    names = _names(TRAINING / "loops.py")
    assert "Trainer" not in names and "pinn_lora.training.trainer" not in names and "trainer" not in names
    for part in ("sampling.py", "continuation.py", "guard.py", "checkpointer.py", "objective.py", "records.py"):
        assert "Trainer" not in _names(TRAINING / part), part


def test_no_loop_is_chosen_by_the_steppers_class():
    """The protocol, not isinstance, decides how a step runs: no isinstance test against a step class in training/."""
    steps = {"LevenbergMarquardt", "GradientDynamics", "ODELoRADynamics", "RiemannianDynamics", "LBFGSStep"}
    bad = []
    for path in sorted(TRAINING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if used & steps:
                    bad.append(f"{path.name}:{node.lineno}")
    assert not bad, bad


def test_training_files_and_functions_stay_small():
    """No file in pinn_lora/training/ over 500 lines, no function over 80."""
    long_files, long_functions = [], []
    for path in sorted(TRAINING.glob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            long_files.append(path.name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.name}:{node.name}")
    assert not long_files and not long_functions, (long_files, long_functions)


def test_implicit_odelora_on_matrix_sensing_through_the_protocol():
    """Matrix sensing's objective gives ρ and J; ODELoRA's implicit scheme (a Levenberg–Marquardt step)
    converges at h = 4 where explicit Euler diverges (tests/test_second_order.py writes the same step by hand)."""
    from pinn_lora.methods import sensing

    prob = sensing.MatrixSensing.random(20, 20, 3, seed=0)
    assert sensing.train(prob, "odelora", 4.0, 100, scheme="euler").diverged
    run = sensing.train(prob, "odelora", 4.0, 25, scheme="implicit")
    assert not run.diverged and run.losses[-1] < 1e-6 * run.losses[0]
    layer = sensing.sensing_layer(20, 20, 3, 1e-2, seed=0)
    objective = sensing.SensingObjective(prob, layer)
    r, jac = objective.residual_jacobian()
    assert float(r @ r) == pytest.approx(float(objective()), rel=1e-12)
    auto = torch.autograd.functional.jacobian(
        lambda b, a: prob.residuals(layer.weight0 + layer.scale * b @ a) / objective.norm,
        tuple(t.detach() for t in layer.factors()))
    want = torch.cat([auto[0].reshape(r.numel(), -1), auto[1].reshape(r.numel(), -1)], 1)
    assert torch.allclose(jac, want, rtol=1e-10, atol=1e-12)
