"""The README's Python walk-through runs as written and prints what it says."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"### {section}\n")
    end = text.index("\n### ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.integration  # a subprocess running the whole walk-through (about a minute)
def test_walk_through_runs(tmp_path):
    (code,) = python_blocks("Python")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    base = float(re.search(r"on k=3: ([0-9.e+-]+)", out).group(1))
    adapted = float(re.search(r"adapted: rel. L2 ([0-9.e+-]+)", out).group(1))
    own = float(re.search(r"own loop: loss [0-9.e+-]+, rel. L2 ([0-9.e+-]+)", out).group(1))
    assert adapted < 0.5 * base and own < base, out
    assert "instead of" in out and "helmholtz base" in out  # the wrong-base message
    for f in ("adapter.safetensors", "card.json", "summary.json", "solution_101.png", "plots/loss.png"):
        assert (tmp_path / "runs" / "helmholtz_k3" / f).is_file(), f
    assert (tmp_path / "runs" / "own_loop" / "card.json").is_file()


def test_deepxde_snippet_names_exist():
    """The DeepXDE snippet is a fragment (fnn, data come from the user's script; the full version is
    examples/deepxde_burgers_odelora.py): the names it imports exist."""
    (code,) = python_blocks("Inside DeepXDE")
    line = next(x for x in code.splitlines() if x.startswith("from pinn_lora"))
    exec(line, {})
