"""Checkpoints of the one training loop: written atomically (the previous good one kept as ``trainer.prev.pt``),
read on the CPU, and, when the newest is unreadable, moved aside with a fallback to the previous one."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from sparsebert.engine.fsutil import move_aside
from sparsebert.engine.runtime import to_cpu

CHECKPOINT_FILE = "trainer.pt"
logger = logging.getLogger("sparsebert.engine.training")  # the loop's logger: one place to listen to


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``directory/trainer.pt`` (moved to the CPU: device-independent). The
    checkpoint it replaces is kept as ``trainer.prev.pt`` (a hard link: no copy, and ``trainer.pt`` is only ever
    replaced by a rename, never written in place), the fallback of :func:`load_resume_checkpoint`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".trainer.")
    os.close(fd)
    try:
        torch.save(to_cpu(state), tmp)
        current = directory / CHECKPOINT_FILE
        if current.is_file() and not current.is_symlink():
            link = directory / f".{PREVIOUS_CHECKPOINT_FILE}.{os.getpid()}"
            try:
                link.unlink(missing_ok=True)
                os.link(current, link)
                os.replace(link, directory / PREVIOUS_CHECKPOINT_FILE)
            except OSError:  # a filesystem without hard links: no previous copy kept
                link.unlink(missing_ok=True)
        os.replace(tmp, current)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read (truncated, not a torch zip, a pickle weights_only refuses) or is
    not one (a required key missing). The message names the file."""


#: the keys every checkpoint written by :func:`train` holds
CHECKPOINT_KEYS = ("step", "method", "optimizer", "scheduler", "rng")
#: an older good checkpoint kept beside ``trainer.pt``, tried when ``trainer.pt`` is unreadable (where one is kept)
PREVIOUS_CHECKPOINT_FILE = "trainer.prev.pt"


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The state in the checkpoint file ``path`` (on the CPU), checked to be a complete training checkpoint.
    ``mmap``: map the tensors instead of reading them (cheap; to look at the step only). CheckpointError if
    unreadable or incomplete; FileNotFoundError if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as e:  # RuntimeError (PytorchStreamReader: truncated zip), UnpicklingError, EOFError, OSError
        raise CheckpointError(f"{path}: unreadable training checkpoint: {type(e).__name__}: {e}") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {missing})")
    try:
        int(state["step"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad step {state['step']!r}") from e
    return state


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint file was written at (its tensors are mapped, not read). CheckpointError if
    unreadable, FileNotFoundError if absent."""
    return int(read_checkpoint(path, mmap=True)["step"])


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """A checkpoint's state on the CPU, whatever device wrote it (the method and optimizer move it back).
    FileNotFoundError if absent, CheckpointError (naming the file) if unreadable."""
    return read_checkpoint(Path(directory) / CHECKPOINT_FILE)


def _warn(log: Callable[[str], None] | None, msg: str) -> None:
    logger.warning(msg)
    if log is not None:
        log(f"WARNING: {msg}")


def load_resume_checkpoint(
    directory: str | os.PathLike, log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any] | None, Path | None]:
    """The state to resume from in ``directory`` and the file it came from: ``trainer.pt``, else (when it cannot
    be read) the previous good checkpoint if one is kept there (``trainer.prev.pt``), else ``(None, None)``: start
    from scratch. An unreadable file is moved aside to ``<name>.corrupt-<UTC time>`` (never tried again) with a
    warning naming it, on ``log`` and :mod:`logging`. FileNotFoundError if ``directory`` holds no checkpoint."""
    directory = Path(directory)
    present = [directory / n for n in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE) if (directory / n).is_file()]
    if not present:
        raise FileNotFoundError(f"no training checkpoint at {directory / CHECKPOINT_FILE}")
    for i, path in enumerate(present):
        try:
            state = read_checkpoint(path)
        except CheckpointError as e:
            try:
                moved = f"moved aside to {move_aside(path)}"
            except OSError as oe:
                moved = f"could not be moved aside ({oe})"
            rest = ("trying the previous one, " + str(present[i + 1])) if i + 1 < len(present) \
                else "starting from scratch"
            _warn(log, f"resume checkpoint {path} is unreadable and {moved}; {rest} ({e})")
            continue
        if i:
            _warn(log, f"resuming from the previous checkpoint {path} (step {int(state['step'])})")
        return state, path
    return None, None


def state_sha256(state: Any) -> str:
    """sha256 of a (nested) state dict's tensors and values, in key order: a fingerprint of weights (e.g. to show
    which checkpoint a run resumed from)."""
    h = hashlib.sha256()

    def feed(key: str, v: Any) -> None:
        if isinstance(v, dict):
            for k in sorted(v, key=str):
                feed(f"{key}/{k}", v[k])
        elif isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{key}={v!r}".encode())

    feed("", state)
    return h.hexdigest()
