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
import io
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

from pinn_lora.store.schema import config_dir  # noqa: F401 (where the configs are; the library reads it from schema)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_NO_IMPROVEMENT = 4  # finished without diverging, but the validation residual is not below the base's


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


# ---- the run directory: resolved once, checked before Hydra starts, claimed by the task ------------------
INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun", "config_path",
              "config_name", "config_dir")
RUN_DIR_KEYS = ("out", "hydra.run.dir", "hydra.sweep.dir")  # replaced by their resolved values


@dataclass
class RunPlan:
    """What :func:`prepare_run` found before Hydra started."""

    debug: bool = False
    resume: bool = False
    multirun: bool = False
    root: Path | None = None  # the run directory (a sweep's directory with -m), absolute, resolved once
    argv: list[str] = field(default_factory=list)  # the command line for Hydra, the run directory resolved
    sweep: Any = None  # with -m: the claim (pinn_lora.store.rundir.Claim) of the sweep directory


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
    """Check the command line before ``hydra.main`` runs; returns the :class:`RunPlan`.

    - a malformed override, a value list without ``-m`` and any error composing the config
      (unknown key, a group or value that does not exist) is one ``error:`` line;
    - the run directory (``hydra.run.dir``, i.e. ``out``; with ``-m`` the sweep directory) is
      resolved once (``${now:...}`` included): ``plan.argv`` passes the resolved value on to Hydra,
      which is pointed at a directory that exists already, so it creates nothing; the task claims
      the run directory (:mod:`pinn_lora.store.rundir`) once its input is known to be good;
    - that directory must be writable and claimable: not another run's (unless ``resume=true`` and
      its owner is gone), not a non-empty directory pinn_lora did not create;
    - with ``-m`` the sweep directory is claimed here (each job claims its own subdirectory);
    - ``debug=true`` makes the task's errors propagate with their traceback."""
    args = _parse_args(argv)
    plan = RunPlan(argv=list(argv))
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
    from hydra import compose
    from omegaconf import OmegaConf

    try:
        with hydra_context(config_name):
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
        return plan  # not known before Hydra runs: the task claims what Hydra resolves
    if not str(root).strip():
        fail(f"out={root!r}: the run directory is empty; give a directory (the default is "
             "runs/<problem>/<method>/<time>)")
    from pinn_lora.store import rundir

    key = "hydra.sweep.dir" if plan.multirun else "out"
    root = Path(os.path.abspath(str(root)))
    anchor = check_writable(root, key)
    kind = "sweep" if plan.multirun else "run"
    try:
        if plan.multirun:
            plan.sweep = rundir.claim(root, resume=plan.resume, kind=kind, key=key)
        else:
            rundir.check(root, resume=plan.resume, kind=kind, key=key)
    except rundir.RunDirError as exc:
        fail(str(exc) if resume_key else str(exc).replace(", or resume=true to continue it", ""))
    given = {text for text, o in zip(args.overrides, parsed) if o.get_key_element() in RUN_DIR_KEYS}
    plan.argv = [a for a in argv if a not in given]
    if plan.multirun:  # each job's out is its own directory, sweep.dir/subdir
        plan.argv += [f"hydra.sweep.dir={_quote(root)}", "out=${hydra:runtime.output_dir}"]
    else:
        plan.argv += [f"out={_quote(root)}", f"hydra.run.dir={_quote(anchor)}"]
    plan.root = root
    return plan


