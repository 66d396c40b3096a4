"""Families and methods declared by another installed package, under the ``pinn_lora.problems``
and ``pinn_lora.methods`` entry-point groups, are found by name without a register call.

The "other package" is a module plus a ``<name>-0.0.dist-info/`` (METADATA, entry_points.txt) in a
temporary directory on PYTHONPATH: exactly what ``importlib.metadata`` reads for an installed
distribution. Each check runs in a fresh interpreter, so the registries start empty."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def fake_distribution(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())


pytestmark = pytest.mark.integration  # each case is a fresh interpreter with a fake installed distribution


def run_python(code: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_problem_family_from_entry_point(tmp_path):
    # the example's module, as another package would ship it (its main work runs only as a script)
    shutil.copy(EXAMPLES / "custom_problem.py", tmp_path / "heat_family.py")
    fake_distribution(tmp_path, "heat_family", """
        [pinn_lora.problems]
        heat = heat_family:Heat
    """)
    res = run_python("""
        import sys
        from pinn_lora.pde.problem import CoefficientError
        from pinn_lora.core.registry import PROBLEMS, get_problem

        assert "heat_family" not in sys.modules
        problem = get_problem("heat", kappa=0.3)  # no register call: the entry point imports the module
        assert "heat_family" in sys.modules
        cls = type(problem)
        assert cls is sys.modules["heat_family"].Heat and cls.__module__ == "heat_family", cls
        assert problem.kappa == 0.3 and problem.name == "heat"
        assert PROBLEMS.get("heat") is cls
        names = PROBLEMS.names()
        assert "heat" in names and "burgers" in names, names  # next to the shipped families
        try:
            get_problem("heat", kappa=-1.0)
        except CoefficientError:
            pass
        else:
            raise AssertionError("kappa=-1 was accepted")
        # the family works end to end: its reference and its residual on an (untrained) network
        import numpy as np
        import torch
        from pinn_lora.model.network import build_network
        from pinn_lora.training.trainer import residual_loss
        ref = problem.reference()
        assert ref.shape == problem.eval_points and np.isfinite(ref).all()
        net = build_network([2, 8, 1], "tanh", 0, output_transform=problem.output_transform)
        pts = torch.tensor(problem.sample(64, seed=0))
        assert torch.isfinite(residual_loss(problem, net, pts))
        print("ok", names)
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok"), res.stdout
    assert not (tmp_path / "out").exists(), "importing the example ran its main work"


