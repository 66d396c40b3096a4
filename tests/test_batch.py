"""K coefficients in one batched run take the same trajectories as K separate runs."""
import pytest

from pinn_lora import adapt_to
from pinn_lora.runs.many import adapt_many
from pinn_lora.model.network import build_network
from pinn_lora.core.registry import get_problem
from pinn_lora.runs.adapt import ConfigError
from ours import OUR_METHODS

COMMON = dict(steps=12, n_points=96, resample_every=5, eval_every=6, lbfgs_steps=0, device="cpu", progress=False,
              plots=False)


def tiny_burgers_base():
    """A 2→8→8→1 tanh network as a Burgers base (the default run; the shipped base runs under -m integration)."""
    return build_network([2, 8, 8, 1], "tanh", seed=0, output_transform=get_problem("burgers").output_transform)


@pytest.mark.parametrize("base", ["tiny", pytest.param("burgers", marks=pytest.mark.integration)])
@pytest.mark.parametrize("method,opts", [("lora", {}), ("odelora", {"precondition": "rmsprop", "lr": 1e-3}),
                                         ("c3la", {"chain_every": 5}), ("dora", {})])
@pytest.mark.parametrize("engine", ["jets", "autograd"])
def test_batched_equals_separate_runs(method, opts, engine, base):
    nus = [0.005, 0.02] if base == "tiny" else [0.005, 0.01, 0.02]
    probs = [get_problem("burgers", nu=nu) for nu in nus]
    base = tiny_burgers_base() if base == "tiny" else base
    batch = adapt_many(base, probs, method, **COMMON, **opts)
    assert [r.problem.nu for r in batch] == nus
    for prob, res in zip(probs, batch):
        alone = adapt_to(base, prob, method, derivatives=engine, solver="method", **COMMON, **opts)
        a = [r for r in alone.history.records if r["phase"] == "train"]
        b = [r for r in res.history.records if r["phase"] == "train"]
        assert len(a) == len(b) == 12
        for ra, rb in zip(a, b):
            assert not any("@" in key for key in rb)  # per-copy statistics are data, not encoded in key names
            assert set(rb) - {"between_syncs"} <= set(ra)  # the keys of a run alone (less its monitors')
            assert abs(sum(v for k, v in rb.items() if k.startswith("loss_")) - rb["loss"]) <= 1e-12 * rb["loss"]
            assert abs(ra["loss"] - rb["loss"]) <= 1e-8 * ra["loss"]
            assert abs(ra["grad_norm"] - rb["grad_norm"]) <= 1e-8 * ra["grad_norm"]
        assert abs(alone.error - res.error) <= 1e-8 * alone.error
        assert [r["step"] for r in b if "rel_l2" in r] == [5, 11]


def test_batch_writes_one_run_directory_per_coefficient(tmp_path):
    probs = [get_problem("helmholtz", k=k) for k in (2.5, 3.0)]
    base = build_network([2, 8, 8, 1], "sin", seed=0, output_transform=probs[0].output_transform)
    res = adapt_many(base, probs, "lora", run_dir=tmp_path, **{**COMMON, "plots": False})
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == ["00_k=2.5", "01_k=3"] and (tmp_path / ".pinn_lora_run.json").is_file()  # the batch's claim
    assert [r.run_dir.name for r in res] == dirs
    for d in dirs:
        assert (tmp_path / d / "metrics.jsonl").read_text().count("\n") == 12  # one record per step
        assert (tmp_path / d / "summary.json").is_file() and (tmp_path / d / "adapter.safetensors").is_file()


def test_batch_errors():
    with pytest.raises(ConfigError, match="one family"):
        adapt_many("burgers", [get_problem("burgers"), get_problem("helmholtz")], "lora", **COMMON)
    with pytest.raises(ConfigError, match="scheme dopri5 chooses one step size"):
        adapt_many("burgers", [get_problem("burgers")], "odelora", scheme="dopri5", schedule="constant", **COMMON)
    with pytest.raises(ConfigError, match=r"n_points=10000000000 \(x 2 coefficients in one batched run\) needs "
                                          r"at least .* of memory"):  # refused before anything is drawn
        adapt_many("burgers", [get_problem("burgers", nu=nu) for nu in (0.005, 0.01)], "lora",
                   **{**COMMON, "n_points": 10**10})
    with pytest.raises(ConfigError, match="L-BFGS"):
        adapt_many("burgers", [get_problem("burgers")], "lora", **{**COMMON, "lbfgs_steps": 5})


def _trainer(problems, net, causal_eps=0.0, method="lora"):
    """A BatchTrainer over ``problems`` with rank-2 ``method`` copies whose trainable tensors differ (so the
    copies differ)."""
    import copy

    import torch

    from pinn_lora.runs.many import BatchTrainer, Stacked
    from pinn_lora.methods import AttachContext, get_method
    from pinn_lora.training.trainer import TrainConfig, residual_loss

    models, meths = [], []
    for i, prob in enumerate(problems):
        torch.manual_seed(i)
        meth = get_method(method, **({} if method in ("full", "scratch") else {"rank": 2}))
        m = copy.deepcopy(net)
        m.apply_output_transform(prob.output_transform)
        x = torch.as_tensor(prob.sample(32, seed=2))
        models.append(meth.attach(m, AttachContext(prob, lambda mm, p=prob, x=x: residual_loss(p, mm, x), 0)))
        meths.append(meth)
        with torch.no_grad():
            for q in models[-1].parameters():
                if q.requires_grad:
                    q.add_(0.1 * torch.randn_like(q))
    stacked = Stacked(models)
    cfg = TrainConfig(steps=1, n_points=64, derivatives="jets", progress=False, causal_eps=causal_eps)
    return BatchTrainer(problems, stacked, meths[0].dynamics(stacked), cfg)


