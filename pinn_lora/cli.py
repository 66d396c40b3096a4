"""Shared plumbing of the Hydra entry points: where the configs are, checking the command
line before Hydra sees it (group names, keys, override syntax, the run directory), and turning
user errors into one line (exit code 2), with the run directory this invocation created removed.

Hydra creates the run directory and writes ``<out>/.hydra/`` before the task runs, so what must
not be overwritten is checked here, before ``hydra.main``: :func:`prepare_run` composes the
configuration once with Hydra's compose API (malformed overrides, unknown keys and values that do
not resolve become one ``error:`` line), refuses an ``out=`` that holds a previous run (unless
``resume=true``) or cannot be written, and remembers which directories existed, so that
:func:`guarded` removes only a run directory that this invocation created when the task stops on
bad input."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_NO_IMPROVEMENT = 4  # finished without diverging, but the validation residual is not below the base's


def config_dir() -> str:
    """``configs/`` of a checkout or editable install, else the copy inside the wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs", here / "configs"):
        if (cand / "adapt.yaml").is_file():
            return str(cand)
    raise FileNotFoundError(f"pinn_lora's Hydra configs were not found next to {here}")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


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


# ---- the run directory: checked before Hydra writes into it, removed when a bad input stops the task --
RUN_FILES = (".hydra/config.yaml", "metrics.jsonl", "summary.json", "checkpoint.safetensors", "adapter.safetensors",
             "card.json", "base.json", "base.safetensors", "multirun.yaml")
INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun", "config_path",
              "config_name", "config_dir")


@dataclass
class RunPlan:
    """What :func:`prepare_run` found before Hydra started."""

    debug: bool = False
    resume: bool = False
    multirun: bool = False
    root: Path | None = None  # the run directory (a sweep's directory with -m), absolute
    anchor: Path | None = None  # its nearest ancestor that existed before
    existing: frozenset[Path] = field(default_factory=frozenset)  # directories at/under root that existed
    entries: frozenset[str] = frozenset()  # names in root before (when it existed)
    started: float = 0.0


_PLAN: RunPlan | None = None  # the plan of the invocation now running (set by prepare_run)


def holds_run(path: Path) -> list[str]:
    """The run files (:data:`RUN_FILES`) in ``path``."""
    return [f for f in RUN_FILES if (path / f).exists()]


def _runs_below(root: Path) -> list[str]:
    """Up to three run files at or below ``root`` (a sweep directory), relative to it."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and any(rel == f or rel.endswith("/" + f) for f in RUN_FILES):
            found.append(rel)
            if len(found) == 3:
                break
    return found


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, key: str) -> Path:
    """``path`` exists as a writable directory or can be created: else one ``error:`` line.
    Returns its nearest existing ancestor (``path`` itself when it exists)."""
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        what = "is a file" if anchor == path else f"cannot be created: {anchor} is a file, not a directory"
        fail(f"{key}={path} {what}; give a directory that can be created or written")
    probe_error = None
    if not os.access(anchor, os.W_OK | os.X_OK):
        probe_error = "permission denied"
    else:  # root passes os.access everywhere: try it (read-only file systems, /sys, ...)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".pinn_lora_write_test_", dir=anchor))
            tmp.rmdir()
        except OSError as exc:
            probe_error = exc.strerror or str(exc)
    if probe_error:
        where = "it" if anchor == path else f"{anchor}"
        fail(f"{key}={path} is not writable ({where}: {probe_error}); choose a directory you can write to")
    return anchor


def _hydra_message(exc: BaseException) -> str:
    """Hydra's/OmegaConf's error text without its pointers to docs and search paths."""
    keep = []
    for ln in str(exc).splitlines():
        if ln.startswith(("See https://hydra.cc", "Config search path", "\tprovider=")) or "provider=" in ln:
            continue
        keep.append(ln)
    return one_line("\n".join(keep))


def _parse_args(argv: list[str]) -> Any:
    from hydra._internal.utils import get_args_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return get_args_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):  # --version
            raise
        last = [ln for ln in err.getvalue().splitlines() if ln.strip()][-1:] or ["bad command line"]
        fail(last[0].split("error: ", 1)[-1] + " (see --help)")


def prepare_run(argv: list[str], config_name: str = "adapt", *, resume_key: bool = True) -> RunPlan:
    """Check the command line before ``hydra.main`` runs; returns (and records) the :class:`RunPlan`.

    - a malformed override, a value list without ``-m`` and any error composing the config
      (unknown key, a group or value that does not exist) is one ``error:`` line;
    - the run directory (``hydra.run.dir``, i.e. ``out``; with ``-m`` the sweep directory) must be
      writable and must not hold a previous run (:data:`RUN_FILES`) unless ``resume=true``;
    - ``debug=true`` makes the task's errors propagate with their traceback."""
    global _PLAN
    _PLAN = None
    args = _parse_args(argv)
    plan = RunPlan(started=time.time())
    if any(getattr(args, flag, None) for flag in INFO_FLAGS):
        return plan  # help, --cfg, --info ...: Hydra runs no task (or a config we do not check)
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in args.overrides:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except OverrideParseException as exc:
            reason = one_line("\n".join(ln for ln in str(exc).splitlines()
                                        if not ln.startswith(("See https", "Error parsing override"))))
            fail(f"malformed override {text!r}: {reason}. Overrides are key=value, e.g. steps=100, "
                 "problem.nu=[0.01,0.02] (a list), method.targets='[1,2]', out='my runs/a'")
    plan.multirun = bool(args.multirun) or any(
        o.get_key_element() == "hydra.mode" and str(o.value()) == "MULTIRUN" for o in parsed)
    sweeps = [(text, o) for text, o in zip(args.overrides, parsed) if o.is_sweep_override()]
    if sweeps and not plan.multirun:
        text, o = sweeps[0]
        key = o.get_key_element()
        fail(f"{text!r} gives several values: add -m (--multirun) to run one job per value, or write "
             f"{key}=[...] for a list, or quote it for a string: {key}='\"...\"'")
    plain = [text for text, o in zip(args.overrides, parsed) if not o.is_sweep_override()]
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, plain, return_hydra_config=True)
            flags = {k: OmegaConf.select(cfg, k, default=False, throw_on_resolution_failure=False)
                     for k in ("debug", "resume")}
            where = "hydra.sweep.dir" if plan.multirun else "hydra.run.dir"
            try:
                root = OmegaConf.select(cfg, where)
            except Exception as exc:
                if "hydra" in str(exc):  # e.g. ${hydra:job.name}: resolvable only inside Hydra's run
                    root = None
                else:
                    raise
    except SystemExit:
        raise
    except Exception as exc:  # Hydra's and OmegaConf's composition errors: the user's input
        fail(_hydra_message(exc))
    plan.debug = flags["debug"] is True
    plan.resume = resume_key and flags["resume"] is True
    if root is None:
        _PLAN = plan
        return plan  # not known before Hydra runs: no checks, and nothing is removed
    if not str(root).strip():
        fail(f"out={root!r}: the run directory is empty; give a directory (the default is "
             "runs/<problem>/<method>/<time>)")
    key = "hydra.sweep.dir" if plan.multirun else "out"
    root = Path(os.path.abspath(str(root)))
    plan.anchor = check_writable(root, key)
    if root.is_dir():
        found = holds_run(root) if not plan.multirun else _runs_below(root)
        if found and not plan.resume:
            again = ", or resume=true to continue it" if resume_key else ""
            fail(f"{key}={root} already holds a previous run ({', '.join(found)}); it is never overwritten: "
                 f"choose another {key}=...{again}")
        plan.existing = frozenset([root, *(p for p in root.rglob("*") if p.is_dir())] if plan.multirun else [root])
        plan.entries = frozenset(p.name for p in root.iterdir())
    plan.root = root
    _PLAN = plan
    return plan