def test_method_from_entry_point(tmp_path):
    (tmp_path / "my_methods.py").write_text(textwrap.dedent('''
        from pinn_lora.methods import LoRA


        class WideLoRA(LoRA):
            name = "widelora"
            summary = "LoRA with rank 8 by default (an entry-point test)"
            defaults = {**LoRA.defaults, "rank": 8}
    '''))
    fake_distribution(tmp_path, "my_methods", """
        [pinn_lora.methods]
        widelora = my_methods:WideLoRA
    """)
    res = run_python("""
        import sys
        import torch
        from pinn_lora import adapt_to
        from pinn_lora.methods import LoRA, get_method
        from pinn_lora.core.registry import METHODS, get_problem
        from pinn_lora.store.zoo import load_base

        assert "my_methods" not in sys.modules
        method = get_method("widelora", lr=1e-3)  # no register call
        cls = type(method)
        assert cls is sys.modules["my_methods"].WideLoRA and isinstance(method, LoRA), cls
        assert method.rank == 8 and method.lr == 1e-3
        names = METHODS.names()
        assert "widelora" in names and "lora" in names, names
        # by name through adapt, like a built-in method: a few steps on the shipped Helmholtz base
        net, card, _ = load_base("helmholtz")
        problem = get_problem("helmholtz", k=2.0)
        res = adapt_to((net, card), problem, "widelora", steps=3, n_points=64, device="cpu", progress=False,
                       default_monitors=False)
        assert type(res.method) is cls and res.history.status == "completed"
        rank = [min(8, lin.in_features, lin.out_features) for lin in net.linears]  # each layer's rank
        expected = sum(r * (lin.in_features + lin.out_features) for r, lin in zip(rank, net.linears))
        assert res.trainable == expected, (res.trainable, expected)
        print("ok", names)
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok"), res.stdout


def run_module(args: list[str], path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", *args], cwd=path, env=env, capture_output=True, text=True, timeout=600)


def plugin_site(tmp_path: Path) -> Path:
    """The two examples as another installed package ships them: the heat family and the VeRA method, declared
    as entry points of a fake distribution in ``tmp_path / "site"``."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(EXAMPLES / "custom_problem.py", site / "heat_family.py")
    shutil.copy(EXAMPLES / "custom_method.py", site / "vera_method.py")
    fake_distribution(site, "heat_family", """
        [pinn_lora.problems]
        heat = heat_family:Heat

        [pinn_lora.methods]
        vera = vera_method:VeRA
    """)
    return site


def test_plugin_family_and_method_on_the_command_line(tmp_path):
    """The two examples as another installed package ships them (entry points, no register call, nothing added
    to pinn_lora's files): ``python -m pinn_lora.adapt problem=heat method=vera`` runs, its config built from the
    classes; without a shipped base model it asks for ``base=`` in one line."""
    site = plugin_site(tmp_path)
    # a plugin family pretrains from the command line with the package's recipe (the class's network)
    res = run_module(["pinn_lora.pretrain", "problem=heat", "steps=5", "lbfgs_steps=0", "n_points=64",
                      "progress=false", f"out={tmp_path / 'pre'}"], site)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    card = json.loads((tmp_path / "pre" / "base.json").read_text())
    assert card["problem"] == "heat" and card["recipe"]["steps"] == 5 and card["recipe"]["lm_mu"] == 0.01
    assert [len(w) for w in [card["network"]["layers"]]] == [5]  # Heat.network: [2, 32, 32, 32, 1]

    res = run_module(["pinn_lora.adapt", "--help"], site)
    groups = res.stdout.split("== Problems and methods ==")[1].split("Examples:")[0]
    assert "heat" in groups and "vera" in groups and "burgers" in groups and "odelora" in groups, groups
    res = run_module(["pinn_lora.methods"], site)
    assert res.returncode == 0 and "vera " in res.stdout and "VeRA-style" in res.stdout, res.stdout[-2000:]

    fast = ["steps=2", "n_points=64", "eval_every=2", "device=cpu", "progress=false", "plots=false"]
    res = run_module(["pinn_lora.adapt", "problem=heat", "method=vera", *fast, f"out={tmp_path / 'nobase'}"], site)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "problem 'heat' has no shipped base model" in errors[0] and "base=<path>" in errors[0], errors
    assert not (tmp_path / "nobase").exists()

    res = run_module(["pinn_lora.adapt", "problem=heat", "method=vera", "method.rnk=3", *fast], site)
    assert res.returncode == 2 and "unknown key 'method.rnk' for method vera; its keys: rank, lr" in res.stderr

    out = tmp_path / "run"
    res = run_module(["pinn_lora.adapt", "problem=heat", "method=vera", "problem.kappa=0.3", "method.rank=4",
                      f"base={tmp_path / 'pre' / 'base'}", "continuation=off", *fast, f"out={out}"], site)
    assert res.returncode in (0, 4), res.stderr[-3000:]  # 2 steps: improving on the base is not guaranteed
    import yaml

    summary = json.loads((out / "summary.json").read_text())
    assert summary["coefficients"] == {"kappa": 0.3} and summary["status"] in ("completed", "no_improvement")
    cfg = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    assert cfg["problem"] == {"name": "heat", "kappa": 0.3}  # the recipe is the class's
    assert summary["settings"]["solver"] == "lm" and summary["settings"]["lm_mu"] == 0.01  # the package's recipe
    assert cfg["method"] == {"name": "vera", "rank": 4, "lr": None, "schedule": "cosine", "final_ratio": 0.1}
    card = json.loads((out / "card.json").read_text())
    assert card["method"]["name"] == "vera" and card["method"]["lr"] == 3e-3  # the family's default recommendation


def test_an_installed_plugin_breaks_none_of_our_registry_tests(tmp_path):
    """With a plugin family and method installed beside pinn_lora, the suite's registry, recipe and command-line
    tests still pass: they pin our own entry points (tests/ours.py), not the registries' whole content."""
    site = plugin_site(tmp_path)
    check = run_python("from pinn_lora.core.registry import METHODS, PROBLEMS\n"
                       "assert 'heat' in PROBLEMS.names() and 'vera' in METHODS.names()", site)
    assert check.returncode == 0, check.stderr[-2000:]
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                          "-m", "not integration", "-k", "not every_entry_path",
                          *(str(tests / f) for f in ("test_problems.py", "test_recommendations.py", "test_cli.py",
                                                     "test_zoo.py"))],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:]
    assert " passed" in res.stdout and "failed" not in res.stdout.splitlines()[-1], res.stdout[-1000:]
