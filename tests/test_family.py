"""Families over a coefficient range (pinn_lora.family): the adapter bank's interpolation, its anchors,
its files and its refusals, on a tiny Helmholtz base (a few steps per anchor; its reference is a sum of modes,
so the many coefficients cost no reference solves)."""
import json
import math

import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

import pinn_lora
from pinn_lora.store.tensors import CheckpointError
from pinn_lora.runs.range_build import build_family
from pinn_lora.runs.ranges import FamilyError, load_family, merged_state
from pinn_lora.training.trainer import TrainConfig

FAST = dict(steps=1, n_points=32, continuation="off", eval_every=1)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    prob = pinn_lora.get_problem("helmholtz")
    path = tmp_path_factory.mktemp("base") / "tiny"
    pinn_lora.pretrain_base(prob, layers=[2, 12, 12, 1], activation="sin",
                            train=TrainConfig(steps=20, n_points=64, progress=False, eval_every=20), lr=1e-2, out=path)
    return path


@pytest.fixture(scope="module")
def family(tiny_base, tmp_path_factory):
    prob = pinn_lora.get_problem("helmholtz")
    out = tmp_path_factory.mktemp("fam") / "f"
    fam = build_family(prob, "k", 0.5, 2.0, "lora", base=tiny_base, anchors=4, device="cpu", progress=False,
                       out=out, plots=False, **FAST)
    return fam, out


def test_anchors_are_the_ends_the_middle_then_the_worst_midpoint(family):
    fam, _ = family
    assert len(fam.anchors) == 4 and fam.anchors[0] == 0.5 and fam.anchors[-1] == 2.0
    assert any(abs(a - math.sqrt(0.5 * (0.5**2 + 2.0**2))) < 1e-15 for a in fam.anchors)  # the middle, in k^2
    checks = fam.card["midpoint_checks"]
    first = [c for c in checks if c["anchors"] == 3]  # the two segments' midpoints before the fourth anchor
    worst = max(first, key=lambda c: c["validation_residual"])
    assert any(abs(a - worst["value"]) < 1e-15 for a in fam.anchors)
    added = [a for a in fam.card["anchors"] if a["reason"].startswith("largest midpoint residual")]
    assert len(added) == 1 and added[0]["value"] == pytest.approx(worst["value"], rel=1e-15)


