"""The training loop: metrics, checkpoints, divergence handling, seeding."""
import json
import math

import pytest
import torch
from safetensors import safe_open

from pinn_lora import adapt_to
from pinn_lora.model.network import build_network
from pinn_lora.core.registry import get_problem


def _base(name="burgers"):
    prob = get_problem(name)
    net = build_network([2, 12, 12, 1], "tanh", seed=0, output_transform=prob.output_transform)
    card = {"problem": name, "coefficients": prob.coefficients, "network": net.architecture(),
            "weights_sha256": "test"}
    return net, card


def test_run_directory_and_checkpoint(tmp_path):
    res = adapt_to(_base(), get_problem("burgers").default_target(), "lora", steps=5, lbfgs_steps=0, n_points=64, eval_every=2,
                   device="cpu", run_dir=tmp_path, progress=False, plots=False, checkpoint_every=2, lr=1e-3,
                   solver="method")
    assert res.history.status == "completed"
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as fh:
        # the end of the steps (the state after 5, verified by one more loss), after the one at step 3
        assert fh.metadata()["step"] == "5" and json.loads(fh.metadata()["__resume__"])["phase"] == "end"
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "rel_l2" in r] == [1, 3, 4]
    assert recs[-1]["evaluations"] == 5
    with pytest.raises(ValueError, match="already holds a previous run"):  # never overwritten
        adapt_to(_base(), get_problem("burgers").default_target(), "lora", steps=1, lbfgs_steps=0, device="cpu", run_dir=tmp_path)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("method,lr", [("lora", 1e6), ("odelora", 1e6), ("full", 1e6)])
def test_divergence_stops_cleanly(tmp_path, method, lr):
    res = adapt_to(_base(), get_problem("burgers").default_target(), method, steps=50, lbfgs_steps=0, n_points=64, device="cpu",
                   run_dir=tmp_path, progress=False, plots=False, checkpoint_every=1, lr=lr, solver="method")
    assert res.history.status == "diverged"
    assert len(res.history.records) < 50
    assert "at step" in res.history.message
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["settings"] == {"steps": 50, "n_points": 64, "resample_every": 100, "lbfgs_steps": 0,
                                   "eval_every": 100, "sampler": "pseudo", "dtype": "float64",
                                   "base": "(network given)", "derivatives": "auto", "cuda_graph": False,
                                   "solver": "method", "sampling": "uniform",
                                   "continuation": "off"}  # the run describes itself without Hydra
    assert all(torch.isfinite(p).all() for p in res.model.parameters())  # the last good state is kept
    assert math.isfinite(res.model(torch.zeros(3, 2, dtype=torch.float64)).sum().item())
    if (tmp_path / "checkpoint.safetensors").exists():  # the last good state is finite
        with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as fh:
            assert all(torch.isfinite(fh.get_tensor(k)).all() for k in fh.keys() if not k.startswith("__resume__/"))


def test_same_seed_same_metrics():
    runs = [adapt_to(_base(), get_problem("burgers").default_target(),
                     "odelora", steps=4, lbfgs_steps=0, n_points=64, device="cpu", progress=False, plots=False, seed=3, lr=0.01)
            for _ in range(2)]
    a, b = ([{k: v for k, v in r.items() if k != "time"} for r in run.metrics] for run in runs)
    assert a == b
    other = adapt_to(_base(), get_problem("burgers").default_target(), "odelora", steps=4, lbfgs_steps=0, n_points=64, device="cpu",
                     progress=False, plots=False, seed=4, lr=0.01)
    assert other.metrics[1]["loss"] != runs[0].metrics[1]["loss"]
    assert math.isfinite(runs[0].error)


@pytest.mark.parametrize("method,lr", [("lora", 1e6), ("full", 1e300)])
def test_a_blow_up_in_the_last_step_is_caught(tmp_path, method, lr):
    """The last step's result is verified too: with one step there is no next loss to catch it."""
    base = _base()
    res = adapt_to(base, get_problem("burgers").default_target(), method, steps=1, lbfgs_steps=0, n_points=64,
                   device="cpu", progress=False, plots=False, lr=lr, solver="method")
    assert res.history.status == "diverged"
    assert math.isfinite(res.error) and res.error < 10
    x = torch.rand(5, 2, dtype=torch.float64)
    assert torch.allclose(res.model(x), base[0](x), atol=1e-12)  # back at the last good state: the start


