"""Run directories owned by exactly one run.

A run (``python -m pinn_lora.adapt``, :func:`pinn_lora.adapt` with ``run_dir``, ``adapt_many``,
a sweep, a ``compare`` report, a pretraining) *claims* its directory before it writes anything
there: an exclusive create (``O_CREAT | O_EXCL``) of the marker :data:`MARKER`, which records the
owner (host, pid, the process's start time, when, a random token) and the run's status. So:

- two runs given one directory at once: one creates the marker, the other is refused;
- a directory that exists and is not empty but holds no marker was not made by pinn_lora: it is
  refused, never written into;
- a directory with a marker holds a run: refused, unless the run is continued (``resume=true``)
  and its owner is gone — on the same host a live owner process blocks it; the taker renames the
  old marker away first, so of two takers only one succeeds;
- nothing the run wrote is deleted after the claim: a run that fails is marked ``failed`` (in the marker
  and in ``summary.json``), and can be resumed or left for inspection — except a fresh claim refused for
  bad input (:data:`BAD_INPUT`) before the run wrote anything: the marker and the claim's own files (and
  the folders the claim created) are removed again, so a refused command leaves the folder as it was.

:func:`check` tells, without writing, whether a claim would be refused (callers run it before
their slow work and validation, then :func:`claim` when the input is known to be good, so bad
input creates nothing). This module knows files only: it imports nothing from pinn_lora but :mod:`pinn_lora.store.safe_io`."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

MARKER = ".pinn_lora_run.json"
SUMMARY = "summary.json"
LEGACY_RESUMABLE = "checkpoint.safetensors"  # a run directory written before markers existed
RESUMABLE = ("failed", "interrupted")  # summary.json statuses of a run that resume=true may continue

T = TypeVar("T")


class RunDirError(ValueError):
    """A run directory that this run may not claim (it holds another run, or is not pinn_lora's)."""


_ACTIVE: dict[Path, "Claim"] = {}  # claims held by this process, by directory
_ON_CLAIM: dict[Path, dict[str, str]] = {}  # files to write when a directory is claimed (files_on_claim)


def _abs(path: str | Path) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: /proc/<pid>/stat, in clock ticks since boot), so a
    reused pid is not taken for the owner; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_json(file: Path) -> dict[str, Any] | None:
    """A JSON object file: None when missing, ``{}`` when unreadable or not an object."""
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of directory ``path`` (None when there is none; an unreadable one as ``{}``)."""
    return _read_json(_abs(path) / MARKER)


def owner_alive(info: Mapping[str, Any]) -> bool:
    """Whether the owner recorded in a marker is still running. Only a ``running`` marker has an
    owner; on another host it cannot be told and counts as gone (continuing is then the user's
    explicit choice); in this process only a claim still held counts."""
    if info.get("status") != "running" or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return any(c.token == info.get("token") for c in _ACTIVE.values())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(pid)
    return started is None or info.get("pid_start") in (None, started)


def describe(info: Mapping[str, Any]) -> str:
    """``run (finished; pid 12 on host, started <time>)``: a marker in words."""
    return (f"{info.get('kind', 'run')} ({info.get('status', 'status unknown')}; pid {info.get('pid', '?')} on "
            f"{info.get('host', '?')}, started {info.get('started', '?')})")


def _summary_status(path: Path) -> str | None:
    data = _read_json(path / SUMMARY)
    return None if data is None else data.get("status", "unreadable")


def _refusal(path: Path, *, resume: bool, kind: str, key: str | None) -> str | None:
    """Why ``path`` cannot be claimed now (None: it can)."""
    where, other = (f"{key}={path}", f"another {key}=...") if key else (f"run directory {path}", "another one")
    if path.exists() and not path.is_dir():
        return f"{where} is a file; give a directory"
    if path.is_symlink() and not path.exists():
        return (f"{where} is a symbolic link to {os.readlink(path)}, which does not exist; give a directory (or "
                "create the link's target first)")
    if not path.is_dir():
        return None
    info = read_marker(path)
    again = f"choose {other}" + (", or resume=true to continue it" if kind == "run" else "")
    if info is None:
        names = sorted(p.name for p in path.iterdir())
        if not names:
            return None
        if all(n.startswith((f".{MARKER}.", f"{MARKER}.")) for n in names):
            # only another run's marker on its way in (its temp file, or one set aside while taken over)
            return f"{where} was claimed a moment ago by another run (its marker is being written); choose {other}"
        if resume and kind == "run" and LEGACY_RESUMABLE in names:
            return None  # a run of an earlier pinn_lora (before markers): its checkpoint says so
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return (f"{where} is not empty ({shown}) and was not created by pinn_lora (no {MARKER}); "
                f"nothing is written into it: choose a new or empty directory")
    if owner_alive(info):
        return f"{where} is in use by a running pinn_lora {describe(info)}; wait for it to end, or choose {other}"
    if not resume:
        return f"{where} already holds a previous {describe(info)}; it is never overwritten: {again}"
    if info.get("kind", "run") != kind:
        return f"{where} holds a {info.get('kind')}, not a {kind}: {again}"
    status = _summary_status(path)
    if kind == "run" and status is not None and status not in RESUMABLE:
        return f"run directory {path} holds a finished run ({SUMMARY}: {status}); nothing to resume"
    from pinn_lora.store.safe_io import links_below

    links = links_below(path, 1)
    if links:  # pinn_lora makes no links: one in its directory was put there to be written through
        return (f"{where} holds a symbolic link, {links[0].relative_to(path)} (to {os.readlink(links[0])}), that "
                "pinn_lora did not make; it writes only inside its directory and never through a link: "
                "remove the link")
    return None


def check(path: str | Path, *, resume: bool = False, kind: str = "run", key: str | None = None) -> None:
    """Raise :class:`RunDirError` when :func:`claim` would refuse ``path``; writes nothing."""
    why = _refusal(_abs(path), resume=resume, kind=kind, key=key)
    if why:
        raise RunDirError(why)


def _new_marker(kind: str) -> dict[str, Any]:
    return {"kind": kind, "status": "running", "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": uuid.uuid4().hex, "command": " ".join(sys.argv)}


def owner_root(path: str | Path) -> Path | None:
    """The directory claimed by this process that ``path`` lies in (the innermost), or None."""
    path = _abs(path)
    roots = [root for root in _ACTIVE if root == path or root in path.parents]
    return max(roots, key=lambda r: len(r.parts)) if roots else None


def write_atomic(path: str | Path, data: bytes, *, new: bool = False) -> None:
    """Write file ``path`` atomically: a temp file beside it, then renamed over it; with ``new`` it is
    linked instead, so an existing file is never replaced (FileExistsError, nothing changed). Inside
    a directory this process has claimed, no folder below it and not the file may be a symbolic link
    (:class:`pinn_lora.store.safe_io.UnsafePathError`); the file's mode follows the umask."""
    from pinn_lora.store.safe_io import write_bytes

    write_bytes(path, data, new=new, root=owner_root(path))


