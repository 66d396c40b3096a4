"""The wheel, installed into a fresh virtual environment, imports its own copy (not the checkout),
finds its configs, problems and shipped base models, and runs the command line from another directory
(one holding a ``problems/`` package of its own, which the families, installed as ``pinn_lora.problems``,
do not collide with).

The fresh environment has no system site-packages. Its dependencies (torch, deepxde, hydra, ...) come
from this test's own environment through a ``.pth`` file that lists this environment's site-packages
directories as plain paths: Python adds them to ``sys.path`` after the venv's own site-packages but does
not run *their* ``.pth`` files, so an editable install of the checkout (setuptools' ``__editable__``
finder, installed by a ``.pth`` hook) is not active there, and a regular install of pinn_lora in this
environment would come after the venv's copy. Nothing is downloaded (``--no-deps --no-index``).
(``python -m venv --system-site-packages`` would not do: it exposes the *base* interpreter's
site-packages, which, when the tests run in a venv, is not where torch is.)"""
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # builds a wheel into a fresh venv

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "pinn_lora", "problems", "configs", "hydra_plugins", "setup.py", "setup.cfg",
                "MANIFEST.in", "LICENSE")


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, (cmd, res.stdout[-3000:], res.stderr[-3000:])
    return res


def _dependency_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def test_wheel_in_a_fresh_venv_runs_from_elsewhere(tmp_path):
    # build from a clean copy of what the build reads (no stale build/ or egg-info of the checkout)
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", wheels, src])
    wheel = next(wheels.glob("pinn_lora-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        env=env).stdout.strip())
    _run([bindir / "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel], env=env)
    # the dependencies only after the install: with this environment visible, pip would take a regular
    # install of pinn_lora here (CI's) as "already satisfied" and not install the wheel
    (purelib / "_test_env_dependencies.pth").write_text("\n".join(_dependency_dirs()) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "problems").mkdir()  # a user's own package of that name (one that fails on import) is theirs alone
    (work / "problems" / "__init__.py").write_text('raise ImportError("the user\'s own problems package")\n')
    probe = (
        "import json, sys, importlib.metadata as md, pinn_lora, pinn_lora.cli.common as cli\n"
        "import pinn_lora.problems as problems\n"
        "from pinn_lora.store.zoo import ZOO_DIR, load_base, shipped\n"
        "print(json.dumps({'pinn_lora': pinn_lora.__file__, 'configs': cli.config_dir(), 'problems': problems.__file__,"
        " 'zoo': str(ZOO_DIR), 'shipped': shipped(), 'dist': str(md.distribution('pinn_lora').locate_file('')),"
        " 'problem_names': pinn_lora.PROBLEMS.names(), 'methods': pinn_lora.METHODS.names(),"
        " 'finders': [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path],"
        " 'modules': [m for m in sys.modules if 'editable' in m], 'base_ok': load_base('burgers')[1]['problem']}))"
    )
    found = json.loads(_run([python, "-c", probe], cwd=work, env=env).stdout.strip().splitlines()[-1])
    for key in ("pinn_lora", "configs", "problems", "zoo", "dist"):
        assert Path(found[key]).resolve().is_relative_to(purelib.resolve()), (key, found[key])  # not the checkout
    assert not any("Editable" in f for f in found["finders"]) and found["modules"] == []
    from pinn_lora.core.registry import METHODS, PROBLEMS
    from pinn_lora.store.zoo import shipped

    assert found["shipped"] == shipped() == PROBLEMS.names() and found["base_ok"] == "burgers"
    assert found["problem_names"] == PROBLEMS.names() and found["methods"] == METHODS.names()

    res = _run([python, "-m", "pinn_lora.adapt", "problem=burgers", "method=lora", "steps=3", "n_points=64", "continuation=off",
                "lbfgs_steps=0", "eval_every=3", "device=cpu", "progress=false", "plots=false", "out=run"],
               cwd=work, env=env)
    assert "burgers" in res.stdout and "method=lora" in res.stdout
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "completed"
    assert (work / "run" / "adapter.safetensors").is_file() and (work / "run" / ".hydra" / "config.yaml").is_file()


def test_a_problems_package_in_the_working_directory_does_not_shadow_the_families(tmp_path):
    """The families install as ``pinn_lora.problems``: a user's own ``problems/`` (here one that fails on
    import) in the directory Python starts in is theirs alone, and the shipped families still load."""
    (tmp_path / "problems").mkdir()
    (tmp_path / "problems" / "__init__.py").write_text('raise ImportError("the user\'s own problems package")\n')
    probe = ("import json, sys, pinn_lora\n"
             "p = pinn_lora.get_problem('burgers')\n"
             "print(json.dumps([type(p).__module__, p.name, pinn_lora.PROBLEMS.names(), 'problems' in sys.modules]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from pinn_lora.core.registry import PROBLEMS

    assert json.loads(res.stdout.strip().splitlines()[-1]) == [
        "pinn_lora.problems.burgers", "burgers", PROBLEMS.names(), False]
