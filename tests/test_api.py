"""The library surface: attach to any PINN module, save/load adapters with a base check, merge,
evaluate against the reference."""
import copy
import json

import numpy as np
import pytest
import torch

import pinn_lora
from pinn_lora.runs.adapter_io import AdapterMismatchError, base_description, fingerprint
from pinn_lora.store.tensors import CheckpointError
from pinn_lora.model.network import build_network, to_deepxde
from pinn_lora.core.registry import METHODS, get_problem
from ours import OUR_METHODS

HELM = get_problem("helmholtz", k=2.0)


def small_base(seed=1):
    net = build_network([2, 12, 12, 1], "sin", seed=seed, output_transform=HELM.output_transform)
    return net, {"problem": "helmholtz", "coefficients": {"k": 1.0}, "network": net.architecture()}


def perturbed(model, seed=0):
    """Move every trainable tensor, so a saved adapter differs from its start."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def test_attach_keeps_output_and_base_frozen_against_requires_grad():
    net, card = small_base()
    x = torch.as_tensor(HELM.sample(64, seed=0))
    before = net(x).detach()
    model = pinn_lora.attach(net, "lora", HELM, rank=3, targets="hidden", base_card=card)
    assert torch.equal(model(x), before)
    n = sum(p.numel() for p in model.parameters())
    model.requires_grad_()  # what DeepXDE's Model does at every evaluation
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n
    assert n == (12 * 2 + 2 * 2) + (12 * 3 + 3 * 12)  # layer 0 at rank min(3, 2) = 2, layer 1 at 3
    assert model.pinn_lora_base["fingerprint"] == fingerprint(small_base()[0])


def test_attach_errors_are_clear():
    with pytest.raises(TypeError, match="'linears' is a ModuleList"):
        pinn_lora.attach(torch.nn.Sequential(torch.nn.Linear(2, 1)), "lora")
    with pytest.raises(ValueError, match="needs a loss to start from"):
        pinn_lora.attach(small_base()[0], "odelora")  # gradient start, no problem
    with pytest.raises(TypeError, match="not both"):
        pinn_lora.attach(small_base()[0], pinn_lora.get_method("lora"), HELM, rank=2)


@pytest.mark.parametrize("name", OUR_METHODS)
def test_save_load_round_trip_every_method(name, tmp_path):
    net, card = small_base()
    model = perturbed(pinn_lora.attach(copy.deepcopy(net), name, HELM, seed=3, base_card=card))
    method_obj = pinn_lora.get_method(name)
    x = torch.as_tensor(HELM.sample(128, seed=1))
    want = model(x).detach()
    saved = pinn_lora.save_adapter(model, tmp_path / "a", method_obj, HELM)
    assert saved["base"]["fingerprint"] == fingerprint(net) and saved["method"]["name"] == name
    onto_base = pinn_lora.load_adapter(tmp_path / "a", base=copy.deepcopy(net))
    rebuilt = pinn_lora.load_adapter(tmp_path / "a")  # the base architecture from the card
    for loaded in (onto_base, rebuilt):
        assert torch.equal(loaded.model(x), want)
        assert loaded.problem == HELM and loaded.method.name == name
    merged = pinn_lora.merge_adapters(copy.deepcopy(rebuilt.model))
    assert not list(pinn_lora.model.adapters.adapter_layers(merged))
    assert torch.allclose(merged(x), want, atol=1e-12, rtol=0)


def test_wrong_base_is_refused_with_what_differs(tmp_path):
    net, card = small_base()
    model = perturbed(pinn_lora.attach(copy.deepcopy(net), "lora", HELM, base_card=card))
    pinn_lora.save_adapter(model, tmp_path / "a", pinn_lora.get_method("lora"), HELM)
    with pytest.raises(AdapterMismatchError, match=r"layers \[2, 64, 64, 64, 1\] instead of \[2, 12, 12, 1\]"):
        pinn_lora.load_adapter(tmp_path / "a", base="helmholtz")
    other, _ = small_base(seed=2)  # same architecture, other weights
    with pytest.raises(AdapterMismatchError, match="different weights"):
        pinn_lora.load_adapter(tmp_path / "a", base=other)
    wide = build_network([2, 12, 12, 1], "tanh", seed=1)
    with pytest.raises(AdapterMismatchError, match="activation tanh instead of sin"):
        pinn_lora.load_adapter(tmp_path / "a", base=wide)
    # the same base in float32 is the same base
    assert pinn_lora.load_adapter(tmp_path / "a", base=copy.deepcopy(net).float()).model is not None


def test_shipped_base_checked_by_family_and_fingerprint(tmp_path):
    prob = get_problem("burgers").default_target()
    net, card, _ = pinn_lora.load_base("burgers")
    model = perturbed(pinn_lora.attach(net, "rslora", prob, base_card=card))
    pinn_lora.save_adapter(model, tmp_path / "a", pinn_lora.get_method("rslora"), prob)
    saved = json.loads((tmp_path / "a" / "card.json").read_text())
    assert saved["base"]["weights_sha256"] == card["weights_sha256"]
    assert saved["base"]["problem"] == "burgers" and saved["layer_ranks"] == {"0": 2, "1": 4, "2": 4, "3": 4, "4": 1}
    x = torch.as_tensor(prob.sample(64, seed=0))
    loaded = pinn_lora.load_adapter(tmp_path / "a", base="burgers", dtype=torch.float32)
    assert torch.allclose(loaded.model(x.float()).double(), model(x), atol=1e-5)
    with pytest.raises(AdapterMismatchError, match="family"):  # Allen–Cahn's base has Burgers' architecture
        pinn_lora.load_adapter(tmp_path / "a", base="allen_cahn")


def test_tampered_or_foreign_files_are_refused(tmp_path):
    net, card = small_base()
    model = pinn_lora.attach(net, "lora", HELM, base_card=card)
    pinn_lora.save_adapter(model, tmp_path / "a", pinn_lora.get_method("lora"), HELM)
    raw = (tmp_path / "a" / "adapter.safetensors").read_bytes()
    (tmp_path / "a" / "adapter.safetensors").write_bytes(raw[:-8])
    with pytest.raises(CheckpointError):
        pinn_lora.load_adapter(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "card.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(CheckpointError, match="not a pinn_lora adapter card"):
        pinn_lora.load_adapter(tmp_path / "b")
    with pytest.raises(ValueError, match="base model is unknown"):
        pinn_lora.save_adapter(torch.nn.Linear(2, 2), tmp_path / "c", pinn_lora.get_method("lora"))


def test_evaluate_on_default_and_custom_grids():
    net, _, _ = pinn_lora.load_base("helmholtz")
    src = get_problem("helmholtz")
    ev = pinn_lora.evaluate(net, src)
    assert ev.prediction.shape == ev.reference.shape == tuple(src.eval_points)
    assert abs(ev.rel_l2 - src.relative_l2(net)) < 1e-12
    axes = (np.linspace(-1, 1, 7), np.linspace(-0.5, 0.5, 5))
    small = pinn_lora.evaluate(net, src, axes)
    assert small.error.shape == (7, 5) and small.max_abs_error < 0.05
    with torch.no_grad():
        u = net(torch.tensor([[axes[0][3], axes[1][2]]])).item()
    assert abs(small.prediction[3, 2] - u) < 1e-12
    with pytest.raises(ValueError, match="2 variables"):
        pinn_lora.evaluate(net, src, (np.zeros(3),))


def test_adapt_a_bare_network_and_a_deepxde_fnn(tmp_path):
    """``adapt`` takes any module with ``linears``; the saved card describes that base."""
    net, _ = small_base()
    fnn = to_deepxde(net)
    results = [pinn_lora.adapt_to(n, HELM, "lora", steps=3, n_points=64, device="cpu", progress=False,
                                  plots=False, recommended={}, run_dir=tmp_path / f"r{i}")
               for i, n in enumerate((net, fnn))]
    assert results[0].history.records[-1]["loss"] == pytest.approx(results[1].history.records[-1]["loss"], rel=1e-12)
    for i in range(2):
        card = json.loads((tmp_path / f"r{i}" / "card.json").read_text())
        assert card["base"] == base_description(net, {"problem": "helmholtz"})
    assert pinn_lora.load_adapter(tmp_path / "r1", base=fnn).model is not None
