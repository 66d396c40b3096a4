"""A forced blow-up in every method stops the run cleanly: a diagnosis naming the check and
the step, the last good adapter and the metrics on disk, status "diverged"."""
import json
import math

import pytest
import torch

import pinn_lora
from pinn_lora.registry import METHODS

PROBLEM = pinn_lora.get_problem("helmholtz").default_target()


@pytest.mark.integration  # every method, 40 steps on the shipped base; tests/test_train.py keeps three by default
@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_blow_up_stops_cleanly(name, tmp_path):
    res = pinn_lora.adapt("helmholtz", PROBLEM, name, lr=1e8, solver="method", steps=40, n_points=32, lbfgs_steps=0, device="cpu",
                          progress=False, plots=False, run_dir=tmp_path, checkpoint_every=5, eval_every=10)
    hist = res.history
    assert hist.status == "diverged", name
    assert "divergence check" in hist.message and " at step " in hist.message
    step = int(hist.message.split("fired at step ")[1].split(":")[0])
    assert 0 < step < 40 and hist.records[-1]["step"] == step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["message"] == hist.message
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [r["step"] for r in hist.records]
    kept = pinn_lora.load_adapter(tmp_path, base="helmholtz")  # the last good state, finite and usable
    assert all(torch.isfinite(t).all() for t in kept.model.state_dict().values())
    assert math.isfinite(summary["adapted_error"]) and summary["adapted_error"] < 10 * summary["base_error"]
