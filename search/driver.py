"""One experiment, one driver: the lock a ``run`` or ``resume`` holds on its experiment directory for its whole
life (both executors), and the clean-up of what a crashed driver or trial left behind, done at the next start.
No Ray imported here.

* :func:`driver_lock`: ``<exp>/.driver.lock`` (a ``flock``, released by the kernel when the driver dies, SIGKILL
  included), its holder (pid, host, since when) in ``.driver.lock.holder``. A second driver is refused with
  :class:`DriverBusy` naming the holder (the commands exit 2): two drivers on one directory would train the same
  trial twice in it.
* :func:`sigterm_as_ctrl_c`: SIGTERM to a Ray-executor driver is Ctrl-C (Tune stops gracefully, the results are
  written, exit 143); the local executor has its own (``search/local.py``).
* :func:`clean_leftovers`: temporary files of an interrupted results write in the experiment, a local trial's
  half-made checkpoint, the store's stale temporary ticket directories (:meth:`TicketStore.clean_leftovers`), and
  the trials' records of a deterministic error (``trainables.common.stop_deterministic_retries``: a new driver
  tries such a trial once more).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

from sparsebert.engine.fsutil import file_lock, read_note

DRIVER_LOCK = ".driver.lock"
LOCK_FILES = (DRIVER_LOCK, DRIVER_LOCK + ".holder")


class DriverBusy(RuntimeError):
    """Another driver holds the experiment (the message names its pid and host)."""


@contextlib.contextmanager
def driver_lock(exp_dir: Path) -> Iterator[None]:
    """Hold ``exp_dir``'s driver lock for the body; :class:`DriverBusy` (one line) if another driver holds it."""
    lock = Path(exp_dir) / DRIVER_LOCK
    with file_lock(lock, wait=False) as held:
        if not held:
            holder = read_note(lock.with_name(lock.name + ".holder")) or "holder unknown"
            raise DriverBusy(f"{exp_dir} is in use by another driver ({holder}): two drivers would train the same "
                             f"trials twice in it; wait for it to end (or stop that process) and run this again")
        yield


def experiment_files(exp_dir: Path) -> list[Path]:
    """What is in ``exp_dir`` besides the driver lock files."""
    return [p for p in Path(exp_dir).iterdir() if p.name not in LOCK_FILES]


def clear_experiment(exp_dir: Path) -> None:
    """Remove everything in ``exp_dir`` but the driver lock (``run --overwrite``, holding the lock)."""
    for p in experiment_files(exp_dir):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def clean_leftovers(exp_dir: Path, store_root: Path | None, log: Callable[[str], None] = print) -> list[Path]:
    """Remove what an interrupted driver or trial left (call it holding the driver lock): ``.results*.tmp`` files
    in the experiment, ``.checkpoint-*`` temporary dirs and a ``checkpoint.old`` beside a whole ``checkpoint`` in
    its trial dirs, and the store's stale temporary ticket dirs. Returns what was removed (each said in ``log``)."""
    removed: list[Path] = []
    exp_dir = Path(exp_dir)
    if exp_dir.is_dir():
        for p in exp_dir.glob(".results*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
        for d in (p for p in exp_dir.iterdir() if p.is_dir() and not p.is_symlink()):
            from trainables.common import DETERMINISTIC_ERROR
            from trainables.session import clean_trial_dir

            removed += clean_trial_dir(d)
            if (d / DETERMINISTIC_ERROR).is_file():  # this driver's retries stop at once; a new driver tries again
                (d / DETERMINISTIC_ERROR).unlink()
                log(f"note: {d.name} failed with a deterministic error before: it is tried once more "
                    "(the cause may have been fixed)")
    if store_root is not None and Path(store_root).is_dir():
        from sparsebert.tickets.pipeline import TicketStore

        removed += TicketStore(store_root).clean_leftovers()
    for p in removed:
        log(f"note: removed {p}, left by an interrupted run")
    return removed


# ------------------------------------------------------------------------- SIGTERM to a Ray-executor driver

class Fired(list):
    """The SIGTERM seen (truthy once it fired); :meth:`arm` (re)installs the handler."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def arm(self) -> None:
        try:
            signal.signal(signal.SIGTERM, self.handler)
        except ValueError:  # not the main thread
            pass


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[Fired]:
    """SIGTERM to the driver is Ctrl-C: while Tune runs, its own SIGINT handler is called (Tune stops the trials
    gracefully, saves its state and ``fit`` returns); before Tune runs, :class:`search.local.Terminated` (a
    KeyboardInterrupt) is raised. Only the first SIGTERM counts: a second one never cuts the writing of the results
    short. Yields the :class:`Fired` list (call ``arm()`` after ``ray.init``, which installs a handler of its own)."""

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        tune_handler = signal.getsignal(signal.SIGINT)
        if callable(tune_handler) and tune_handler is not signal.default_int_handler:
            print("\nterminated (SIGTERM): stopping the trials in flight (their latest checkpoints are kept) ...",
                  file=sys.stderr, flush=True)
            tune_handler(signal.SIGINT, frame)
        else:
            from .local import Terminated

            raise Terminated()

    fired = Fired(handler)
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield fired
        return
    try:
        yield fired
    finally:
        signal.signal(signal.SIGTERM, old)
