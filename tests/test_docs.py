"""The README and docs/: the README stays short and keeps CI's commands, its Python example and the docs' walk-through
run as written, every relative link resolves, every table of numbers equals what benchmarks/make_tables.py makes
from benchmarks/results/*.json, and the architecture page's layer diagram equals tests/test_layers.py's map."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKDOWN = [README, *sorted(DOCS.rglob("*.md")), ROOT / "benchmarks" / "README.md"]


def load_make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "benchmarks" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` (any level) up to the next heading of the same or a higher level (``#`` lines
    inside code blocks are code)."""
    lines, level, out, fenced = path.read_text().splitlines(keepends=True), None, [], False
    for line in lines:
        fenced ^= line.startswith("```")
        m = None if fenced else re.match(r"(#+) (.*)", line.rstrip("\n"))
        if level is None:
            level = len(m.group(1)) if m and m.group(2) == heading else None
        elif m and len(m.group(1)) <= level:
            break
        else:
            out.append(line)
    assert level is not None, f"{path.name} has no heading {heading!r}"
    return "".join(out)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


# ---- the README ----------------------------------------------------------------------------------------------
def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes; the limit is 12 KiB: move detail to docs/"


def test_readme_has_ci_commands():
    """.ci/run runs the README's test command verbatim (the line after its marker comment); the README's set-up
    block must hold that line as it is, and the headline command."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(ci) if "the README's test command, verbatim" in line)
    command = ci[marker + 1].strip()
    setup = [line.strip() for b in blocks(section(README, "Set-up"), "bash") for line in b.splitlines()]
    assert command in setup, f".ci/run runs {command!r}; the README's set-up block must hold it verbatim: {setup}"
    assert "pip install . && python -m pinn_lora.adapt problem=burgers method=odelora" in setup


@pytest.mark.integration  # the README's example adapts Helmholtz with the defaults (about two minutes on 2 cores)
def test_readme_python_example_runs(tmp_path):
    (code,) = blocks(section(README, "Python"), "python")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert res.returncode == 0, res.stderr[-3000:]
    base = float(re.search(r"base at k=3: ([0-9.e+-]+)", res.stdout).group(1))
    merged = float(re.search(r"merged at k=3: ([0-9.e+-]+)", res.stdout).group(1))
    assert merged < 1e-2 * base, res.stdout
    for f in ("adapter.safetensors", "card.json", "summary.json"):
        assert (tmp_path / "runs" / "helmholtz_k3" / f).is_file(), f


# ---- docs/ ---------------------------------------------------------------------------------------------------
@pytest.mark.integration  # a subprocess running the whole walk-through (about a minute)
def test_walk_through_runs(tmp_path):
    (code,) = blocks(section(DOCS / "python.md", "Walk-through"), "python")
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
    (code,) = blocks(section(DOCS / "interop.md", "Inside DeepXDE"), "python")
    line = next(x for x in code.splitlines() if x.startswith("from pinn_lora"))
    exec(line, {})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_relative_links_resolve():
    broken = []
    for path in MARKDOWN:
        for target in links(path):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


# ---- generated tables --------------------------------------------------------------------------------------------
def test_tables_equal_their_results():
    make_tables = load_make_tables()
    stale = [str(p.relative_to(ROOT)) for p in MARKDOWN if make_tables.render(p.read_text()) != p.read_text()]
    assert not stale, f"tables differ from benchmarks/results/*.json in {stale}: run python benchmarks/make_tables.py"
    used = {m.group("name") for p in MARKDOWN for m in make_tables.REGION.finditer(p.read_text())}
    assert used == set(make_tables.TABLES), f"tables never placed: {set(make_tables.TABLES) - used}"
    assert "<!-- table:adapt_best -->" in README.read_text()


def test_tables_take_any_rows(tmp_path):
    """New rows need no change to the generator: a new method, a plugin family, a diverged run, a re-run of a row."""
    make_tables = load_make_tables()
    data = json.loads((ROOT / "benchmarks" / "results" / "adapt_targets_cpu.json").read_text())
    burgers = next(r for r in data["runs"] if r["family"] == "burgers" and r["method"] == "odelora"
                   and math.isclose(r["coefficients"]["nu"], 0.02 / math.pi))
    data["runs"] += [
        {**burgers, "method": "dora", "final_error": 1e-7, "max_error_during": 0.03},
        {**burgers, "method": "cla", "final_error": float("nan"), "max_error_during": float("nan"),
         "status": "diverged"},
        {**burgers, "method": "lora", "options": {"rank": 8}, "final_error": 2e-6},
        {"family": "heat", "coefficients": {"kappa": 0.3}, "method": "lora", "base_error": 0.1, "final_error": 0.01,
         "status": "completed"},
        {**burgers, "final_error": 4e-6},  # a re-run of the first Burgers odelora row replaces it
    ]
    data["load_average_at_start"] = [[4.04, 4.0, 4.0], None, [7.0, 6.0, 5.0]]  # a file merged from three
    (tmp_path / "adapt_targets_cpu.json").write_text(json.dumps(data))
    best = make_tables.make("adapt_best", tmp_path)
    assert "| Burgers ν = 0.02/π | **`dora`** | 4.20e-2 → 1.00e-7 |" in best, best
    assert "`cla` diverged" in best and "`lora` (rank=8) 2.00e-6" in best and "`odelora` 4.00e-6" in best
    full = make_tables.make("adapt_targets", tmp_path)
    assert "| heat kappa = 0.3 | `lora` | 1.00e-1 → 1.00e-2 | 10 |" in full, full
    assert "→ nan (diverged)" in full and full.count("`odelora` | 4.20e-2 →") == 1
    assert "load average 4.0–7.0 at the start" in full


# ---- docs/architecture.md ------------------------------------------------------------------------------------
def test_layer_diagram_matches_the_tree():
    """docs/architecture.md's diagram names every module of every layer folder (a line starts with its layer's
    name; a layer may take several lines), and the layers in tests/test_layers.py's order."""
    from test_layers import LAYERS, PACKAGE

    (diagram,) = blocks(section(DOCS / "architecture.md", "Layers"), "")
    drawn: dict[str, set[str]] = {}
    for line in diagram.splitlines():
        layer, *names = line.split() or [""]
        if layer in LAYERS:
            drawn.setdefault(layer, set()).update(names)
    actual = {layer: {p.stem for p in (PACKAGE / layer).glob("*.py") if p.name != "__init__.py"}
              | {f"{p.name}/" for p in (PACKAGE / layer).iterdir() if (p / "__init__.py").is_file()}
              for layer in LAYERS}
    assert drawn == actual, {k: (sorted(actual[k] - drawn.get(k, set())), sorted(drawn.get(k, set()) - actual[k]))
                             for k in LAYERS if drawn.get(k) != actual[k]}
    order = [line.split()[0] for line in diagram.splitlines() if line.split() and line.split()[0] in LAYERS]
    assert list(dict.fromkeys(order)) == list(reversed(LAYERS))  # drawn from the top layer down


# ---- docs/extending.md ---------------------------------------------------------------------------------------
@pytest.mark.integration  # pretrains a small base and adapts it twice (about a minute)
def test_extending_page_runs_as_written(tmp_path):
    """The family and the method of docs/extending.md, each one file as the page shows it, then its Python block:
    registered by hand, pretrained with the package's recipe, adapted by both methods below the base."""
    text = (DOCS / "extending.md").read_text()
    run = None
    for code in blocks(text, "python"):
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(code)
        elif first.strip() == "# run":
            run = code
    assert {p.name for p in tmp_path.glob("*.py")} == {"my_heat.py", "my_scaled.py"} and run
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", run], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("rel. L2 on target") == 2 and "base: rel. L2" in res.stdout, res.stdout


def test_extending_files_use_only_the_public_surface():
    """The page's family and method import only what the package exports for extenders (and the PDE layer)."""
    import pinn_lora

    for code in blocks((DOCS / "extending.md").read_text(), "python"):
        for name in re.findall(r"^from pinn_lora import (.+)$", code, re.M):
            for item in name.split(","):
                assert hasattr(pinn_lora, item.strip()), item
