"""Shared plumbing of the Hydra entry points: where the configs are, checking
group names before Hydra sees them, and turning user errors into one line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NoReturn

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def config_dir() -> str:
    """``configs/`` of a checkout or editable install, else the copy inside the wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs", here / "configs"):
        if (cand / "adapt.yaml").is_file():
            return str(cand)
    raise FileNotFoundError(f"pinn_lora's Hydra configs were not found next to {here}")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def check_group_overrides(argv: list[str], groups: tuple[str, ...]) -> None:
    """Unknown ``problem=``/``method=`` values: one line with the valid names."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in groups:
            continue
        valid = group_options(key)
        for name in value.split(","):
            if name.strip() not in valid:
                fail(f"unknown {key} {name.strip()!r}; valid {key}s: {', '.join(valid)}")


def user_errors() -> tuple[type[BaseException], ...]:
    from omegaconf.errors import OmegaConfBaseException

    from pinn_lora.checkpoint import CheckpointError
    from pinn_lora.registry import UnknownNameError

    return (ValueError, CheckpointError, UnknownNameError, OmegaConfBaseException, FileExistsError)


def guarded(fn: Callable[[], object]) -> object:
    """Run ``fn``; a user error becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except user_errors() as exc:
        fail(str(exc))
