"""Monitors: each measurement on small known inputs, merges that must not show, and the
keys an adapt_to() run writes into metrics.jsonl and summary.json."""
import json
import math
import re

import pytest
import torch

from pinn_lora.model.adapters import adapter_layers
from pinn_lora.training.monitors import (METRICS_SCHEMA, AdapterState, FeatureChange, Stability, TensorBoardWriter,
                                UpdateNorm, balance, effective_rank, effective_weight, gram_cond, spectrum_stats)
from pinn_lora import adapt_to
from pinn_lora.core.registry import get_problem
from pinn_lora.training.trainer import History, TrainConfig, Trainer
from tests.tiny import make_closure, setup


pytestmark = pytest.mark.usefixtures("one_thread")


def _feed(monitor, losses, phase="train"):
    recs = [{"step": i, "phase": phase, "loss": v} for i, v in enumerate(losses)]
    for r in recs:
        monitor.on_record(r)
    return recs


# -- Stability -----------------------------------------------------------------------------------
def test_stability_counts_two_spikes_and_oscillation():
    st = Stability()  # factor 10
    losses = [1.0, 0.5, 6.0, 0.4, 0.45, 5.0, 0.3, 2.0]  # 6/0.5 = 12 and 5/0.4 = 12.5 spike; 2/0.3 does not
    recs = _feed(st, losses)
    assert [r["step"] for r in recs if "spike" in r] == [2, 5]
    assert recs[2]["spike"] == pytest.approx(12.0) and recs[5]["spike"] == pytest.approx(12.5)
    st.on_end(History(status="diverged", message="loss 1e9 at step 7"))
    s = st.summary()
    assert s["spikes"] == 2 and s["largest_spike_ratio"] == pytest.approx(12.5) and s["first_spike_step"] == 2
    assert s["oscillation"] == pytest.approx(4 / 7)  # rises: 0.5→6, 0.4→0.45, 0.45→5, 0.3→2 of 7 pairs
    assert s["largest_loss_ratio"] == pytest.approx(12.5)
    assert (s["status"], s["message"]) == ("diverged", "loss 1e9 at step 7")


def test_stability_edge_cases():
    st = Stability(factor=3)
    _feed(st, [4.0, 3.0, 2.0, 1.0])  # monotone: no rise, no spike
    assert st.summary()["oscillation"] == 0 and st.summary()["spikes"] == 0
    _feed(st, [2.0, float("nan")], phase="lbfgs")  # phases are not compared with each other
    s = st.summary()
    assert s["spikes"] == 1 and s["largest_spike_ratio"] == math.inf  # a non-finite loss is a spike
    assert st.pairs == 4 and s["oscillation"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="factor"):
        Stability(factor=1)


