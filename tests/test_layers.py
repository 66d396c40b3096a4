"""Imports go one way (issue 15, item 1; /work/shared/design.md, "Layers"): every module of the package is
mapped to a layer, core ← io ← engine ← workflow ← entry, and imports only modules of its own layer or of
layers before it, with no cycle among modules, lazy (function-level) imports included. The library never
imports the command line. An AST walk over the sources, so nothing is imported to check it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pinn_lora"
LAYERS = ("core", "io", "engine", "workflow", "entry")

LAYER = {  # module (relative to pinn_lora; a subpackage maps all its modules) -> layer
    # core: the PDE, the network, derivatives, adapters and dynamics; no files, no training loop
    "_dde": "core", "problem": "core", "network": "core", "derivatives": "core", "jacobian": "core",
    "adapters": "core", "dynamics": "core", "curvature": "core", "runtime": "core",
    "memory": "core",  # a lower bound of a run's memory from sizes; imports only torch
    "registry": "core",  # name -> class lookups through entry points; it imports no module of the package
    # io: tensors and files, knowing only core
    "checkpoint": "io", "rundir": "io", "resume": "io", "zoo": "io", "schema": "io",
    "sweeps": "io",  # a sweep's jobs.json and what a resumed job does with its run directory (files only)
    # engine: methods and the training loop
    "methods": "engine", "train": "engine", "loops": "engine", "monitors": "engine", "validation": "engine",
    # workflow: a whole adaptation (or pretraining) with its files and figures
    "api": "workflow", "session": "workflow", "batch": "workflow", "report": "workflow", "interop": "workflow",
    "config": "workflow",  # AdaptConfig: the settings of one adaptation (their defaults take TrainConfig's)
    # entry: the command lines (python -m modules) and what only they use
    "cli": "entry", "adapt": "entry", "compare": "entry", "pretrain": "entry", "family": "entry", "sensing": "entry",
}
ROOT_NAMES = {"__version__"}  # what a module may take from the package itself (``import pinn_lora``)

# Cycles not broken yet, each inside one layer; the test fails when one of them is gone, so the list shrinks.
KNOWN_CYCLES: set[frozenset[str]] = {
    frozenset({"pinn_lora.session", "pinn_lora.batch"}),  # batch takes session's helpers; run_config calls adapt_many
    frozenset({"pinn_lora.train", "pinn_lora.loops"}),  # the loops take Trainer's types (item 2 splits the Trainer)
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER:
            return LAYER[".".join(parts[:n])]
    return None


def resolve(target: str) -> str | None:
    """The package module an imported name lives in (``pinn_lora.cli.config_dir`` -> ``pinn_lora.cli``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports(module: str) -> dict[str, int]:
    """{imported package module: line of its first import} for every import statement in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base == "pinn_lora" and all(a.name in ROOT_NAMES for a in node.names):
                continue
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target == "pinn_lora" or not target.startswith("pinn_lora."):
                continue  # ``import pinn_lora`` reads only __version__ (the package's lazy names are not used inside it)
            dep = resolve(target)
            if dep is not None and dep != module and not module.startswith(dep + "."):
                found.setdefault(dep, node.lineno)
    return found


GRAPH = {m: imports(m) for m in MODULES if m != "pinn_lora"}


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    missing = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not missing, f"map these modules to a layer in tests/test_layers.py: {missing}"
    stale = sorted(k for k in LAYER if not any(m == f"pinn_lora.{k}" or m.startswith(f"pinn_lora.{k}.")
                                             for m in MODULES))
    assert not stale, f"LAYER names modules that do not exist: {stale}"


def test_imports_point_down_the_layers():
    upward = [f"{m}:{line} ({layer_of(m)}) imports {dep} ({layer_of(dep)})"
              for m, deps in sorted(GRAPH.items()) for dep, line in sorted(deps.items())
              if LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(m))]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_library_never_imports_the_command_line():
    entry = {m for m in GRAPH if layer_of(m) == "entry"}
    bad = [f"{m}:{line} imports {dep}" for m, deps in sorted(GRAPH.items()) if m not in entry
           for dep, line in deps.items() if dep == "pinn_lora.cli"]
    assert not bad, bad


def test_no_circular_imports():
    found = {frozenset(c) for c in cycles()}
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"circular imports: {new}"
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not gone, f"these cycles are gone; remove them from KNOWN_CYCLES: {gone}"
