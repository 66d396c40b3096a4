"""Shipped base models: present for every family, their cards' errors are
reproduced from the weights, and they load into DeepXDE's FNN."""
import json


import numpy as np
import pytest
import torch

from pinn_lora.store.tensors import CheckpointError
from pinn_lora.model.network import to_deepxde
from pinn_lora.core.registry import PROBLEMS
from pinn_lora.store.zoo import ZOO_DIR, load_base, save_base, shipped
from ours import OUR_PROBLEMS

FAMILIES = OUR_PROBLEMS  # each of our families ships a base model


def test_every_family_has_a_base():
    assert shipped() == FAMILIES


@pytest.mark.parametrize("name", FAMILIES)
def test_card_error_reproduced(name):
    net, card, problem = load_base(name)
    assert problem.coefficients == card["coefficients"]
    for key in ("network", "recipe", "steps", "wall_time_s", "device", "seed", "package_version", "relative_l2"):
        assert key in card
    assert abs(problem.relative_l2(net) - card["relative_l2"]) <= 1e-6


@pytest.mark.parametrize("name", FAMILIES)
def test_base_loads_into_deepxde_fnn(name):
    net, _, problem = load_base(name)
    fnn = to_deepxde(net)
    x = torch.as_tensor(problem.sample(100, seed=0))
    assert torch.allclose(fnn(x), net(x), atol=1e-14, rtol=0)


def test_tampered_or_missing_weights_are_refused(tmp_path):
    net, card, _ = load_base("helmholtz")
    save_base(net, card, tmp_path / "b")
    raw = (tmp_path / "b.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="does not match its card"):
        load_base(tmp_path / "b")
    with pytest.raises(CheckpointError, match="no base model"):
        load_base(tmp_path / "nothing")
    bad = dict(json.loads((tmp_path / "b.json").read_text()))
    del bad["network"]
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="lacks network"):
        load_base(tmp_path / "b")


def test_accuracy_goals_or_reason_recorded():
    goals = {"burgers": 2e-3, "allen_cahn": 1e-3, "helmholtz": 1e-3}
    for name, goal in goals.items():
        card = json.loads((ZOO_DIR / f"{name}.json").read_text())
        assert card["relative_l2"] <= goal or card.get("accuracy_note"), name
        assert np.isfinite(card["relative_l2"])


def test_paths_shipped_names_dots_and_missing_weights(tmp_path, monkeypatch):
    net, card, _ = load_base("helmholtz")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "helmholtz.json").write_text("{}")  # a stray file must not shadow the shipped model
    assert load_base("helmholtz")[1]["weights_sha256"] == card["weights_sha256"]
    saved = save_base(net, card, tmp_path / "k1.5")  # a dot in the name is not a suffix
    assert (tmp_path / "k1.5.safetensors").is_file() and (tmp_path / "k1.5.json").is_file()
    assert load_base(tmp_path / "k1.5.json")[1]["weights_sha256"] == saved["weights_sha256"]
    (tmp_path / "k1.5.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file .* is missing"):
        load_base(tmp_path / "k1.5")


def test_public_api_names_resolve():
    """The top-level names of ``pinn_lora`` (lazily imported) are the objects of their modules."""
    import pinn_lora
    from pinn_lora.core.registry import get_problem
    from pinn_lora.runs.adapt import adapt_to

    for name in pinn_lora.__all__:
        assert getattr(pinn_lora, name) is not None, name
    assert pinn_lora.get_problem is get_problem and pinn_lora.adapt_to is adapt_to
    with pytest.raises(AttributeError, match="no attribute 'adaptt'"):
        pinn_lora.adaptt  # noqa: B018


def test_shipped_weights_load_exactly():
    """The float64 weights arrive unrounded (a float32 network loaded first would round them)."""
    from pinn_lora.store.tensors import load_tensors

    net, _, _ = load_base("burgers")
    stored = load_tensors(ZOO_DIR / "burgers.safetensors")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in stored.items())
