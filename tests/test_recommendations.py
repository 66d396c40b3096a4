"""The recipe (pinn_lora.core.recipe): every default declared once, a family stating only what differs, and every
entry path (the command line, adapt_to, adapt_many, the coefficient-range build, a plugin family) resolving the
same request to the same settings, field by field."""
import math
from dataclasses import fields

import pytest
from omegaconf import OmegaConf

import pinn_lora
from pinn_lora.cli.common import hydra_context
from pinn_lora.core.recipe import Adaptation, Recipe, RecipeError, field_of, markdown_table
from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.problems.allen_cahn import AllenCahn
from pinn_lora.problems.burgers import Burgers
from pinn_lora.problems.helmholtz import Helmholtz
from pinn_lora.runs.resolve import resolve_settings

OURS = {"allen_cahn": AllenCahn, "burgers": Burgers, "helmholtz": Helmholtz}  # our own entries, not the registry's
BUILT_IN_METHODS = ["asymlora", "c3la", "cla", "cola", "dora", "full", "loraplus", "lora", "odelora", "odlora",
                    "paca", "pissa", "rac", "rc3la", "rcla", "riemannian", "rslora", "scratch"]
ODELORA = {"allen_cahn": {"lr": 1.0e-3, "precondition": "rmsprop"},
           "burgers": {"lr": 1.0e-3, "precondition": "rmsprop"},
           "helmholtz": {"lr": 0.1, "precondition": "none"}}


def expected(family: str, method: str) -> dict:
    """The shipped recommendations: lr 1e-3 for the methods that train every weight, ODELoRA's own per family,
    lr 3e-3 for every other adapter."""
    if method in ("scratch", "full"):
        return {"lr": 1.0e-3}
    if method == "odelora":
        return ODELORA[family]
    return {"lr": 3.0e-3}


def test_our_entries_are_registered():
    """Our own entry points are in the registries (an installed plugin may add more: the registry is not pinned)."""
    assert set(OURS) <= set(PROBLEMS.names()) and all(PROBLEMS.get(k) is v for k, v in OURS.items())
    assert set(BUILT_IN_METHODS) <= set(METHODS.names())


@pytest.mark.parametrize("family", sorted(OURS))
def test_recommended_method_options_of_every_pair(family):
    adapt = Recipe.for_family(OURS[family]).adapt
    for method in BUILT_IN_METHODS:
        got = adapt.method_options(method, METHODS.get(method).defaults)
        want = expected(family, method)
        assert got.keys() == want.keys(), (family, method, got)
        for key, value in want.items():
            assert got[key] == value and (not isinstance(value, float) or math.isclose(got[key], value)), (family, key)
        meth = pinn_lora.get_method(method, **got)
        assert all(meth.options[k] == v for k, v in want.items()), (family, method)


def test_the_shipped_families_recipes_are_the_measured_ones():
    """Each shipped family's resolved recipe, pinned: the package's with what the class states."""
    b, a, h = (Recipe.for_family(OURS[f]).adapt for f in ("burgers", "allen_cahn", "helmholtz"))
    for r in (b, a, h):
        assert (r.solver, r.steps, r.n_points, r.resample_every, r.lbfgs_steps, r.continuation, r.lm_mu) == \
            ("lm", 20, 4000, 5, 0, "auto", 0.01)
    assert (b.sampling, a.sampling, h.sampling) == ("rad", "uniform", "rad")
    assert [(r.first_order.steps, r.first_order.n_points, r.first_order.lbfgs_steps) for r in (b, a, h)] == [
        (300, 4000, 800), (2000, 2000, 0), (1000, 2000, 0)]
    pb, pa, ph = (Recipe.for_family(OURS[f]).pretrain for f in ("burgers", "allen_cahn", "helmholtz"))
    assert (pb.steps, pa.steps, ph.steps) == (15000, 12000, 8000)
    assert (pb.causal_eps, pa.causal_eps, ph.causal_eps) == (0.0, 20.0, 0.0)
    assert (pb.lbfgs_steps, pa.lbfgs_steps, ph.lbfgs_steps, ph.lbfgs_points) == (3000, 3500, 1500, 4000)


def test_a_plugin_family_gets_exactly_the_packages_recipe():
    class Plain(Burgers):
        name = "plain_test_family"
        recipe = {}

    assert Recipe.for_family(Plain) == Recipe()
    assert Recipe.for_family(Burgers) == Recipe()  # Burgers states nothing: its recipe is the package's


def test_every_setting_is_declared_with_help_type_and_default():
    for section in (Recipe().adapt, Recipe().adapt.first_order, Recipe().pretrain):
        for f in fields(section):
            assert f.metadata.get("help"), f.name
            assert "kind" in f.metadata, f.name
    table = markdown_table()
    assert "| `lm_mu` | `0.01` |" in table and "| `first_order.steps` | `300` |" in table


