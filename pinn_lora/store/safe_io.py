"""Writing files only inside the folder pinn_lora owns, never through a symbolic link, and with the
user's umask.

Every file pinn_lora writes goes through :func:`write_bytes` (:func:`pinn_lora.store.rundir.write_atomic` calls
it): the folders from the owned root down to the file are opened one at a time with ``O_NOFOLLOW``
(relative to the previous one), so a component that is a symbolic link — placed there before the run
or while it runs — is refused (:class:`UnsafePathError`) instead of followed; the file itself must not
be a link either (it is not replaced, and nothing is written through it). The new file is created
beside its name with ``O_CREAT | O_EXCL`` and mode ``0o666`` (the kernel applies the umask: 0644 under
umask 022) and then renamed (or, for a file that must be new, linked) into place.

The root itself (the run directory the user named) may be a link: that is the user's choice. This
module imports nothing from pinn_lora."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from pathlib import Path
from typing import Iterator

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class UnsafePathError(ValueError):
    """A path pinn_lora would write to goes through a symbolic link (or a non-directory) below the
    folder it owns."""


def _link_message(link: Path, root: Path) -> str:
    try:
        target = f" (to {os.readlink(link)})"
    except OSError:
        target = ""
    return (f"{link} is a symbolic link{target}; pinn_lora writes only inside {root} and never through a "
            "link: remove the link (or choose another directory)")


def _parts(path: Path, root: Path) -> list[str]:
    """The components of ``path`` below ``root`` (both absolute, not resolved)."""
    rel = os.path.relpath(path, root)
    if rel == ".":
        return []
    parts = Path(rel).parts
    if parts and parts[0] == "..":
        raise UnsafePathError(f"{path} is outside {root}, the folder pinn_lora writes into")
    return list(parts)


@contextlib.contextmanager
def open_dir(root: str | Path, folder: str | Path, *, create: bool = True) -> Iterator[int]:
    """A file descriptor of directory ``folder`` (``root`` or below it), reached from ``root`` one
    component at a time without following links; missing folders are created (mode 0o777: the
    umask applies) when ``create``. Refused (:class:`UnsafePathError`) at a link or a file."""
    root, folder = Path(os.path.abspath(root)), Path(os.path.abspath(folder))
    parts = _parts(folder, root)
    if create:
        os.makedirs(root, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)
    here = root
    try:
        for name in parts:
            here = here / name
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
            try:
                nxt = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    if os.path.islink(here):
                        raise UnsafePathError(_link_message(here, root)) from None
                    raise UnsafePathError(f"{here} is not a directory; pinn_lora writes files inside {root} "
                                          "only into folders it created") from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _check_name(fd: int, name: str, path: Path, root: Path) -> None:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(_link_message(path, root))
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{path} is a directory, not a file", str(path))


def write_bytes(path: str | Path, data: bytes, *, new: bool = False, root: str | Path | None = None) -> None:
    """Write ``data`` to file ``path`` atomically (a temp file beside it, renamed over it), every
    folder from ``root`` (default: the file's own folder) down to it checked to be no link, the
    file itself no link; with ``new`` an existing file is never replaced (FileExistsError, nothing
    changed). The file's mode follows the umask (0o666 & ~umask)."""
    path = Path(os.path.abspath(path))
    root = path.parent if root is None else Path(os.path.abspath(root))
    with open_dir(root, path.parent) as fd:
        _check_name(fd, path.name, path, root)
        tmp = f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                      0o666, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as fh:
                fh.write(data)
            if new:
                os.link(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            else:
                os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)


def make_dirs(path: str | Path, root: str | Path | None = None) -> Path:
    """Create folder ``path`` (and those between ``root`` and it) without following links; returns it."""
    path = Path(os.path.abspath(path))
    with open_dir(path.parent if root is None else root, path):
        pass
    return path


def links_below(root: str | Path, limit: int = 3) -> list[Path]:
    """Up to ``limit`` symbolic links inside folder ``root`` (not following any); a folder pinn_lora
    made holds none, so one found there was put there by someone else."""
    found: list[Path] = []
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        return found
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(here) / name
            if p.is_symlink():
                found.append(p)
                if len(found) >= limit:
                    return found
    return found


def check_no_links(root: str | Path) -> None:
    """Raise :class:`UnsafePathError` naming the first symbolic link inside folder ``root``."""
    root = Path(os.path.abspath(root))
    links = links_below(root, 1)
    if links:
        raise UnsafePathError(_link_message(links[0], root))


def open_append(path: str | Path, root: str | Path | None = None):
    """File ``path`` opened for appending text (created with the umask's mode when missing), reached
    from ``root`` through no link and itself no link."""
    path = Path(os.path.abspath(path))
    root = path.parent if root is None else Path(os.path.abspath(root))
    with open_dir(root, path.parent) as fd:
        try:
            out = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                          0o666, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(_link_message(path, root)) from None
            raise
    return os.fdopen(out, "a", encoding="utf-8")
