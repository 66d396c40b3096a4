"""Running a command: the run directory resolved once and checked before Hydra starts (:func:`prepare_run`),
the task's errors as one line (:func:`guarded`), the run directory claimed by the task (:func:`run_task`),
Hydra started (:func:`launch`) and a sweep's outcome (:func:`sweep_summary`)."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pinn_lora.cli.common import EXIT_DIVERGED, EXIT_OS_ERROR, config_dir, fail, hydra_context, one_line, os_error_line, register_configs, user_errors

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
    reserved: list[Path] = field(default_factory=list)  # the default out's new folders (pinn_lora.store.rundir.reserve)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, key: str) -> Path:
    """``path`` exists as a writable directory or can be created: else one ``error:`` line.
    Returns its nearest existing ancestor (``path`` itself when it exists)."""
    long = next((part for part in path.parts if len(os.fsencode(part)) > 255), None)
    if long is not None:
        fail(f"{key}={path}: the path component {long[:40]}... is {len(os.fsencode(long))} bytes long; file systems "
             "allow at most 255: choose a shorter name")
    try:
        anchor = _nearest_existing(path)
    except OSError as exc:
        fail(f"{key}={path}: {os_error_line(exc)}")
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
    parsed = _parse_overrides(args.overrides)
    plan.multirun = bool(args.multirun) or any(
        o.get_key_element() == "hydra.mode" and str(o.value()) == "MULTIRUN" for o in parsed)
    sweeps = [(text, o) for text, o in zip(args.overrides, parsed) if o.is_sweep_override()]
    if sweeps and not plan.multirun:
        text, o = sweeps[0]
        key = o.get_key_element()
        fail(f"{text!r} gives several values: add -m (--multirun) to run one job per value, or write "
             f"{key}=[...] for a list, or quote it for a string: {key}='\"...\"'")
    plain = [text for text, o in zip(args.overrides, parsed) if not o.is_sweep_override()]
    flags, root = _compose_flags(config_name, plain, plan.multirun)
    plan.debug = flags["debug"] is True
    plan.resume = resume_key and flags["resume"] is True
    if root is None:
        return plan  # not known before Hydra runs: the task claims what Hydra resolves
    given = {text for text, o in zip(args.overrides, parsed) if o.get_key_element() in RUN_DIR_KEYS}
    return _claim_root(plan, argv, root, given, resume_key)


def _parse_overrides(overrides: list[str]) -> list[Any]:
    """Hydra's parse of each override; a malformed one is one ``error:`` line with examples."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except OverrideParseException as exc:
            reason = one_line("\n".join(ln for ln in str(exc).splitlines()
                                        if not ln.startswith(("See https", "Error parsing override"))))
            fail(f"malformed override {text!r}: {reason}. Overrides are key=value, e.g. steps=100, "
                 "problem.nu=[0.01,0.02] (a list), method.targets='[1,2]', out='my runs/a'")
    return parsed


def _compose_flags(config_name: str, plain: list[str], multirun: bool) -> tuple[dict[str, Any], Any]:
    """Compose the config (an error composing it is the user's input: one line); its ``debug`` and ``resume``
    flags and the run (or sweep) directory, None when only Hydra's run can resolve it."""
    from hydra import compose
    from omegaconf import OmegaConf

    try:
        with hydra_context(config_name):
            cfg = compose(config_name, plain, return_hydra_config=True)
            flags = {k: OmegaConf.select(cfg, k, default=False, throw_on_resolution_failure=False)
                     for k in ("debug", "resume")}
            try:
                root = OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
            except Exception as exc:
                if "hydra" not in str(exc):  # e.g. ${hydra:job.name}: resolvable only inside Hydra's run
                    raise
                root = None
    except SystemExit:
        raise
    except Exception as exc:  # Hydra's and OmegaConf's composition errors: the user's input
        fail(_hydra_message(exc))
    return flags, root


def _claim_root(plan: RunPlan, argv: list[str], root: Any, given: set[str], resume_key: bool) -> RunPlan:
    """Resolve the run (or sweep) directory once, check it is writable and claimable (the default ``out``: a new
    directory of its own; a sweep's: claimed here), and point Hydra's arguments at it."""
    from pinn_lora.store import rundir

    if not str(root).strip():
        fail(f"out={root!r}: the run directory is empty; give a directory (the default is "
             "runs/<problem>/<method>/<time>)")
    key = "hydra.sweep.dir" if plan.multirun else "out"
    root = Path(os.path.abspath(str(root)))
    anchor = check_writable(root, key)
    if not given and not plan.multirun and not plan.resume:  # the default out: a new directory of its own
        root, plan.reserved = rundir.reserve(root)
        anchor = root
    kind = "sweep" if plan.multirun else "run"
    try:
        if plan.multirun:
            plan.sweep = rundir.claim(root, resume=plan.resume, kind=kind, key=key)
        else:
            rundir.check(root, resume=plan.resume, kind=kind, key=key)
    except rundir.RunDirError as exc:
        fail(str(exc) if resume_key else str(exc).replace(", or resume=true to continue it", ""))
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
    except OSError as exc:  # the file system's answer (a full disk, a read-only one, a name too long)
        if debug:
            raise
        fail(os_error_line(exc), EXIT_OS_ERROR)
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
    with contextlib.suppress(ImportError):  # pinn_lora's sweep launchers (configs/hydra/launcher/*.yaml)
        from hydra_plugins.pinn_lora_launchers.launchers import register

        register()
    from pinn_lora.store import rundir

    try:
        with hydra_errors(plan.debug), (plan.sweep or contextlib.nullcontext()):
            hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(task)()
    finally:
        rundir.unreserve(plan.reserved)  # refused before its run claimed it: the default out goes again
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
    total = sum(len(v) for v in statuses.values())
    if total:
        print(f"sweep {root}: {total} jobs: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(statuses.items())))
    from pinn_lora.store import sweeps  # jobs that failed or were cancelled (recorded by pinn_lora's launchers)

    unfinished = sweeps.unfinished_message(root)
    if unfinished:
        fail(unfinished, sweeps.EXIT_JOBS_FAILED)
    if not total:
        return
    if statuses.get("diverged"):
        fail(f"{len(statuses['diverged'])} of {total} jobs diverged: {', '.join(statuses['diverged'])} "
             "(see their summary.json)", EXIT_DIVERGED)