def test_checkpoint_holds_a_verified_state(tmp_path):
    from pinn_lora.training.trainer import residual_loss

    prob = get_problem("burgers").default_target()
    res = adapt_to(_base(), prob, "full", steps=3, lbfgs_steps=0, n_points=64, device="cpu", run_dir=tmp_path,
                   progress=False, plots=False, checkpoint_every=1, lr=1e300)
    assert res.history.status == "diverged"
    net = _base()[0]
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as fh:
        net.load_state_dict({k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("__resume__/")})
    pts = torch.as_tensor(prob.sample(64, seed=0))
    assert math.isfinite(float(residual_loss(prob, net, pts)))


def test_non_finite_step_is_left_to_the_divergence_check():
    """A step that produces non-finite factors (here: NaN gradients) must not raise in ODELoRA's
    rebalance or OD-LoRA's split/refresh (their QR/SVD fail on NaN); the loop then rolls it back."""
    from tiny import make_closure, setup

    from pinn_lora.model.adapters import adapter_layers

    prob, _, model, meth, pts = setup("helmholtz", "odelora", precondition="none")
    dyn = meth.dynamics(model)
    inner = make_closure(prob, model, pts)

    def poisoned():
        loss = inner()
        for p in model.parameters():
            if p.grad is not None:
                p.grad.fill_(float("nan"))
        return loss

    dyn.step(poisoned)  # raised torch.linalg.LinAlgError in the rebalance before
    assert not all(bool(torch.isfinite(p).all()) for p in model.parameters())

    prob, _, model, meth, pts = setup("helmholtz", "odlora", warmup=1)
    lay = next(lay for _, lay in adapter_layers(model))
    with torch.no_grad():
        lay.lora_A.fill_(float("nan"))
    lay.split()  # left alone
    assert not lay.split_done
    with torch.no_grad():
        lay.lora_A.normal_()
    lay.split()
    with torch.no_grad():
        lay.lora_B.fill_(float("nan"))
    q_a = lay.Q_A.clone()
    lay.refresh()  # left alone
    assert torch.equal(lay.Q_A, q_a)


def test_blow_up_ends_as_diverged_not_as_an_exception():
    """End to end: a step size far past stability ends the run as diverged with the last good state."""
    from tiny import setup

    from pinn_lora.training.trainer import TrainConfig, Trainer

    prob, _, model, meth, _ = setup("helmholtz", "odelora", lr=1e4, precondition="none")
    hist = Trainer(prob, model, meth.dynamics(model), TrainConfig(steps=30, n_points=64, progress=False)).run()
    assert hist.status == "diverged"
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _static_vs_eager(method, steps=12, sync_every=5, **opts):
    from pinn_lora import adapt_to
    from pinn_lora.core.registry import get_problem

    prob = get_problem("helmholtz", k=3.0)
    runs = {}
    for sync in (0, sync_every):
        runs[sync] = adapt_to(_base("helmholtz"), prob, method, steps=steps, n_points=128, resample_every=4, eval_every=10,
                              lbfgs_steps=0, device="cpu", progress=False, plots=False, sync_every=sync, solver="method",
                              **opts)
    return runs[0], runs[sync_every]


@pytest.mark.parametrize("method,opts", [("lora", {}), ("odelora", {"precondition": "rmsprop", "lr": 1e-3}),
                                         ("odelora", {"scheme": "rk4"}), ("riemannian", {}),
                                         ("cola", {"chain_every": 4}), ("c3la", {"chain_every": 3}),
                                         ("rac", {"chain_every": 5}), ("rc3la", {"chain_every": 2}),
                                         ("odlora", {"warmup": 3, "refresh_every": 4})])