def _quote(path: Path) -> str:
    """``path`` as a quoted Hydra override value."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


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


def guarded(fn: Callable[[], Any], *, debug: bool = False,
            resume_command: Callable[[], str | None] | None = None) -> Any:
    """Run ``fn``; a user error becomes one line on stderr and exit code 2 (with ``debug`` it
    propagates with its traceback instead). Nothing is removed: bad input is found before the run
    directory is claimed, and a run that fails after its claim is marked failed there.

    SIGINT (Ctrl-C) and SIGTERM end the run with one line and exit code 130 / 143: the training loop
    first writes a checkpoint of its last verified state (:class:`pinn_lora.training.trainer.Interrupted`), and
    the line gives ``resume_command()`` when there is a checkpoint to continue from."""
    import signal

    from pinn_lora.training.checkpointer import Interrupted

    def on_term(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        return fn()
    except user_errors() as exc:
        if debug:
            raise
        fail(str(exc))
    except KeyboardInterrupt as exc:
        if debug:
            raise
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        command = resume_command() if stop.step is not None and resume_command is not None else None
        then = f"; resume with: {command}" if command else ""
        fail(f"{stop}{then}", stop.exit_code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def resume_command(module: str, overrides: list[str], run_dir: Path) -> str:
    """The command line that continues the run in ``run_dir``: ``overrides`` (the run's, as Hydra
    recorded them) with ``out`` set to the run directory and ``resume=true``."""
    import shlex

    keep = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in ("out", "resume")]
    out = str(run_dir) if all(c.isalnum() or c in "/._-" for c in str(run_dir)) else _quote(run_dir)
    return " ".join(shlex.quote(a) for a in ["python", "-m", module, *keep, f"out={out}", "resume=true"])


def run_task(cfg: Any, fn: Callable[[dict[str, Any], Path], Any]) -> tuple[Any, Path]:
    """The task of an entry point: ``fn(config as a plain dict, run directory)``, guarded; the
    resolved configuration and the overrides go into ``<run dir>/.hydra/`` when (and only if) the
    run claims its directory. Returns ``fn``'s result and the run directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from pinn_lora.store import rundir

    from hydra.types import RunMode

    debug = OmegaConf.select(cfg, "debug", default=False, throw_on_resolution_failure=False) is True
    hydra_cfg = HydraConfig.get()
    out = OmegaConf.select(cfg, "out", throw_on_resolution_failure=False)  # resolved once, by prepare_run
    run_dir = Path(os.path.abspath(str(hydra_cfg.runtime.output_dir if hydra_cfg.mode == RunMode.MULTIRUN or not out
                                       else out)))

    def run() -> Any:
        plain = OmegaConf.to_container(cfg, resolve=True)
        files = {".hydra/config.yaml": OmegaConf.to_yaml(plain),
                 ".hydra/overrides.yaml": OmegaConf.to_yaml(list(hydra_cfg.overrides.task))}
        with rundir.files_on_claim(run_dir, files):
            return fn(plain, run_dir)

    def again() -> str | None:  # entry points with resume=true only
        if OmegaConf.select(cfg, "resume", default=None, throw_on_resolution_failure=False) is None:
            return None
        return resume_command(f"pinn_lora.{hydra_cfg.job.config_name}", list(hydra_cfg.overrides.task), run_dir)

    return guarded(run, debug=debug, resume_command=again), run_dir


def launch(plan: RunPlan, config_name: str, task: Callable[[Any], Any]) -> None:
    """``hydra.main`` on the plan's command line (the run directory resolved); the sweep's claim,
    if any, is released when Hydra returns or marked failed when it raises."""
    import hydra

    sys.argv = [sys.argv[0], *plan.argv]
    register_configs()
    with hydra_errors(plan.debug), (plan.sweep or contextlib.nullcontext()):
        hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(task)()
    if plan.multirun and plan.root is not None:
        sweep_summary(plan.root)


def sweep_summary(root: Path) -> None:
    """After a sweep: one line counting its jobs by status; the jobs that diverged named on stderr and exit code
    :data:`EXIT_DIVERGED` (the sweep ran them all; its exit code says that not all of them held)."""
    import json

    statuses: dict[str, list[str]] = {}
    for summary in sorted(root.rglob("summary.json")):
        try:
            status = json.loads(summary.read_text()).get("status", "unknown")
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
        statuses.setdefault(status, []).append(summary.parent.relative_to(root).as_posix())
    if not statuses:
        return
    total = sum(len(v) for v in statuses.values())
    print(f"sweep {root}: {total} jobs: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(statuses.items())))
    if statuses.get("diverged"):
        fail(f"{len(statuses['diverged'])} of {total} jobs diverged: {', '.join(statuses['diverged'])} "
             "(see their summary.json)", EXIT_DIVERGED)