@contextlib.contextmanager
def hydra_errors(debug: bool):
    """With ``debug``, Hydra re-raises the task's exception (full traceback) instead of printing a
    shortened one (HYDRA_FULL_ERROR=1 for the duration)."""
    old = os.environ.get("HYDRA_FULL_ERROR")
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if debug:
            if old is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = old


def _remove_new_entries(run_dir: Path, plan: RunPlan) -> None:
    """In a run directory that existed before: remove what this invocation added (new names only)."""
    for path in run_dir.iterdir():
        if path.name in plan.entries:
            continue
        try:
            if any(p.lstat().st_mtime < plan.started - 2.0 for p in [path, *(path.rglob("*") if path.is_dir()
                                                                               else [])]):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            continue


def remove_new_run_dir(run_dir: str | Path) -> bool:
    """Remove ``run_dir`` (and the empty parents it needed) if this invocation created it: it did
    not exist when :func:`prepare_run` looked and everything in it is newer than that. Returns
    whether it was removed. A directory that held anything before is never touched."""
    plan = _PLAN
    if plan is None or plan.root is None:
        return False
    run_dir = Path(os.path.abspath(str(run_dir)))
    if run_dir == plan.root and run_dir in plan.existing and not plan.multirun:
        _remove_new_entries(run_dir, plan)  # e.g. the .hydra/ Hydra wrote into an existing, empty out=
        return False
    if run_dir in plan.existing or not run_dir.is_dir():
        return False
    inside = run_dir == plan.root or plan.root in run_dir.parents
    # out=runs/<...>/${now:...}: Hydra resolved the time again, maybe a second later than prepare_run
    beside = not plan.multirun and run_dir.parent == plan.root.parent
    if not (inside or beside):
        return False
    try:
        if any(p.lstat().st_mtime < plan.started - 2.0 for p in [run_dir, *run_dir.rglob("*")]):
            return False
        shutil.rmtree(run_dir)
    except OSError:
        return False
    parent = run_dir.parent
    while plan.anchor is not None and parent != plan.anchor and plan.anchor in parent.parents \
            and parent not in plan.existing:
        leftovers = list(parent.iterdir())
        if parent == plan.root and [p.name for p in leftovers] == ["multirun.yaml"]:
            leftovers[0].unlink()  # the sweep stopped at its first job: nothing of it is left
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return True


def _close_log_files(run_dir: Path) -> None:
    """Close the logging file handlers writing into ``run_dir`` (Hydra's ``<job>.log``)."""
    import logging

    run_dir = Path(os.path.abspath(str(run_dir)))
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            name = getattr(handler, "baseFilename", None)
            if name and run_dir in Path(name).parents:
                handler.close()
                logger.removeHandler(handler)


def guarded(fn: Callable[[], Any], *, debug: bool = False, run_dir: str | Path | None = None) -> Any:
    """Run ``fn``; a user error becomes one line on stderr and exit code 2, after removing
    ``run_dir`` if this invocation created it (:func:`remove_new_run_dir`). With ``debug`` the
    error propagates with its traceback instead (the run directory is removed all the same)."""
    try:
        return fn()
    except user_errors() as exc:
        if run_dir is not None:
            _close_log_files(Path(run_dir))
            remove_new_run_dir(run_dir)
        if debug:
            raise
        fail(str(exc))