@pytest.mark.parametrize("change, message", [
    ({"stepz": 3}, "unknown setting stepz"), ({"lm_mu": 0}, r"lm_mu=0; expected a finite number > 0"),
    ({"sampling": "bogus"}, "sampling='bogus'; expected one of uniform, rad, rar_d"),
    ({"steps": True}, "steps=True"), ({"first_order": {"steps": -1}}, r"first_order: steps=-1; expected an integer >= 0"),
    ({"pretrain": {"lr": float("nan")}}, r"pretrain: lr=nan")])
def test_a_bad_override_is_refused_naming_the_setting(change, message):
    with pytest.raises(RecipeError, match=message):
        Recipe().with_changes(change)


def _cli_settings(overrides):
    from hydra import compose

    from pinn_lora.runs.from_config import run_config

    with hydra_context():
        cfg = OmegaConf.to_container(compose("adapt", overrides), resolve=False)
    cfg.pop("hydra", None), cfg.pop("out", None)
    return run_config(cfg, run_dir=None).summary()["settings"]


RECIPE = [f.name for f in fields(Adaptation) if f.name not in ("first_order", "method")]


def recipe_part(settings):
    """The recipe's settings a run recorded (those acting on its path: no stage rule without continuation ...)."""
    return {k: v for k, v in settings.items() if k in RECIPE}


@pytest.fixture(scope="module")
def tiny_helmholtz(tmp_path_factory):
    """A tiny saved Helmholtz base (k = 1), so each path's run takes a fraction of a second."""
    from pinn_lora.training.trainer import TrainConfig

    path = tmp_path_factory.mktemp("base") / "tiny"
    pinn_lora.pretrain_base(pinn_lora.get_problem("helmholtz"), layers=[2, 8, 8, 1], activation="sin", lr=1e-2,
                            train=TrainConfig(steps=2, n_points=32, progress=False, eval_every=2), out=path)
    return str(path)


def test_every_entry_path_resolves_the_same_request_to_the_same_settings(monkeypatch, tiny_helmholtz):
    """One request (Helmholtz k=1.2, lora, 1 step on 48 points, no continuation) through the command line,
    adapt_to, the coefficient-range build and a plugin family (a copy of Helmholtz with no recipe of its own,
    equal to the package's: so, like Burgers, the package's recipe) agrees field by field; adapt_many's
    copies take first-order steps and agree with adapt_to(solver="method")."""
    common = dict(steps=1, n_points=48, device="cpu", progress=False, plots=False, eval_every=1,
                  continuation="off")
    prob = pinn_lora.get_problem("helmholtz", k=1.2)
    lib = pinn_lora.adapt_to(tiny_helmholtz, prob, "lora", **common).summary()["settings"]
    cli = _cli_settings(["problem=helmholtz", "method=lora", "problem.k=1.2", "steps=1", "n_points=48",
                         "device=cpu", "progress=false", "plots=false", "eval_every=1", "continuation=off",
                         f"base={tiny_helmholtz}"])
    assert recipe_part(cli) == recipe_part(lib) and len(recipe_part(lib)) >= 10
    assert lib["lm_mu"] == 0.01 and lib["sampling"] == "rad" and lib["solver"] == "lm"
    seen = {}
    real = pinn_lora.adapt_to

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        seen.setdefault("settings", res.summary()["settings"])
        return res

    import pinn_lora.runs.adapt as adapt_module

    monkeypatch.setattr(adapt_module, "adapt_to", spy)  # build_family takes it from there at each anchor
    pinn_lora.build_family(prob, "k", 1.1, 1.3, "lora", anchors=2, seed=0, base=tiny_helmholtz, **common)
    assert recipe_part(seen["settings"]) == recipe_part(lib)

    class Plugin(Helmholtz):  # a family with no recipe of its own: the package's
        recipe = {}

    plug = resolve_settings(Plugin(k=1.2), "lora", {"steps": 1, "n_points": 48, "continuation": "off"}).settings
    assert {k: plug[k] for k in recipe_part(lib)} == recipe_part(lib)
    first = pinn_lora.adapt_to(tiny_helmholtz, prob, "lora", solver="method", **common).summary()["settings"]
    many = pinn_lora.adapt_many(tiny_helmholtz, [prob], "lora", steps=1, n_points=48, device="cpu", progress=False,
                                plots=False, eval_every=1)[0].summary()["settings"]
    assert {k: many[k] for k in ("steps", "n_points", "resample_every", "eval_every")} == \
        {k: first[k] for k in ("steps", "n_points", "resample_every", "eval_every")}
    assert first["resample_every"] == Recipe.for_family(Helmholtz).adapt.first_order.resample_every


def test_adapt_configs_take_their_help_from_the_recipe():
    from pinn_lora.runs.settings import AdaptConfig

    by_name = {f.name: f for f in fields(AdaptConfig)}
    for name in RECIPE:
        assert by_name[name].default is None  # null: the family's recipe
        assert field_of(name).metadata["help"] in by_name[name].metadata["help"]


def test_the_cli_page_shows_the_recipe_as_declared():
    """docs/cli.md's recipe table is generated from the declarations (python -m pinn_lora.core.recipe docs/cli.md)."""
    from pathlib import Path

    from pinn_lora.core.recipe import render

    page = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert render(page.read_text()) == page.read_text(), "stale: run python -m pinn_lora.core.recipe docs/cli.md"
