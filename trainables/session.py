"""Where a trainable reports to and resumes from: Ray Tune's session, or a plain trial directory.

A trainable body is the same under both; it receives a :class:`Session`:

* :class:`TuneSession` -- ``ray.tune.report`` (with a checkpoint) and ``ray.tune.get_checkpoint``; Ray is imported
  only when it is called, so the trainables import on a machine without Ray.
* :class:`DirSession` -- the local executor's (:mod:`search.local`): rows appended to ``<trial>/progress.jsonl``,
  the latest checkpoint kept as ``<trial>/checkpoint/`` (replaced atomically), resumed from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Protocol


class Session(Protocol):
    def log_path(self) -> Path | None:
        """The file the trial's log lines go to (None: stderr)."""

    def report(self, row: dict[str, Any], checkpoint: Path | None = None) -> None:
        """One result row; ``checkpoint``: a directory to keep as the trial's latest checkpoint (copied)."""

    def resume_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        """The directory of the trial's latest checkpoint, or None on a fresh start."""


class TuneSession:
    def log_path(self) -> Path | None:
        """``<experiment>/<trial>/log.txt`` on the experiment's storage when it is a local (or shared) filesystem,
        else the trial's working dir (Tune's ``get_trial_dir``, not synced unless ``sync_artifacts``). The storage
        path comes from Ray's session internals (``StorageContext.trial_fs_path``), hence the fallback."""
        from ray import tune

        try:
            import pyarrow.fs
            from ray.train._internal.session import get_session

            st = get_session().storage
            if isinstance(st.storage_filesystem, pyarrow.fs.LocalFileSystem):
                d = Path(st.trial_fs_path)
                d.mkdir(parents=True, exist_ok=True)
                return d / "log.txt"
        except Exception:  # noqa: BLE001 -- internals moved: the working dir
            pass
        try:
            return Path(tune.get_context().get_trial_dir()) / "log.txt"
        except Exception:  # noqa: BLE001 -- outside a trial: the console
            return None

    def report(self, row: dict[str, Any], checkpoint: Path | None = None) -> None:
        from ray import tune

        if checkpoint is None:
            tune.report(row)
        else:
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)


PROGRESS, CHECKPOINT = "progress.jsonl", "checkpoint"
OLD, TMP_PREFIX = CHECKPOINT + ".old", ".checkpoint-"


class DirSession:
    """A trial directory as the session: what Tune keeps per trial, without Ray."""

    def __init__(self, trial_dir: str | os.PathLike, trial_id: str):
        self.dir = Path(trial_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trial_id = trial_id
        self.t0 = time.time()
        self.iteration = sum(1 for _ in open(self.dir / PROGRESS)) if (self.dir / PROGRESS).is_file() else 0
        self.last: dict[str, Any] = {}

    def log_path(self) -> Path | None:
        return None  # the local executor already sends the trial's stderr to <trial>/log.txt

    def report(self, row: dict[str, Any], checkpoint: Path | None = None) -> None:
        if checkpoint is not None:  # checkpoint first: a row on disk always has its state beside it
            tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=TMP_PREFIX))
            shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
            swap_checkpoint(self.dir, tmp)
        self.iteration += 1
        self.last = {**row, "training_iteration": self.iteration, "trial_id": self.trial_id,
                     "time_total_s": time.time() - self.t0, "timestamp": int(time.time())}
        with open(self.dir / PROGRESS, "a") as f:
            f.write(json.dumps(self.last, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        clean_trial_dir(self.dir)  # a kill between the two renames of a swap: the surviving copy is put back
        d = self.dir / CHECKPOINT
        yield d if d.is_dir() else None


def swap_checkpoint(trial_dir: Path, new: Path) -> None:
    """Make the whole directory ``new`` the trial's ``checkpoint/``, crash-safe: the current one is renamed to
    ``checkpoint.old``, ``new`` renamed into place, then ``checkpoint.old`` removed. A kill at any point leaves
    ``checkpoint/`` or ``checkpoint.old/`` whole (:func:`clean_trial_dir` puts the survivor back); a
    ``checkpoint.old`` left by such a kill never blocks the next swap."""
    cur, old = trial_dir / CHECKPOINT, trial_dir / OLD
    if cur.is_dir():
        if old.exists():  # a leftover beside a whole checkpoint: the checkpoint is newer
            shutil.rmtree(old)
        os.replace(cur, old)
    # else: no checkpoint yet, or only checkpoint.old survived an earlier kill (kept until `new` is in place)
    os.replace(new, cur)
    shutil.rmtree(old, ignore_errors=True)


def clean_trial_dir(trial_dir: Path) -> list[Path]:
    """Repair what an interrupted :func:`swap_checkpoint` left in a trial dir: ``checkpoint.old`` alone becomes
    ``checkpoint`` again (the last whole one), beside a ``checkpoint`` it is removed, and half-copied
    ``.checkpoint-*`` temporary dirs are removed. Returns the paths removed (or restored)."""
    trial_dir = Path(trial_dir)
    out: list[Path] = []
    cur, old = trial_dir / CHECKPOINT, trial_dir / OLD
    if old.is_dir() and not old.is_symlink():
        if cur.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, cur)
        out.append(old)
    for p in trial_dir.glob(TMP_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        out.append(p)
    return out
