"""Imports go one way (docs/architecture.md): the package's folders are its layers,
core → pde → model → methods → store → training → runs → interop → cli, and a module imports only modules of
its own folder or of folders before it, with no cycle among modules, lazy (function-level) imports included.
The top-level modules are the ``python -m`` commands (each imports only its ``pinn_lora.cli`` module) and
``__init__`` (the public surface, imported lazily). The families in ``problems/`` import only the public
surface a plugin family uses (``pinn_lora``, ``pinn_lora.pde``, ``pinn_lora.core.dde``). An AST walk over the
sources, so nothing is imported to check it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pinn_lora"
FAMILIES = PACKAGE.parent / "problems"
LAYERS = ("core", "pde", "model", "methods", "store", "training", "runs", "interop", "cli")
COMMANDS = ("adapt", "pretrain", "compare", "family")  # pinn_lora/<name>.py: python -m pinn_lora.<name>
ROOT_NAMES = {"__version__"}  # what a module may take from the package itself (``import pinn_lora``)
FAMILY_MAY_IMPORT = ("pinn_lora.pde", "pinn_lora.core.dde")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """A module's layer: its folder under ``pinn_lora/`` (a command module at the top: ``cli``)."""
    parts = module.split(".")[1:]
    if len(parts) == 1 and parts[0] in COMMANDS:
        return "cli"
    return parts[0] if parts and parts[0] in LAYERS else None


def resolve(target: str) -> str | None:
    """The package module an imported name lives in (``pinn_lora.cli.common.config_dir`` -> ``pinn_lora.cli.common``)."""
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
    """Every module sits in a layer's folder (or is a command module); no folder outside the list."""
    missing = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not missing, f"put these modules in a layer's folder (tests/test_layers.py LAYERS): {missing}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.rglob("*.py")))
    assert set(folders) == set(LAYERS), folders


def test_command_modules_only_start_their_command():
    for name in COMMANDS:
        assert set(GRAPH[f"pinn_lora.{name}"]) == {f"pinn_lora.cli.{name}"}, GRAPH[f"pinn_lora.{name}"]


def test_families_use_only_the_public_surface():
    """A shipped family is written as a plugin's would be: ``pinn_lora``'s public names and the PDE layer."""
    bad = []
    for path in sorted(FAMILIES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if name.startswith("pinn_lora.") and not name.startswith(FAMILY_MAY_IMPORT):
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
    assert not bad, bad


def test_imports_point_down_the_layers():
    upward = [f"{m}:{line} ({layer_of(m)}) imports {dep} ({layer_of(dep)})"
              for m, deps in sorted(GRAPH.items()) for dep, line in sorted(deps.items())
              if LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(m))]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_library_never_imports_the_command_line():
    entry = {m for m in GRAPH if layer_of(m) == "cli"}
    bad = [f"{m}:{line} imports {dep}" for m, deps in sorted(GRAPH.items()) if m not in entry
           for dep, line in deps.items() if dep == "pinn_lora.cli.common"]
    assert not bad, bad


def test_no_circular_imports():
    found = cycles()
    assert not found, f"circular imports: {found}"
