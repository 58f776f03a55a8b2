"""Files the project writes for itself: the cache root, atomic writes with the user's umask. Standard library only."""

from __future__ import annotations

import contextlib
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


def atomic_write(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function writing to the open file) to ``path`` atomically: a temp file beside
    it, renamed over it; mode as a plain ``open`` would give (mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            content(fh) if callable(content) else fh.write(content)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
