"""What the methods' declarations say, written out: ``python -m pinn_lora.methods`` (every registered method with
its options, defaults and help) and the options section of ``docs/methods.md`` (the built-in methods), so neither
is written by hand.

    python -m pinn_lora.methods                          # the table, plugin methods included
    python -m pinn_lora.methods --write docs/methods.md  # rewrite the page's <!-- options --> block
    python -m pinn_lora.methods --check docs/methods.md  # exit 1 and print a diff where the block is stale
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from pinn_lora.methods.base import Method, Option, _num
from pinn_lora.methods.chains import RAC, CoLA
from pinn_lora.methods.geometric import ODELoRA, ODLoRA, Riemannian
from pinn_lora.methods.lora_family import AsymLoRA, DoRA, LoRA, LoRAPlus, PiSSA, RSLoRA
from pinn_lora.methods.references import Full, Scratch
from pinn_lora.methods.selectors import C3LA, CLA, PaCA, RandomC3LA, RandomCLA

# the package's own methods (its pyproject.toml entry points), in the order of docs/methods.md: the references,
# LoRA and its variants, the chains, the cLA family, the methods with a geometry of their own
BUILTIN: tuple[type[Method], ...] = (Scratch, Full, LoRA, RSLoRA, LoRAPlus, PiSSA, DoRA, AsymLoRA, CoLA, RAC, CLA,
                                     RandomCLA, C3LA, RandomC3LA, PaCA, Riemannian, ODLoRA, ODELoRA)
REGION = re.compile(r"(<!-- options -->\n)(.*?)(<!-- /options -->)", re.S)
NOTE = ("<!-- generated from the methods' declarations by `python -m pinn_lora.methods --write docs/methods.md`: "
        "change the Option on the method's class, then rerun it -->")


def value_text(value: Any) -> str:
    """An option's value as written on the command line: true, 0.003, 1e-8, all, [0, -1]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(value_text, value)) + "]"
    return str(value)


def default_text(opt: Option) -> str:
    plain = value_text(opt.default)
    return f"the problem's, else {plain}" if opt.from_problem else plain


# ---- python -m pinn_lora.methods ----------------------------------------------------------------------------
def method_table(methods: Iterable[type[Method]] | None = None) -> str:
    """Every method (by default every registered one, plugins included) with its summary and, one line each, its
    options: name=default, what is allowed, the help line."""
    if methods is None:
        from pinn_lora.core.registry import METHODS

        methods = [METHODS.get(name) for name in METHODS.names()]
    lines = []
    for cls in methods:
        lines.append(f"{cls.name:<11} {cls.summary}")
        for key in cls.option_order():
            opt = cls.declared[key]
            setting = f"{key}={value_text(opt.default)}" + (" (problem's first)" if opt.from_problem else "")
            lines.append(f"    {setting:<30} {opt.help} [{opt.allowed()}]".replace(" ]", "]"))
    return "\n".join(lines)


# ---- docs/methods.md ----------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(options: dict[str, Option]) -> list[str]:
    rows = ["| option | default | allowed | what it sets |", "|---|---|---|---|"]
    for key, opt in sorted(options.items(), key=lambda kv: kv[0] in Method.declared):  # own options first
        first = " (the problem’s recommendation first)" if opt.from_problem else ""
        rows.append(f"| `{key}` | `{value_text(opt.default)}`{first} | {_cell(opt.allowed())} "
                    f"| {_cell(opt.help) or '—'} |")
    return rows


def options_markdown(methods: Sequence[type[Method]] = BUILTIN) -> str:
    """The options section of docs/methods.md: the options every method takes, then per method the options it
    adds or declares differently (a method with the same declarations as one before it says so)."""
    common = Method.declared
    out = [NOTE, "", "### Every method", "", *_rows(common), ""]
    seen: list[type[Method]] = []
    for cls in methods:
        out += [f"### `{cls.name}`", "", cls.summary + ".", ""]
        same = next((s for s in seen if s.declared == cls.declared), None)
        own = {k: o for k, o in cls.declared.items() if common.get(k) != o}
        if same is not None and own:
            out += [f"Options: as `{same.name}`.", ""]
        elif not own:
            out += ["Options: those of every method.", ""]
        else:
            out += [*_rows(own), ""]
            rest = [k for k in common if k in cls.declared and k not in own]
            if rest:
                out += [f"And {', '.join(f'`{k}`' for k in rest)} as for every method.", ""]
        seen.append(cls)
    return "\n".join(out)


def render_page(text: str, methods: Sequence[type[Method]] = BUILTIN) -> str:
    """``text`` with its ``<!-- options -->`` block regenerated (ValueError when the page has none)."""
    if not REGION.search(text):
        raise ValueError("the page has no <!-- options --> ... <!-- /options --> block")
    return REGION.sub(lambda m: m.group(1) + options_markdown(methods) + "\n" + m.group(3), text, count=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pinn_lora.methods", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PAGE", type=Path, help="rewrite PAGE's <!-- options --> block")
    group.add_argument("--check", metavar="PAGE", type=Path, help="exit 1 when PAGE's block is stale")
    args = parser.parse_args(argv)
    page = args.write or args.check
    if page is None:
        print(method_table())
        return 0
    try:
        text = page.read_text()
        new = render_page(text)
    except (OSError, ValueError) as exc:
        print(f"{page}: {exc}", file=sys.stderr)
        return 2
    if args.write:
        if new != text:
            page.write_text(new)
        print(f"{page}: options block {'rewritten' if new != text else 'already current'}")
        return 0
    if new != text:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(page),
                                                   f"{page} (regenerated)"))
        print(f"{page} is stale: run python -m pinn_lora.methods --write {page}", file=sys.stderr)
        return 1
    return 0
