"""The command line: end to end runs (few steps), run-directory contents, and
one-line errors for bad names and values."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf

from pinn_lora.cli.common import config_dir, group_options, hydra_context
from pinn_lora.methods import get_method
from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.core.recipe import Recipe
from ours import OUR_METHODS, OUR_PROBLEMS

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pinn_lora.adapt", *args], cwd=cwd, capture_output=True, text=True,
                          env=ENV, timeout=600)


@pytest.mark.integration  # a subprocess
def test_adapt_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = _run("problem=burgers", "method=odelora", "steps=6", "lbfgs_steps=0", "n_points=256", "eval_every=3", "device=cpu",
               "continuation=off",
               f"out={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if "method=odelora(" in ln][0]
    assert "trainable=" in line and "base" in line and "adapted" in line
    for name in ("metrics.jsonl", "summary.json", "adapter.safetensors", "card.json", ".hydra/config.yaml",
                 "plots/loss.png", "plots/solution.png"):
        assert (out / name).is_file(), name
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(6))
    assert all({"loss", "loss_pde", "grad_norm", "lr"} <= set(r) for r in recs)
    assert [r["step"] for r in recs if "rel_l2" in r] == [2, 5]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coefficients"]["nu"] == pytest.approx(0.02 / math.pi)
    assert summary["adapted_error"] == pytest.approx(recs[-1]["rel_l2"])
    assert summary["base_error"] > 0.01  # the base is far from the target


@pytest.mark.integration  # a subprocess per case; tests/test_bad_input.py runs the catalogue in-process
@pytest.mark.parametrize("args,message", [
    (["problem=burger"], "unknown problem 'burger'; valid problems: allen_cahn, burgers, helmholtz"),
    (["method=lorra"], "unknown method 'lorra'; valid methods: "),
    (["problem.nu=-1", "steps=1"], "nu=-1 is out of range"),
    (["method=lora", "method.rank=0", "steps=1"], "rank=0 must be > 0"),
    (["method.scheme=rk5", "steps=1"], "scheme='rk5' is not one of"),
    (["device=cuda:0", "steps=1"], "no CUDA device"),
    (["dtype=float16", "steps=1"], "dtype='float16'"),
    (["steps=-3"], "steps=-3 must be an integer >= 0"),
    (["steps=1", "sampler=random"], "sampler='random'; choose one of pseudo, Hammersley"),
    (["steps=abc"], "steps='abc' must be an integer"),
    (["method=lora", "method.targets=5", "steps=1"], "targets=5 must be one of all, hidden, output or a list"),
    (["device=5", "steps=1"], "device=5 must be a string"),
    (["method=lora", "method.rnk=3"], "unknown key 'method.rnk' for method lora; its keys: rank, alpha"),
    (["-m", "method=lora,odelora", "method.scheme=rk4"], "unknown key 'method.scheme' for method lora"),
    (["stepz=3"], "unknown key 'stepz'; top-level keys: seed, device"),
    (["problem=helmholtz", "problem.modes=5", "steps=1"], "modes=5; give a list of pairs"),
    (["problem.nu=true", "steps=1"], "nu=True is not a number"),
])
def test_bad_input_one_line(tmp_path, args, message):
    res = _run(*args, f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("error:")]) == 1


def test_every_config_composes_and_takes_the_method_defaults():
    """Every family and every method of the registries composes (the groups are independent: each
    is composed once, beside the other group's default); every (family, method) recommendation is a
    valid set of options; a method's node is its class's declared defaults (no YAML file), the
    options the problem recommends left null."""
    assert group_options("method") == METHODS.names() and group_options("problem") == PROBLEMS.names()
    assert not (Path(config_dir()) / "method").exists()  # the nodes are built from the classes
    sections = {}
    with hydra_context():
        for prob in OUR_PROBLEMS:
            cfg = OmegaConf.to_container(compose("adapt", [f"problem={prob}"]))
            assert cfg["problem"]["name"] == prob
            assert "adapt" not in cfg["problem"] and "pretrain" not in cfg["problem"]  # the recipe: the class's
            sections[prob] = Recipe.for_family(PROBLEMS.get(prob)).adapt
        for meth in METHODS.names():
            cfg = OmegaConf.to_container(compose("adapt", [f"method={meth}"]))
            assert cfg["method"]["name"] == meth
    for prob, section in sections.items():
        for meth in METHODS.names():
            rec = section.method_options(meth, METHODS.get(meth).defaults)
            assert "lr" in rec, (prob, meth)
            get_method(meth, **rec)  # recommendations are valid options
    for meth in METHODS.names():
        node = METHODS.get(meth).config_node(meth)
        cls_defaults = get_method(meth).options
        assert set(node) - {"name"} == set(cls_defaults), meth
        for k, v in node.items():
            if k != "name" and v is not None:
                assert v == cls_defaults[k], (meth, k)
        assert node["lr"] is None  # lr: null is the problem's recommendation
    assert METHODS.get("odelora").config_node()["precondition"] is None


def test_adapt_yaml_takes_its_keys_and_defaults_from_the_schema():
    """configs/adapt.yaml's top-level keys are AdaptConfig's fields with their defaults (Hydra's schema), the
    library's keyword defaults are the same values, and a key the schema lacks in a config file is refused."""
    import inspect
    from dataclasses import fields

    from omegaconf.errors import ConfigKeyError

    from pinn_lora import adapt_to
    from pinn_lora.runs.many import adapt_many
    from pinn_lora.runs.settings import DEFAULTS, LIBRARY, LOOP_OPTIONS, AdaptConfig

    with hydra_context():
        cfg = compose("adapt", [])
    assert list(cfg) == [f.name for f in fields(AdaptConfig)]
    plain = OmegaConf.to_container(cfg)
    assert {k: plain[k] for k in LIBRARY} == LIBRARY and plain["out"] == DEFAULTS.out
    assert LIBRARY["eval_every"] == 100 and LIBRARY["checkpoint_every"] == 500 and LIBRARY["sampler"] == "pseudo"
    for fn in (adapt_to, adapt_many):
        params = inspect.signature(inspect.unwrap(fn)).parameters
        taken = {k: p.default for k, p in params.items() if k in LIBRARY and p.kind == p.KEYWORD_ONLY}
        assert taken == {k: LIBRARY[k] for k in taken}, fn.__name__
    assert set(LIBRARY) - set(inspect.signature(inspect.unwrap(adapt_to)).parameters) == set(LOOP_OPTIONS) == {
        "lm_mu", "lm_adaptive", "rad_k", "rad_c", "rad_pool", "rar_add", "stage_steps", "stage_tol"}  # loop_options
    with pytest.raises(ConfigKeyError, match="stepz"):  # what Hydra does with a YAML key the schema lacks
        OmegaConf.merge(OmegaConf.structured(AdaptConfig), {"stepz": 3})


@pytest.mark.integration  # 3 x 18 runs on the shipped bases
@pytest.mark.parametrize("problem", OUR_PROBLEMS)
def test_every_method_runs_from_the_composed_cli_config(problem):
    """What `python -m pinn_lora.adapt problem=P method=M steps=4` runs, for every method (in-process,
    a few steps on few points): each improves the residual loss or at least stays finite and completes."""
    from pinn_lora.runs.from_config import run_config

    for meth in OUR_METHODS:
        with hydra_context():
            cfg = OmegaConf.to_container(compose("adapt", [f"problem={problem}", f"method={meth}", "steps=4",
                                                           "n_points=64", "lbfgs_steps=0", "device=cpu",
                                                           "progress=false", "eval_every=4", "continuation=off"]),
                                    resolve=False)
        cfg.pop("hydra", None), cfg.pop("out", None)
        res = run_config(cfg, run_dir=None)
        assert res.history.status in ("completed", "no_improvement"), (meth, res.history.message)  # 4 steps: either
        assert res.history.steps == 4 and math.isfinite(res.error), meth
        assert res.method.name == meth


@pytest.mark.integration  # a subprocess
def test_pretrain_cli_bad_integer(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pinn_lora.pretrain", "problem=helmholtz", "steps=2.5",
                          f"out={tmp_path / 'p'}"], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "steps=2.5 must be an integer >= 0" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.integration  # a subprocess
def test_pretrain_cli_writes_a_loadable_base(tmp_path):
    out = tmp_path / "pre"
    res = subprocess.run([sys.executable, "-m", "pinn_lora.pretrain", "problem=helmholtz", "steps=3", "lbfgs_steps=2",
                          "device=cpu", "progress=false", f"out={out}"], cwd=tmp_path, capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr
    from pinn_lora.store.zoo import load_base

    net, card, problem = load_base(out / "base")
    assert card["steps"] == 5 and card["coefficients"] == {"k": 1.0}
    assert abs(problem.relative_l2(net) - card["relative_l2"]) < 1e-8  # BLAS summation order may differ
    res = _run("problem=helmholtz", "method=lora", "steps=2", "n_points=64", f"base={out / 'base'}",
               f"out={tmp_path / 'a'}", "plots=false", cwd=tmp_path)
    assert res.returncode in (0, 4), res.stderr  # 2 steps from a 5-step base: improving is not guaranteed
    assert (tmp_path / "a" / "summary.json").is_file()
    res = _run("problem=burgers", "method=lora", "steps=2", f"base={out / 'base'}", f"out={tmp_path / 'b'}",
               cwd=tmp_path)
    assert res.returncode == 2 and "base model is for problem 'helmholtz', not 'burgers'" in res.stderr


def test_pretrain_recipe_takes_second_order_steps_on_adaptive_points(tmp_path):
    """`python -m pinn_lora.pretrain ... solver=lm sampling=rad` (composed in-process): the kernel-form
    Levenberg–Marquardt step on every weight continues a base, and the card says how it was trained."""
    from pinn_lora.cli import pretrain
    from pinn_lora.store.zoo import load_base

    with hydra_context("pretrain"):
        cfg = OmegaConf.to_container(compose("pretrain", ["problem=helmholtz", "steps=3", "lbfgs_steps=0", "n_points=48",
                                                          "solver=lm", "sampling=rad", "lm_mu=0.1", "device=cpu",
                                                          "progress=false", "checkpoint_every=0"]), resolve=False)
    cfg.pop("hydra", None), cfg.pop("out", None)
    net, card = pretrain.run_config(cfg, tmp_path / "pre")
    assert card["recipe"]["optimizer"] == "levenberg-marquardt" and card["recipe"]["solver"] == "lm"
    assert card["recipe"]["sampling"] == "rad" and card["recipe"]["causal_eps"] == 0.0 and card["steps"] == 3
    _, saved, _ = load_base(tmp_path / "pre" / "base")
    assert saved["relative_l2"] == card["relative_l2"]
    cfg["solver"] = "newton"
    with pytest.raises(ValueError, match="solver='newton'; choose one of"):
        pretrain.run_config(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.integration  # a sweep in a subprocess
def test_diverged_run_exit_code_and_sweep_goes_on(tmp_path):
    res = _run("problem=helmholtz", "method=lora", "solver=method", "method.lr=1e7", "steps=30", "n_points=64", "plots=false",
               f"out={tmp_path / 'd'}", cwd=tmp_path)
    assert res.returncode == 3 and "error: diverged" in res.stderr and "Traceback" not in res.stderr
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"
    res = _run("-m", "problem=helmholtz", "method=lora", "solver=method", "method.lr=1e7,1e-3", "steps=30", "n_points=64",
               "plots=false", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").rglob("summary.json"))
    assert statuses == ["completed", "diverged"]  # every job ran
    # issue 14, item 20: the sweep names its diverged job and exits 3 (it exited 0)
    assert res.returncode == 3, res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == ("error: 1 of 2 jobs diverged: helmholtz/lora/0 "
                                                    "(see their summary.json)")


def _example_family():
    import importlib.util

    spec = importlib.util.spec_from_file_location("heat_example", Path(__file__).resolve().parents[1] / "examples"
                                                  / "custom_problem.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not registered: the registries stay as they are for the other tests
    return module.Heat


def test_a_family_without_a_yaml_gets_its_node_from_the_class():
    heat = _example_family()
    assert heat.config_node() == {"name": "heat", "kappa": None}
    recipe = Recipe.for_family(heat)
    assert recipe.adapt.method_options("lora") == {"lr": 3e-3}  # the package's recommendation
    assert recipe.adapt.method_options("odelora")["lr"] == 1e-2  # the class's override
    assert recipe.adapt.solver == "lm" and recipe.adapt.lm_mu == 0.01 and recipe.adapt.sampling == "rad"


def test_a_family_without_a_shipped_base_asks_for_base(tmp_path, monkeypatch):
    from pinn_lora.runs.adapt import ConfigError, adapt_to

    monkeypatch.chdir(tmp_path)
    heat = _example_family()
    with pytest.raises(ConfigError, match=r"problem 'heat' has no shipped base model \(shipped: allen_cahn, "
                                          r"burgers, helmholtz\); give a saved one with base=<path>"):
        adapt_to("heat", heat(kappa=0.3), "lora", steps=1, n_points=16, device="cpu", progress=False,
                 run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
