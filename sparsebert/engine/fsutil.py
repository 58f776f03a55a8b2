"""Files the project writes for itself: the cache root, durable atomic writes with the user's umask, moving a
damaged file aside, file locks that never follow a symlink. Standard library only."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def cache_root() -> Path:
    """``$SPARSEBERT_CACHE`` or ``~/.cache/sparsebert``: the embedded data, token caches, fitted MLM heads."""
    env = os.environ.get("SPARSEBERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsebert"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename or a new file in it) to the disk; a no-op where directories cannot be
    opened or fsynced (some network filesystems, other platforms)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function writing to the open file) to ``path`` atomically and durably: a temp
    file beside it, fsynced, renamed over it, the directory fsynced; mode as a plain ``open`` would give (mkstemp's
    is 0600). A crash leaves the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            content(fh) if callable(content) else fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def utc_stamp() -> str:
    """The current UTC time as a file-name part, e.g. ``20250101T120000.123456Z``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def move_aside(path: str | os.PathLike, tag: str = "corrupt") -> Path:
    """Rename a damaged file or directory to ``<name>.<tag>-<UTC time>`` in the same directory (kept for a post
    mortem, never read again by the code that rejected it). Returns the new path; OSError if it cannot be moved."""
    path = Path(path)
    stamp = utc_stamp()
    dest = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while dest.exists():  # two quarantines in one microsecond (or a clock step back)
        dest = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
        n += 1
    os.rename(path, dest)
    fsync_dir(path.parent)
    return dest


# --------------------------------------------------------------------------------------------------- file locks

def _open_lock(path: Path) -> int:
    """An fd on the lock file ``path``, created if missing, never through a symlink (``O_NOFOLLOW``: ELOOP) and
    never for writing (a lock's content is never touched: a hard link to someone's file stays intact)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, f"{path} is not a regular file")
    return fd


def read_note(path: Path) -> str | None:
    """The text of a small note file, read without following a symlink; None if it is absent or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip() or None
    finally:
        os.close(fd)


def _write_note(path: Path, text: str) -> None:
    """``path`` replaced by ``text`` (a temp file renamed over it: a symlink there is replaced, never followed)."""
    atomic_write(path, text.encode("utf-8"))


def holder_note() -> str:
    """Who holds a lock, as it is recorded for whoever waits: ``pid 123 on host since <UTC time>``."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {utc_stamp()}"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True, on_wait: Callable[[str], None] | None = None,
              on_symlink: Callable[[Path, Path], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the body; yields True, or False when
    ``wait`` is False and another process holds it. ``on_wait(holder)`` is called once before blocking, with the
    holder's note (``<path>.holder``: pid, host, since when; written by a rename, removed on release). The lock
    file is opened read-only and without following symlinks, and is never written or truncated: a symlink in its
    place is moved aside (``<name>.symlink-<UTC time>``, ``on_symlink(link, moved_to)``) and a fresh lock made."""
    path = Path(path)
    note = path.with_name(path.name + ".holder")
    try:
        fd = _open_lock(path)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        moved = move_aside(path, "symlink")
        if on_symlink is not None:
            on_symlink(path, moved)
        fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait(read_note(note) or "holder unknown")
            fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            _write_note(note, holder_note() + "\n")
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(note)
    finally:
        os.close(fd)  # releases the flock
