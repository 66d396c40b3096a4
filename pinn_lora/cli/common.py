"""Shared plumbing of the Hydra entry points: where the configs are, checking the command
line before Hydra sees it (group names, keys, override syntax, the run directory), and turning
user errors into one line (exit code 2).

:func:`prepare_run` composes the configuration once with Hydra's compose API (malformed
overrides, unknown keys and values that do not resolve become one ``error:`` line) and resolves
the run directory once; Hydra is then given that directory and told to write nothing into it
(``hydra.output_subdir: null``, console-only logging). The task validates its input, then claims
the directory (:mod:`pinn_lora.store.rundir`) and only then writes there — the resolved configuration
in ``.hydra/`` included (:func:`run_task`). So bad input creates nothing and nothing is ever
removed."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, NoReturn

from pinn_lora.store.schema import config_dir  # noqa: F401 (where the configs are; the library reads it from schema)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_NO_IMPROVEMENT = 4  # finished without diverging, but the validation residual is not below the base's
EXIT_OS_ERROR = 1  # the file system refused a write (a full disk, a read-only file system, a name too long)


def os_error_line(exc: OSError) -> str:
    """An OSError in one line: the file, what the system said, and what to do for a full disk."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}"
    if exc.errno == errno.ENOSPC:
        text += ("; free some space and run again (a run's last checkpoint is written atomically and stays "
                 "intact: resume=true continues from it)")
    elif exc.errno == errno.ENAMETOOLONG:
        text += " (a path component is longer than the file system allows, 255 bytes on most)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += "; choose a directory you can write to"
    return text


def group_options(group: str) -> list[str]:
    """The names a config group offers: every registered method or family (entry-point plugins included),
    else the YAML files of the group."""
    from pinn_lora.core.registry import METHODS, PROBLEMS

    registry = {"method": METHODS, "problem": PROBLEMS}.get(group)
    if registry is not None:
        return registry.names()
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def group_node(group: str, name: str) -> dict[str, Any]:
    """The config of ``group=name`` as plain data: a method's is built from its class's declared defaults
    (:meth:`pinn_lora.methods.Method.config_node`); a family's is its ``configs/problem/<name>.yaml`` when
    pinn_lora ships one, else built from its class (:meth:`pinn_lora.pde.problem.Problem.config_node`)."""
    import yaml

    from pinn_lora.core.registry import METHODS, PROBLEMS

    path = Path(config_dir()) / group / f"{name}.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text()) or {}
    registry = {"method": METHODS, "problem": PROBLEMS}[group]
    return registry.get(name).config_node(name)


def register_configs() -> None:
    """Store the nodes that have no YAML file (every method; a plugin's family) in Hydra's ConfigStore, under
    the ``method`` and ``problem`` groups, so ``method=<name>`` and ``problem=<name>`` compose for every
    registered name, and the schema of ``configs/adapt.yaml`` (:class:`pinn_lora.runs.settings.AdaptConfig`). Called
    before any composition (idempotent: storing a name again replaces its node)."""
    from hydra.core.config_store import ConfigStore

    from pinn_lora.runs.settings import register_schemas

    register_schemas()
    store = ConfigStore.instance()
    for group in ("method", "problem"):
        for name in group_options(group):
            if not (Path(config_dir()) / group / f"{name}.yaml").is_file():
                store.store(group=group, name=name, node=group_node(group, name), provider="pinn_lora")


@contextlib.contextmanager
def hydra_context(job_name: str = "adapt"):
    """Hydra's compose API on pinn_lora's configs, the registered nodes included (for tests and scripts):
    ``with hydra_context(): cfg = hydra.compose("adapt", [...])``."""
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=job_name):
        yield


def one_line(message: str) -> str:
    """``message`` on one line: its non-empty lines joined (a multi-line library message, e.g.
    torch's or Hydra's, would otherwise look like several errors)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    out = ""
    for ln in lines:
        out += ln if not out else (" " if out.endswith((":", ";", ",")) else "; ") + ln
    return out


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def check_group_overrides(argv: list[str], groups: tuple[str, ...], config_name: str = "adapt") -> None:
    """Before Hydra sees them: unknown ``problem=``/``method=`` names, and keys that
    no selected config has (``method.rnk=3``), each as one line with the valid names. Hydra's schema
    (:class:`pinn_lora.runs.settings.AdaptConfig`) does not make this redundant: ``+stepz=3`` and ``++stepz=3``
    add a key even to a structured config, and its message for ``stepz=3`` names no valid key."""
    import yaml

    top = yaml.safe_load((Path(config_dir()) / f"{config_name}.yaml").read_text())
    chosen = {g: [d[g] for d in top.get("defaults", []) if isinstance(d, dict) and g in d] for g in groups}
    keys = top_level_keys(top, groups)
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
        appended = arg.startswith("+")  # +foo=1 / ++foo=1 add a key: none of ours is missing, so a typo
        key = key.lstrip("+")
        if not sep or arg.startswith(("~", "-")) or key.startswith(("hydra.", "hydra/")):
            continue  # Hydra's own settings and groups (hydra/launcher=joblib): Hydra checks those
        if appended and key in groups:
            continue  # +problem=NAME: the group name was checked above
        head, _, rest = key.partition(".")
        if head in groups and rest:
            for name in chosen[head]:
                options = group_node(head, name)
                if rest.split(".")[0] not in options:
                    fail(f"unknown key {key!r} for {head} {name}; its keys: "
                         f"{', '.join(k for k in options if k != 'name')}")
        elif head not in groups and head not in keys:
            fail(f"unknown key {key!r}; top-level keys: {', '.join(keys)}")


def top_level_keys(top: dict[str, Any], groups: tuple[str, ...]) -> list[str]:
    """The keys a config file ``top`` (parsed YAML) composes to, groups and Hydra's own left out: its schema's
    fields (a dataclass named in its defaults list, :data:`pinn_lora.runs.settings.SCHEMAS`), then its own keys."""
    from dataclasses import fields

    from pinn_lora.runs.settings import SCHEMAS

    schemas = [SCHEMAS[d] for d in top.get("defaults", []) if isinstance(d, str) and d in SCHEMAS]
    keys = [f.name for schema in schemas for f in fields(schema)] + list(top)
    return [k for k in dict.fromkeys(keys) if k not in ("defaults", "hydra", *groups)]


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

    from pinn_lora.store.tensors import CheckpointError
    from pinn_lora.core.registry import UnknownNameError

    return (ValueError, CheckpointError, UnknownNameError, OmegaConfBaseException, FileExistsError)
