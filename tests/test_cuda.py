"""CUDA-only checks (skipped without a GPU; run on a GPU machine): the jet path and the
captured graph give the eager CPU-equivalent results on the device."""
import pytest
import torch

from pinn_lora import adapt_to
from pinn_lora.core.registry import get_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method,opts,captured", [
    ("lora", {}, True), ("full", {}, True), ("riemannian", {}, True),
    ("odelora", {"precondition": "rmsprop", "lr": 1e-3, "rebalance": False}, True),
    ("odelora", {"scheme": "rk4", "rebalance": False}, True),
    # chain merges and restarts in place, between replays (issue 17 item 3)
    ("cola", {"chain_every": 7}, True), ("c3la", {"chain_every": 7}, True),
    ("odlora", {"warmup": 5, "refresh_every": 8}, True),
    # the default rebalance: on CUDA the Newton–Schulz form (issue 17 item 2), matrix products only: captured
    ("odelora", {"precondition": "rmsprop", "lr": 1e-3}, True)])
def test_graph_equals_static_eager_on_cuda(method, opts, captured):
    """The captured graph replays exactly the steps of the same static loop run without capture."""
    prob = get_problem("helmholtz", k=3.0)
    runs = {}
    for graph in (False, True):
        runs[graph] = adapt_to("helmholtz", prob, method, steps=30, n_points=256, resample_every=7, eval_every=10,
                               lbfgs_steps=0, device="cuda", progress=False, plots=False, cuda_graph=graph,
                               derivatives="jets", sync_every=10, **opts)
    assert runs[True].extra["settings"]["cuda_graph"] is captured
    assert runs[False].extra["settings"]["cuda_graph"] is False
    e = [r["loss"] for r in runs[False].history.records if r["phase"] == "train"]
    g = [r["loss"] for r in runs[True].history.records if r["phase"] == "train"]
    assert len(g) == 30
    for a, b in zip(e, g):
        assert abs(a - b) <= 1e-10 * max(abs(a), 1e-12)
    assert abs(runs[True].error - runs[False].error) <= 1e-10


def test_jets_equal_autograd_on_cuda():
    from pinn_lora.model.network import build_network
    from pinn_lora.training.trainer import residual_loss

    prob = get_problem("burgers").default_target()
    net = build_network([2, 32, 32, 1], "tanh", seed=0, output_transform=prob.output_transform, device="cuda")
    pts = torch.as_tensor(prob.sample(500, seed=1), device="cuda")
    params = list(net.parameters())
    ga = torch.autograd.grad(residual_loss(prob, net, pts, derivatives="autograd"), params)
    gj = torch.autograd.grad(residual_loss(prob, net, pts, derivatives="jets"), params)
    for a, b in zip(ga, gj):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first,then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_resumes_on_the_other_device(first, then, tmp_path):
    """Issue 14, item 13 on a real GPU: a run checkpointed on one device continues on the other
    (its optimiser/integrator state mapped to the resuming run's device) and ends like an uninterrupted run
    on that device, to rounding."""
    prob = get_problem("helmholtz", k=3.0)
    kw = dict(steps=6, n_points=64, lbfgs_steps=0, progress=False, plots=False, checkpoint_every=3, eval_every=2,
              solver="method", cuda_graph=False, derivatives="autograd", precondition="rmsprop", lr=1e-3)
    d = tmp_path / "run"
    adapt_to("helmholtz", prob, "odelora", run_dir=d, device=first, **kw)
    (d / "summary.json").unlink()  # as if stopped after its checkpoint at step 3
    res = adapt_to("helmholtz", prob, "odelora", run_dir=d, resume=True, device=then, **kw)
    ref = adapt_to("helmholtz", prob, "odelora", device=first, **kw)
    assert res.history.steps == 6 and res.history.status == ref.history.status
    assert res.error == pytest.approx(ref.error, rel=1e-6)


@pytest.mark.parametrize("graph", [False, True])
def test_flattened_batch_equals_separate_runs_on_cuda(graph):
    """Issue 17 item 1 on the device: K coefficients as K·N rows (captured or not) follow K separate runs."""
    from pinn_lora.runs.many import adapt_many

    probs = [get_problem("burgers", nu=nu) for nu in (0.003, 0.006, 0.012)]
    kw = dict(steps=20, n_points=512, resample_every=10**6, eval_every=10, lbfgs_steps=0, device="cuda",
              progress=False, plots=False, sync_every=10)
    batch = adapt_many("burgers", probs, "lora", cuda_graph=graph, **kw)
    assert batch[0].extra["settings"]["flattened"] is True
    assert batch[0].extra["settings"]["cuda_graph"] is graph
    for prob, res in zip(probs, batch):
        alone = adapt_to("burgers", prob, "lora", derivatives="jets", solver="method", cuda_graph=False,
                         continuation="off", **kw)
        assert abs(alone.error - res.error) <= 1e-8 * alone.error