@pytest.mark.parametrize("family,values", [("burgers", {"nu": (0.002, 0.01, 0.03)}),
                                           ("allen_cahn", {"gamma": (2.0, 4.0, 6.5)}),
                                           ("helmholtz", {"k": (0.7, 1.5, 3.0)})])
@pytest.mark.parametrize("causal_eps", [0.0, 2.0])
def test_flattened_residual_equals_copy_by_copy(family, values, causal_eps):
    """Issue 17 item 1: the K copies' rows run through the output transform and the residual once, with per-row
    coefficients; every term of every copy equals the copy-by-copy evaluation."""
    import torch

    from pinn_lora.model.derivatives import mlp_jets

    name, vals = next(iter(values.items()))
    probs = [get_problem(family, **{name: v}) for v in vals]
    act = "sin" if family == "helmholtz" else "tanh"
    net = build_network([2, 8, 8, 1], act, seed=0).double()
    tr = _trainer(probs, net, causal_eps)
    assert tr.flattened, tr.why_not_flat
    x = torch.as_tensor(probs[0].sample(64, seed=1))
    jets = mlp_jets(tr._weights(), tr.model.activation_name, x, *tr.plan)
    flat = {k: v.detach() for k, v in tr._flat_terms(jets, x).items()}
    each = {k: v.detach() for k, v in tr._copy_terms(jets, x).items()}
    assert set(flat) == set(each) == {"pde"}
    assert flat["pde"].shape == (3,)
    assert float(each["pde"].min()) > 0 and len(set(each["pde"].tolist())) == 3  # the copies differ
    assert float(((flat["pde"] - each["pde"]).abs() / each["pde"]).max()) <= 1e-12


class _ScalarBurgers(type(get_problem("burgers"))):
    """A family whose residual needs a Python number (math.sqrt of a coefficient): not broadcastable."""

    def residuals(self, d):
        import math

        return {"pde": d.u_t + d.u * d.u_x - math.sqrt(self.nu) ** 2 * d.u_xx}


def test_a_residual_that_does_not_broadcast_runs_copy_by_copy():
    probs = [_ScalarBurgers(nu=nu) for nu in (0.005, 0.02)]
    base = tiny_burgers_base()
    batch = adapt_many(base, probs, "lora", **COMMON)
    why = batch[0].extra["settings"]["flattened"]
    assert isinstance(why, str) and "does not broadcast" in why
    for prob, res in zip(probs, batch):
        alone = adapt_to(base, prob, "lora", derivatives="jets", solver="method", **COMMON)
        assert abs(alone.error - res.error) <= 1e-8 * alone.error
    ok = adapt_many(base, [get_problem("burgers", nu=nu) for nu in (0.005, 0.02)], "lora", **COMMON)
    assert ok[0].extra["settings"]["flattened"] is True


@pytest.mark.parametrize("method", sorted(set(OUR_METHODS)
                                          - {"full", "scratch"}))
def test_vmapped_weight_assembly_equals_copy_by_copy(method):
    """Issue 17 item 1: a layer's K weights W0 + ΔW come from one vmapped weight() over the copies' stacked
    tensors where the class allows it; weights and their gradients equal the copy-by-copy assembly (1e-12)."""
    import torch

    from pinn_lora.model.derivatives import layer_weight

    probs = [get_problem("burgers", nu=nu) for nu in (0.003, 0.01, 0.03)]
    net = build_network([2, 8, 8, 1], "tanh", seed=0).double()
    tr = _trainer(probs, net, method=method)
    if method in ("lora", "dora", "pissa", "cla"):
        assert all(v is not None for v in tr._vmapped), method  # the common adapters are vmapped
    got = tr._weights()
    want = [(torch.stack([layer_weight(m.linears[i])[0] for m in tr.members]),
             None if layer_weight(tr.members[0].linears[i])[1] is None else
             torch.stack([layer_weight(m.linears[i])[1] for m in tr.members])) for i in range(len(got))]
    params = [q for ps in tr.member_params for q in ps]
    seed = torch.Generator().manual_seed(3)
    probe = [torch.randn(w.shape, generator=seed, dtype=w.dtype) for w, _ in want]

    def grads(pairs):
        total = sum((w * c).sum() + (0 if b is None else b.sum()) for (w, b), c in zip(pairs, probe))
        return torch.autograd.grad(total, params, allow_unused=True)

    for (w1, b1), (w2, b2) in zip(got, want):
        assert float((w1 - w2).abs().max().detach()) <= 1e-12 * float(w2.abs().max().detach())
        assert (b1 is None) == (b2 is None) and (b1 is None or torch.equal(b1, b2))
    for g1, g2 in zip(grads(got), grads(want)):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            assert float((g1 - g2).abs().max()) <= 1e-12 * max(float(g2.abs().max()), 1e-300)