def test_exact_at_anchors_and_linear_in_the_coefficients_coordinate_between(family, tiny_base):
    fam, _ = family
    a = fam.anchors[1]
    same = pinn_lora.adapt_to(tiny_base, pinn_lora.get_problem("helmholtz", k=a), "lora", device="cpu", plots=False,
                              progress=False, **FAST)
    x = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = same.model(x)
    assert float((fam(a)(x) - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    want = merged_state(same.model)
    assert all(torch.equal(fam.weights(a)[k], want[k]) for k in want)
    b = fam.anchors[2]
    mid = math.sqrt(0.5 * (a * a + b * b))
    wa, wb, wm = fam.weights(a), fam.weights(b), fam.weights(mid)
    for k in wa:
        assert torch.allclose(wm[k], 0.5 * (wa[k] + wb[k]), rtol=0, atol=1e-14)


def test_a_saved_family_answers_bit_identically_and_its_card_is_checked(family, tmp_path):
    fam, out = family
    loaded = load_family(out)
    x = torch.rand(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for v in (0.5, 0.71, fam.anchors[1], 1.9, 2.0):
        assert torch.equal(loaded(v)(x), fam(v)(x))
    card = json.loads((out / "family.json").read_text())
    assert card["kind"] == "pinn_lora.family" and card["method"]["name"] == "lora" and card["range"] == [0.5, 2.0]
    # an edited card (a wider range) no longer matches its weights
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    card["range"] = [0.4, 2.0]
    (copy / "family.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="range"):
        load_family(copy)
    card.pop("anchors")
    (copy / "family.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="anchors"):
        load_family(copy)


def test_a_family_is_never_written_over_another(family, tiny_base):
    fam, out = family
    before = (out / "family.safetensors").read_bytes()
    with pytest.raises(FamilyError, match="already holds a family"):
        fam.save(out)
    with pytest.raises(FamilyError, match="already holds a family"):
        build_family(pinn_lora.get_problem("helmholtz"), "k", 0.5, 2.0, "lora", base=tiny_base, out=out,
                     device="cpu", progress=False, **FAST)
    assert (out / "family.safetensors").read_bytes() == before


@pytest.mark.parametrize("value, match", [(0.49, "outside the family's range"), (2.1, "outside"),
                                          (float("nan"), "give a number"), ("1.0", "give a number")])
def test_a_query_outside_the_range_is_refused(family, value, match):
    with pytest.raises(FamilyError, match=match):
        family[0](value)


@pytest.mark.parametrize("kw, match", [(dict(over="k", low=2.0, high=0.5), "low < high"),
                                       (dict(over="nu", low=0.5, high=2.0), "coefficients k"),
                                       (dict(over="k", low=0.5, high=2.0, anchors=1), "at least 2 anchors"),
                                       (dict(over="k", low=-1.0, high=2.0), "k")])
def test_bad_ranges_are_refused_before_any_training(tiny_base, kw, match):
    kw = {"anchors": 3, **kw}
    with pytest.raises(ValueError, match=match):
        build_family(pinn_lora.get_problem("helmholtz"), kw.pop("over"), kw.pop("low"), kw.pop("high"), "lora",
                     base=tiny_base, device="cpu", progress=False, **kw, **FAST)


def test_the_command_builds_a_family_in_its_run_directory(tiny_base, tmp_path):
    from pinn_lora.cli import family as command
    from pinn_lora.cli.common import hydra_context

    with hydra_context("family"):
        cfg = OmegaConf.to_container(compose("family", ["problem=helmholtz", "method=lora", "over=k", "low=0.8",
                                                        "high=1.2", "anchors=2", "steps=1", "n_points=32",
                                                        f"base={tiny_base}", "device=cpu", "progress=false"]),
                                     resolve=False)
    cfg.pop("hydra", None), cfg.pop("out", None)
    fam = command.run_config(cfg, tmp_path / "f")
    assert fam.anchors == [0.8, 1.2] and (tmp_path / "f" / "plots" / "family.png").is_file()
    assert load_family(tmp_path / "f")(1.1) is not None
    for key, value, match in (("low", None, "low is required"), ("low", 2.0, "low < high"),
                              ("tol", -1, "tol=-1 must be"), ("interpolate", "quintic", "interpolate='quintic'")):
        bad = {**cfg, key: value}
        with pytest.raises(ValueError, match=match):
            command.run_config(bad, tmp_path / "g")
        assert not (tmp_path / "g").exists()  # refused before the run directory is claimed


@pytest.fixture(scope="module")
def hyper(tiny_base, tmp_path_factory):
    from pinn_lora.runs.range_build import build_hyper_family

    out = tmp_path_factory.mktemp("hyper") / "h"
    fam = build_hyper_family(pinn_lora.get_problem("helmholtz"), "k", 0.5, 2.0, base=tiny_base, rank=3, width=8,
                             steps=3, n_points=24, per_step=2, resample_every=2, device="cpu", progress=False, out=out)
    return fam, out


def test_the_hyper_adapter_at_a_coefficient_is_the_lora_adapter_it_produces(hyper, tiny_base):
    """Query at c = the base with LoRA attached normally (rank 3, scale 1), B_l = B·diag(g_l(ξ(c))), A_l = A."""
    fam, _ = hyper
    value = 1.37
    net, card, _ = pinn_lora.load_base(tiny_base)
    model = pinn_lora.attach(net, "lora", pinn_lora.get_problem("helmholtz", k=value), rank=3, alpha=3.0)
    cond = fam.conditioned
    with torch.no_grad():
        for (_, lay), b, a, g in zip(pinn_lora.model.adapters.adapter_layers(model), cond.B, cond.A,
                                     cond.gains(fam.xi(value))):
            lay.lora_B.copy_(b * g)
            lay.lora_A.copy_(a)
    x = torch.rand(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = model(x).detach()
    assert float((fam(value)(x) - want).abs().max()) <= 1e-12 * float(want.abs().max())
    assert any(float(b.abs().max()) > 0 for b in cond.B)  # the steps moved it off the base


def test_a_saved_hyper_family_answers_bit_identically(hyper):
    fam, out = hyper
    loaded = load_family(out)
    x = torch.rand(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for v in (0.5, 0.93, 2.0):
        assert torch.equal(loaded(v)(x), fam(v)(x))
    with pytest.raises(FamilyError, match="outside"):
        loaded(2.01)


def test_solution_interpolation_blends_the_neighbouring_anchors(family):
    fam, _ = family
    a, b = fam.anchors[0], fam.anchors[1]
    mid = math.sqrt(0.5 * (a * a + b * b))  # the middle in k^2
    x = torch.rand(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    choice = fam.card["interpolate_choice"]  # interpolate=auto: the smaller worst midpoint residual decides
    assert fam.card["interpolate"] == min(choice, key=choice.get) == fam.interpolate
    built = fam.interpolate
    try:
        fam.interpolate = "solution"
        ua, ub = fam(a)(x), fam(b)(x)
        assert torch.allclose(fam(mid)(x), 0.5 * (ua + ub), rtol=0, atol=1e-14)
        assert torch.equal(fam(a)(x), ua)  # at an anchor: that anchor's network
        fam.interpolate = "weights"
        assert not torch.allclose(fam(mid)(x), 0.5 * (ua + ub), rtol=0, atol=1e-10)  # weights: another answer
    finally:
        fam.interpolate = built


def test_cubic_interpolation_is_the_lagrange_polynomial_of_four_anchors(family):
    """interpolate=cubic: exact at every anchor (1e-12), and between anchors Σ w_k u_k with the Lagrange weights of
    the four anchors around the value in the coordinate (k² here), which reproduce any cubic in k² exactly."""
    from pinn_lora.runs.ranges import lagrange_weights

    fam, _ = family
    x = torch.rand(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    built = fam.interpolate
    try:
        fam.interpolate = "cubic"
        for a, state in zip(fam.anchors, fam.states):
            ref = fam._network(state, a)(x)
            assert float((fam(a)(x) - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
        value = 0.5 * (fam.anchors[0] + fam.anchors[1])
        idx, w = fam.stencil(value)
        assert idx == [0, 1, 2, 3] and abs(sum(w) - 1) <= 1e-14
        c = [fam.spec.coordinate(fam.anchors[k]) for k in idx]
        poly = lambda z: 2 - 3 * z + 0.5 * z**2 - 0.25 * z**3  # noqa: E731
        assert abs(sum(wk * poly(ck) for wk, ck in zip(w, c)) - poly(value**2)) <= 1e-12
        us = [fam._network(fam.states[k], value)(x) for k in idx]
        assert torch.allclose(fam(value)(x), sum(wk * u for wk, u in zip(w, us)), rtol=0, atol=1e-13)
    finally:
        fam.interpolate = built
    assert lagrange_weights([0.0, 1.0], 0.25) == [0.75, 0.25]


def test_warm_started_anchors_start_from_their_nearest_neighbour(tiny_base):
    """warm_start: each anchor after the first is adapted from the nearest anchor already placed: the high end's
    weights are exactly those of an adaptation started from the low anchor's network."""
    prob = pinn_lora.get_problem("helmholtz")
    kw = dict(base=tiny_base, anchors=3, device="cpu", progress=False, plots=False, **FAST)
    warm = build_family(prob, "k", 0.5, 2.0, "lora", warm_start=True, **kw)
    cold = build_family(prob, "k", 0.5, 2.0, "lora", **kw)
    rows = {r["value"]: r for r in warm.card["anchors"]}
    assert rows[0.5]["from"] is None and rows[2.0]["from"] == 0.5
    middle = next(r for v, r in rows.items() if v not in (0.5, 2.0))
    assert middle["from"] == 0.5  # equally far from both ends in k²: the first placed
    assert warm.card["build"]["warm_start"] is True and cold.card["build"]["warm_start"] is False
    assert all(torch.equal(warm.states[0][k], cold.states[0][k]) for k in warm.states[0])  # the first: from the base
    from pinn_lora.runs.adapt import resolve_base

    _, card = resolve_base(str(tiny_base), prob, torch.float64, torch.device("cpu"))
    low = warm.query(0.5)  # a plain network with the low anchor's weights
    again = pinn_lora.adapt_to((low, {**card, "coefficients": {"k": 0.5}}), prob.with_coefficients(k=2.0), "lora",
                               device="cpu", progress=False, plots=False, **FAST)
    want = merged_state(again.model)
    assert all(torch.equal(warm.states[-1][k], want[k]) for k in want)
    assert not all(torch.equal(warm.states[-1][k], cold.states[-1][k]) for k in want)  # not the cold start


def test_values_spread_over_a_range_stay_inside_it():
    from pinn_lora.runs.range_build import spread

    spec = next(c for c in pinn_lora.get_problem("burgers").coefficient_specs if c.name == "nu")
    low, high = 0.005 / math.pi, 0.05 / math.pi
    values = spread(spec, low, high, 9)
    assert values[0] == low and values[-1] == high and all(low <= v <= high for v in values)
    assert values == sorted(values) and len(set(values)) == 9
