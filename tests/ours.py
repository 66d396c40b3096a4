"""Our own entries, as this project's pyproject.toml declares them: the tests pin these, not the registries' whole
content, so a plugin family or method installed beside pinn_lora breaks none of them."""
import re
from pathlib import Path

_TEXT = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()


def _group(name: str) -> list[str]:
    body = re.search(rf'^\[project\.entry-points\."{re.escape(name)}"\]\n(.*?)(?=^\[|\Z)', _TEXT, re.S | re.M).group(1)
    return sorted(m.group(1) for m in re.finditer(r"^(\w+)\s*=", body, re.M))


OUR_PROBLEMS = _group("pinn_lora.problems")
OUR_METHODS = _group("pinn_lora.methods")