def make_dirs(path: str | Path) -> Path:
    """Create folder ``path``; inside a claimed directory, through no symbolic link."""
    from pinn_lora.store.safe_io import make_dirs as make

    return make(path, owner_root(path))


def _encode(info: Mapping[str, Any]) -> bytes:
    return (json.dumps(info, indent=2) + "\n").encode()


class Claim:
    """This process's ownership of a run directory (returned by :func:`claim`). Use it as a
    context manager, or :meth:`guard` the calls that write and :meth:`release` at the end: an
    exception marks the run failed; the directory and its contents are kept."""

    def __init__(self, path: Path | None, info: dict[str, Any], previous: Mapping[str, Any] | None = None) -> None:
        self.path, self.info, self.previous = path, info, previous

    @property
    def token(self) -> str | None:
        return self.info.get("token")

    def _update(self, **changes: Any) -> None:
        if self.path is None:
            return
        self.info.update(changes)
        write_atomic(self.path / MARKER, _encode(self.info))

    def release(self, status: str = "finished", **record: Any) -> None:
        """The run is over: record ``status`` (and ``record``) in the marker; this process no longer owns it."""
        if self.path is None or _ACTIVE.get(self.path) is not self:
            return
        del _ACTIVE[self.path]
        self._update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record)

    def fail(self, exc: BaseException) -> None:
        """Mark the run failed (or ``exc.run_status``, e.g. ``interrupted``): in the marker and in
        summary.json (kept and updated when it exists). A run without a checkpoint to resume from is
        told how to start over."""
        if self.path is None or _ACTIVE.get(self.path) is not self:
            return
        if isinstance(exc, BAD_INPUT) and self._withdraw():
            return  # bad input found after the claim, before the run wrote anything: as before the command
        status = getattr(exc, "run_status", "failed")
        message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        if self.info.get("kind") == "run" and not (self.path / LEGACY_RESUMABLE).is_file():
            message += ("; it stopped before its first checkpoint, so resume=true cannot continue it: start it "
                        "again in a new directory (another out=...)")
        summary = _read_json(self.path / SUMMARY) or {}
        if self.info.get("kind") == "run":
            write_atomic(self.path / SUMMARY, (json.dumps({**summary, "status": status, "message": message},
                                                      indent=2) + "\n").encode())
        self.release(status, message=message)

    def _withdraw(self) -> bool:
        """Undo a fresh claim whose directory holds only what the claim wrote (the marker, the files of
        :func:`files_on_claim` and their folders): remove those and the folders the claim created; the
        directory is then as it was before. False (nothing removed) when anything else is there or the
        marker is no longer this claim's."""
        made: set[str] | None = getattr(self, "made", None)
        if self.path is None or made is None or (read_marker(self.path) or {}).get("token") != self.token:
            return False
        found = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*")}
        if found != made or any((self.path / rel).is_symlink() for rel in found):
            return False
        del _ACTIVE[self.path]
        for rel in sorted(made, key=lambda r: -r.count("/")):  # files, then their folders, deepest first
            target = self.path / rel
            with contextlib.suppress(OSError):
                target.rmdir() if target.is_dir() else target.unlink()
        for folder in getattr(self, "created", []):  # the run directory and the parents the claim made
            with contextlib.suppress(OSError):
                folder.rmdir()
        return True

    def guard(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; if it raises (Ctrl-C included) the run is marked failed first."""
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            self.fail(exc)
            raise

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.fail(exc)
        else:
            self.release()


# exceptions that are the user's input (ConfigError, CheckpointError, RunDirError ... are ValueErrors; unknown
# names are KeyErrors): raised after a fresh claim before anything was written, the claim is withdrawn
BAD_INPUT = (ValueError, KeyError)

UNCLAIMED = Claim(None, {})  # for a run without a directory: guard() just calls, release() does nothing


def claim(path: str | Path, *, resume: bool = False, kind: str = "run", key: str | None = None) -> Claim:
    """Claim directory ``path`` (created with its parents when missing) for this process, or raise
    :class:`RunDirError` (see the module docstring; ``key``, e.g. ``out``, names the setting in
    messages). With ``resume`` (and for a ``report``, whose
    new version replaces the old) a directory of the same kind whose owner is gone is taken over.
    Files registered with :func:`files_on_claim` are written right after the marker (those not
    there yet)."""
    path = _abs(path)
    where = f"{key}={path}" if key else f"run directory {path}"
    take_over = resume or kind == "report"
    check(path, resume=take_over, kind=kind, key=key)
    created = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # innermost first
    path.mkdir(parents=True, exist_ok=True)
    info = _new_marker(kind)
    previous = read_marker(path)
    if previous is not None and take_over:
        # only one taker can move the old marker away; it must still be the one judged gone
        aside = path / f"{MARKER}.{info['token']}.old"
        try:
            os.rename(path / MARKER, aside)
        except FileNotFoundError:
            raise RunDirError(f"{where} is being taken over by another process") from None
        moved = _read_json(aside) or {}
        if moved.get("token") != previous.get("token"):
            with contextlib.suppress(OSError):
                os.link(aside, path / MARKER)
            os.unlink(aside)
            raise RunDirError(f"{where} was taken over by another {describe(moved)}")
        os.unlink(aside)
        info["taken_over_from"] = {k: previous.get(k) for k in ("host", "pid", "started", "status")}
    try:
        write_atomic(path / MARKER, _encode(info), new=True)
    except FileExistsError:
        other = read_marker(path) or {}
        raise RunDirError(f"{where} was claimed a moment ago by another {describe(other)}; "
                          "choose another directory") from None
    owned = Claim(path, info, previous)
    _ACTIVE[path] = owned
    for rel, text in _ON_CLAIM.get(path, {}).items():
        target = path / rel
        make_dirs(target.parent)
        with contextlib.suppress(FileExistsError):  # a resumed run keeps the files of its start
            write_atomic(target, text.encode(), new=True)
    if previous is None:  # a fresh claim: what it wrote, so bad input found later can withdraw it (Claim._withdraw)
        owned.created = created
        owned.made = {MARKER, *(p.relative_to(path).as_posix() for rel in _ON_CLAIM.get(path, {})
                                for p in [path / rel, *(path / rel).parents] if path in p.parents)}
    return owned


def reserve(path: str | Path) -> tuple[Path, list[Path]]:
    """A new directory for a run whose name was not chosen by the user (the default ``out``, a timestamp to
    the second): ``path``, or ``path-2``, ``path-3`` ... — the first that can be created (``mkdir`` is
    atomic, so two commands started in the same second get two directories). Returns it and the folders
    created (innermost first), which :func:`unreserve` removes again if no run claimed them."""
    path = _abs(path)
    made = [p for p in path.parents if not os.path.lexists(p)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate, [candidate, *made]
    raise RunDirError(f"run directory {path}: 9999 runs of that name already exist; choose out=...")


def unreserve(folders: list[Path]) -> None:
    """Remove the folders :func:`reserve` created that are still empty (the command was refused before
    its run claimed them)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def owned(path: str | Path) -> bool:
    """Whether ``path`` is, or lies inside, a directory claimed by this process and not released."""
    path = _abs(path)
    return any(root == path or root in path.parents for root in _ACTIVE)


@contextlib.contextmanager
def files_on_claim(path: str | Path, files: Mapping[str, str]) -> Iterator[None]:
    """While the block runs, a claim of ``path`` also writes ``files`` (relative path -> text):
    how the command line puts its resolved configuration into the run directory once it is the
    run's, and only then."""
    path = _abs(path)
    _ON_CLAIM[path] = dict(files)
    try:
        yield
    finally:
        _ON_CLAIM.pop(path, None)

