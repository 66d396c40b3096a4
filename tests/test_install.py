"""A wheel installed into a fresh directory finds its configs and
shipped base models when run from another directory."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_configs_and_bases(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    site = tmp_path / "site"
    wheel = next(wheels.glob("pinn_lora-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy first; dependencies from this environment
    work = tmp_path / "elsewhere"
    work.mkdir()
    res = subprocess.run([sys.executable, "-m", "pinn_lora.adapt", "problem=helmholtz", "method=lora", "steps=3",
                          "n_points=64", "device=cpu", "progress=false", "out=run"], cwd=work, capture_output=True,
                         text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    assert "method=lora" in res.stdout and (work / "run" / "summary.json").is_file()
    where = subprocess.run([sys.executable, "-c", "import pinn_lora.cli as c; print(c.__file__, c.config_dir())"],
                           cwd=work, capture_output=True, text=True, check=True, env=env).stdout
    assert where.count(str(site)) == 2  # the installed copy and its configs, not the checkout
