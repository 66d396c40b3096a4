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


def check_group_overrides(argv: list[str], groups: tuple[str, ...], config_name: str = "adapt") -> None:
    """Before Hydra sees them: unknown ``problem=``/``method=`` names, and keys that
    no selected config has (``method.rnk=3``), each as one line with the valid names."""
    import yaml

    root = Path(config_dir())
    top = yaml.safe_load((root / f"{config_name}.yaml").read_text())
    chosen = {g: [d[g] for d in top.get("defaults", []) if isinstance(d, dict) and g in d] for g in groups}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key in groups:
            valid = group_options(key)
            names = [name.strip() for name in value.split(",")]
            for name in names:
                if name not in valid:
                    fail(f"unknown {key} {name!r}; valid {key}s: {', '.join(valid)}")
            chosen[key] = names
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep or arg.startswith(("+", "~", "-")) or key.startswith(("hydra.", "hydra/")):
            continue  # Hydra's own settings and groups (hydra/launcher=joblib): Hydra checks those
        head, _, rest = key.partition(".")
        if head in groups and rest:
            for name in chosen[head]:
                options = yaml.safe_load((root / head / f"{name}.yaml").read_text()) or {}
                if rest.split(".")[0] not in options:
                    fail(f"unknown key {key!r} for {head} {name}; its keys: "
                         f"{', '.join(k for k in options if k != 'name')}")
        elif head not in groups and head not in top:
            fail(f"unknown key {key!r}; top-level keys: "
                 f"{', '.join(k for k in top if k not in ('defaults', 'hydra'))}")


LAUNCHER_PLUGINS = {  # hydra/launcher name -> (plugin module, PyPI package)
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def check_launcher(argv: list[str]) -> None:
    """``hydra/launcher=NAME`` naming a plugin's launcher or one of our presets extending it
    (configs/hydra/launcher/NAME.yaml): the plugin must be installed, else one line saying what
    to install instead of Hydra's "could not find" error or traceback."""
    import importlib.util

    import yaml

    for arg in argv:
        key, sep, name = arg.partition("=")
        if key.lstrip("+") != "hydra/launcher" or not sep:
            continue
        base = name
        preset = Path(config_dir()) / "hydra" / "launcher" / f"{name}.yaml"
        if preset.is_file():
            defaults = (yaml.safe_load(preset.read_text()) or {}).get("defaults") or []
            base = next((d for d in defaults if isinstance(d, str) and d in LAUNCHER_PLUGINS), name)
        if base not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[base]
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            fail(f"hydra/launcher={name} needs the {package} plugin: pip install {package} "
                 "(or pip install 'pinn_lora[sweep]')")


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