def test_static_loop_equals_eager_loop(method, opts):
    """The graph-mode loop (here without capture: sync_every > 0 on the CPU) takes the same steps
    on the same points as the eager loop: identical losses, errors and weights. The chained methods'
    merges and restarts and OD-LoRA's split and refreshes (in place: issue 17 item 3) run between the
    static steps."""
    eager, static = _static_vs_eager(method, **opts)
    e = [r for r in eager.history.records if r["phase"] == "train"]
    s = [r for r in static.history.records if r["phase"] == "train"]
    assert [r["step"] for r in s] == list(range(12))
    assert [r["loss"] for r in s] == [r["loss"] for r in e]
    assert [r["grad_norm"] for r in s] == [r["grad_norm"] for r in e]
    assert [r["evaluations"] for r in s] == [r["evaluations"] for r in e]
    assert [r["step"] for r in s if "rel_l2" in r] == [9, 11]  # block ends at an evaluation
    assert static.error == eager.error
    assert [r["step"] for r in s if r.get("between_syncs")] == [0, 1, 2, 3, 5, 6, 7, 8, 10]
    assert all("update_norm" in r for r in s if not r.get("between_syncs"))
    for a, b in zip(eager.model.state_dict().values(), static.model.state_dict().values()):
        assert torch.equal(a, b)


def test_adam_moments_zeroed_in_place_step_as_a_fresh_state():
    """reset_state zeroes Adam's moments in place (a captured graph keeps reading the same tensors); the next
    steps are bit-identical to those after dropping the state."""
    from pinn_lora.methods.dynamics.base import GradientDynamics

    runs = []
    for how in ("zero", "clear"):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
        dyn = GradientDynamics([w], lr=0.1)
        closure = lambda: (w.grad is not None and w.grad.zero_(), ((w ** 3).sum()).backward(), (w ** 3).sum())[2]  # noqa: E731
        for _ in range(3):
            dyn.step(closure)
        held = [v for st in dyn.optimizer.state.values() for v in st.values()]
        if how == "zero":
            dyn.reset_state()
            assert all(float(v.abs().max()) == 0 for v in held)  # the same tensors, zeroed
            assert [v for st in dyn.optimizer.state.values() for v in st.values()] == held
        else:
            dyn.optimizer.state.clear()
        for _ in range(3):
            dyn.step(closure)
        runs.append(w.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_static_loop_divergence_restores_block_start():
    """A blow-up inside a block: the state at the block's start comes back, the run says diverged."""
    from pinn_lora import adapt_to
    from pinn_lora.core.registry import get_problem

    prob = get_problem("helmholtz", k=3.0)
    res = adapt_to("helmholtz", prob, "lora", lr=50.0, steps=40, n_points=64, eval_every=10, lbfgs_steps=0,
                   device="cpu", progress=False, plots=False, sync_every=4, solver="method")
    assert res.history.status == "diverged"
    assert "start of its block of 4 graph steps" in res.history.message
    assert math.isfinite(res.error)
    first = res.history.records[0]["loss"]
    pts = torch.as_tensor(prob.sample(64, seed=0))
    from pinn_lora.training.trainer import residual_loss

    kept = float(residual_loss(prob, res.model, pts).detach())  # the restored state is one whose loss passed
    assert math.isfinite(kept) and kept < 1e6 * first


def test_graph_reasons_on_cpu():
    """Why a step cannot be captured is said plainly; cuda_graph=true off CUDA is refused."""
    from pinn_lora.methods.dynamics.base import GradientDynamics
    from pinn_lora.training.trainer import TrainConfig, Trainer

    prob = get_problem("burgers")
    net = build_network([2, 8, 1], "tanh", seed=0)
    dyn = GradientDynamics(list(net.parameters()), lr=1e-3, optimizer="sgd", schedule="cosine")
    assert "cosine schedule with SGD" in dyn.graph_unsafe_reason()
    tr = Trainer(prob, net, dyn, TrainConfig(steps=2, n_points=8, cuda_graph=True, progress=False))
    assert tr.graph_unsafe_reason() == "the model is on cpu, not CUDA"
    with pytest.raises(ValueError, match="cuda_graph=true: the model is on cpu, not CUDA"):
        tr.run()
    with pytest.raises(ValueError, match="cuda_graph='yes'"):
        TrainConfig(cuda_graph="yes")
