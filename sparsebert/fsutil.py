"""Files the project writes for itself: the cache root, durable atomic writes with the user's umask, moving a
damaged file aside. Standard library only."""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


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