# -- AdapterState --------------------------------------------------------------------------------
def test_spectrum_balance_and_condition_on_known_matrices():
    dw = torch.zeros(5, 4, dtype=torch.float64)
    dw[0, 0] = dw[1, 1] = 2.0  # rank 2, equal singular values
    s = spectrum_stats(dw)
    assert s["eff_rank"] == pytest.approx(2.0, abs=1e-12) and s["stable_rank"] == pytest.approx(2.0, abs=1e-12)
    assert (s["sv1"], s["sv2"]) == pytest.approx((2.0, 2.0)) and s["sv3"] == pytest.approx(0.0, abs=1e-12)
    dw[0, 0], dw[1, 1] = 3.0, 1.0
    s = spectrum_stats(dw)
    assert s["stable_rank"] == pytest.approx(10 / 9)
    assert s["eff_rank"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert effective_rank(torch.zeros(3, dtype=torch.float64)) is None
    dw[0, 0] = math.nan  # no SVD of a non-finite matrix (it may fail to converge): nan
    assert math.isnan(spectrum_stats(dw)["eff_rank"]) and math.isnan(gram_cond(dw))
    b, a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    assert balance(b, a) == pytest.approx(3 / math.sqrt(17))  # ‖diag(4,1) − I‖ / ‖diag(4,1)‖
    assert gram_cond(b) == pytest.approx(4.0)
    q = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    m = torch.randn(2, 2, dtype=torch.float64)
    u, sig, vh = torch.linalg.svd(m)  # balanced: B = Q U √Σ, A = √Σ Vᵀ gives BᵀB = AAᵀ = Σ
    assert balance(q @ u * sig.sqrt(), sig.sqrt()[:, None] * vh) == pytest.approx(0.0, abs=1e-12)
    assert balance(torch.zeros(3, 2, dtype=torch.float64), a) is None and gram_cond(torch.zeros(3, 2)) is None


def test_adapter_state_on_a_rank2_update():
    _, _, model, _, _ = setup(method="lora")  # 2→8→8→1, rank 4, scale 1, B = 0
    mon = AdapterState(every=1)
    mon.on_start(model, None)
    lay = model.linears[1]
    with torch.no_grad():
        lay.lora_B.zero_(), lay.lora_A.zero_()
        lay.lora_B[0, 0] = lay.lora_B[1, 1] = 1.0
        lay.lora_A[0, 0] = lay.lora_A[1, 1] = 1.0  # ΔW = e1e1ᵀ + e2e2ᵀ, balanced factors
    rec = {"step": 0, "loss": 1.0}
    mon.on_record(rec)
    assert rec["layer1/eff_rank"] == pytest.approx(2.0, abs=1e-12)
    assert rec["layer1/stable_rank"] == pytest.approx(2.0, abs=1e-12)
    assert (rec["layer1/sv1"], rec["layer1/sv2"], rec["layer1/sv3"]) == pytest.approx((1, 1, 0), abs=1e-12)
    assert rec["layer1/balance"] == pytest.approx(0.0, abs=1e-12)
    assert rec["layer1/cond"] == math.inf  # BᵀB has rank 2 of 4
    assert rec["layer1/delta_rel"] == pytest.approx(math.sqrt(2) / float(torch.linalg.norm(lay.weight0)))  # B0 = 0
    assert rec["layer0/eff_rank"] is None and rec["layer0/balance"] is None  # untouched layer: ΔW = 0, B = 0
    assert set(k.split("/")[0] for k in rec if "/" in k) == {"layer0", "layer1", "layer2"}


def test_periodic_schedule():
    _, _, model, _, _ = setup(method="lora")
    mon = AdapterState(every=3)
    mon.on_start(model, None)
    recs = [{"step": i, "loss": 1.0, **({"rel_l2": 0.1} if i == 7 else {})} for i in range(8)]
    for r in recs:
        mon.on_record(r)
    assert [r["step"] for r in recs if "layer0/delta_rel" in r] == [2, 5, 7]
    mon.on_end(History())
    assert "layer0/delta_rel" in mon.final


def test_chain_merge_makes_no_jump():
    """cola with chain_every=1 merges s·B·A into W0 after every step: the merged weight, so
    AdapterState's ΔW and UpdateNorm, must not see the merge."""
    prob, _, model, meth, pts = setup(method="cola", chain_every=1, lr=1e-2)
    dyn = meth.dynamics(model)
    state, upd = AdapterState(every=1), UpdateNorm()
    for m in (state, upd):
        m.on_start(model, prob)
    dyn.step(make_closure(prob, model, pts))
    before = state.measure()
    rec = {"step": 0, "loss": 1.0}
    upd.on_record(rec)
    assert rec["update_norm"] > 0
    weight0 = [lay.weight0.clone() for _, lay in adapter_layers(model)]
    meth.after_step(0, model, dyn)  # the merge
    assert all(not torch.equal(w, lay.weight0) for w, (_, lay) in zip(weight0, adapter_layers(model)))
    assert all(float(lay.delta_weight().detach().abs().max()) == 0 for _, lay in adapter_layers(model))  # B = 0 again
    after = state.measure()
    for k in ("delta_rel", "sv1", "stable_rank", "eff_rank"):
        for i in (0, 1, 2):
            assert after[f"layer{i}/{k}"] == pytest.approx(before[f"layer{i}/{k}"], rel=1e-9, abs=1e-14), (i, k)
    assert after["layer1/balance"] is None  # the factors themselves did restart
    rec = {"step": 1, "loss": 1.0}
    upd.on_record(rec)
    assert rec["update_norm"] == pytest.approx(0.0, abs=1e-14)
    raw = UpdateNorm(effective=False)  # the raw factors do jump
    raw.on_start(model, prob)
    with torch.no_grad():
        model.linears[1].lora_A.add_(1.0)
    rec = {"step": 2, "loss": 1.0}
    raw.on_record(rec)
    assert rec["update_norm"] == pytest.approx(math.sqrt(model.linears[1].lora_A.numel()))


def test_chained_run_keeps_accumulating_delta():
    prob, _, model, meth, _ = setup("helmholtz", method="cola", chain_every=1, lr=1e-2)
    start = {i: effective_weight(lay) for i, lay in adapter_layers(model)}
    state, upd = AdapterState(every=1), UpdateNorm()
    cfg = TrainConfig(steps=4, n_points=32, eval_every=100, progress=False)
    hist = Trainer(prob, model, meth.dynamics(model), cfg, monitors=[upd, state], after_step=meth.after_step).run()
    recs = hist.records
    assert all(r["layer1/delta_rel"] > 0 for r in recs[:4])
    lay = model.linears[1]
    want = float(torch.linalg.norm(effective_weight(lay) - start[1]) / torch.linalg.norm(start[1]))
    assert recs[-1]["layer1/delta_rel"] == pytest.approx(want)
    assert float(lay.delta_weight().detach().abs().max()) == 0  # everything is merged: the naive ΔW would read 0
    total = sum(r["update_norm"] for r in recs)
    assert total == pytest.approx(upd.total) and total >= float(torch.linalg.norm(effective_weight(lay) - start[1]))


# -- UpdateNorm, FeatureChange ---------------------------------------------------------------------
def test_update_norm_of_a_manual_change():
    _, _, model, _, _ = setup(method="full")
    upd = UpdateNorm()
    upd.on_start(model, None)
    with torch.no_grad():
        model.linears[0].weight[0, 0] += 0.3
        model.linears[2].bias[0] -= 0.4
    rec = {"step": 0, "loss": 1.0}
    upd.on_record(rec)
    assert rec["update_norm"] == pytest.approx(0.5)
    rec = {"step": 1, "loss": 1.0}
    upd.on_record(rec)
    assert rec["update_norm"] == 0.0

    _, _, model, _, _ = setup(method="lora")  # adapters: the change of W0 + s·B·A
    upd = UpdateNorm()
    upd.on_start(model, None)
    lay = model.linears[1]
    with torch.no_grad():
        lay.lora_B[2, 0] += 0.5
    rec = {"step": 0, "loss": 1.0}
    upd.on_record(rec)
    assert rec["update_norm"] == pytest.approx(0.5 * lay.scale * float(torch.linalg.norm(lay.lora_A.detach()[0])))


def test_feature_change_zero_at_start_then_positive():
    prob, _, model, _, pts = setup(method="lora")
    fc = FeatureChange(prob.sample(32, seed=3), every=1)
    fc.on_start(model, prob)
    rec = {"step": 0, "loss": 1.0}
    fc.on_record(rec)
    assert rec["layer0/feature_change"] == 0.0 and rec["layer1/feature_change"] == 0.0
    assert "layer2/feature_change" not in rec  # the output layer is not a hidden layer
    x = fc.x
    assert torch.allclose(fc.base[1], torch.tanh(model.linears[1](torch.tanh(model.linears[0](x)))))
    assert not any(lin._forward_hooks for lin in model.linears)  # hooks only while measuring
    with torch.no_grad():
        model.linears[1].lora_B.add_(0.1)
    rec = {"step": 1, "loss": 1.0}
    fc.on_record(rec)
    assert rec["layer0/feature_change"] == 0.0 and rec["layer1/feature_change"] > 0


def test_tensorboard_writer_needs_the_package(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            TensorBoardWriter(tmp_path)
    else:
        pytest.skip("tensorboard is installed")


# -- adapt_to(): metrics.jsonl and summary.json ---------------------------------------------------------
def _schema_pattern(key):
    return re.compile("^" + re.escape(key).replace("<term>", r"\w+").replace("<i>", r"\d+").replace("<k>", r"\d+")
                      + "$")


@pytest.mark.integration  # several whole runs or reports (seconds): with the integration tests
def test_adapt_writes_monitor_keys_and_stability_summary(tmp_path):
    res = adapt_to("helmholtz", get_problem("helmholtz").default_target(), "lora", steps=5, n_points=64, lbfgs_steps=0,
                   eval_every=2, device="cpu", run_dir=tmp_path, progress=False, plots=False, continuation="off")
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("update_norm" in r for r in recs)
    measured = [r["step"] for r in recs if "layer0/eff_rank" in r]
    assert measured == [r["step"] for r in recs if "rel_l2" in r] == [1, 3, 4]
    for key in ("layer0/delta_rel", "layer0/sv1", "layer0/stable_rank", "layer0/balance", "layer0/cond",
                "layer3/eff_rank", "layer0/feature_change", "layer2/feature_change"):
        assert key in recs[-1], key
    assert "layer3/feature_change" not in recs[-1]
    patterns = [_schema_pattern(k) for k in METRICS_SCHEMA]
    undocumented = {k for r in recs for k in r if not any(p.match(k) for p in patterns)}
    assert not undocumented
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"spikes", "largest_spike_ratio", "oscillation"} <= set(summary["stability"])
    assert summary["stability"]["oscillation"] == res.stability["oscillation"] and res.stability["status"] == "completed"
    assert summary["status"] == "completed" and summary["adapted_error"] == pytest.approx(recs[-1]["rel_l2"])

    off = adapt_to("helmholtz", get_problem("helmholtz").default_target(), "full", steps=2, n_points=64, lbfgs_steps=0,
                   eval_every=2, device="cpu", progress=False, plots=False, default_monitors=False)
    assert "update_norm" not in off.metrics[-1] and "stability" not in off.summary()
    full = adapt_to("helmholtz", get_problem("helmholtz").default_target(), "full", steps=2, n_points=64, lbfgs_steps=0,
                    eval_every=2, device="cpu", progress=False, plots=False)
    assert "layer0/feature_change" in full.metrics[-1] and "layer0/eff_rank" not in full.metrics[-1]
