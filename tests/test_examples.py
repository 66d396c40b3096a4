"""Examples run in their fast mode and check their own results."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # each example is a subprocess (minutes in all)

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_fast(path, tmp_path):
    env = {**os.environ, "PINN_LORA_FAST": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list(tmp_path.iterdir()) or all(p.name.startswith(("runs", "out")) for p in tmp_path.iterdir())
