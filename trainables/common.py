"""What every trainable shares: threads, config parsing, reporting with a checkpoint, resuming (through a
:class:`~trainables.session.Session`: Ray Tune's, or a trial directory's). No Ray import here."""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sparsebert.tickets.finders import FinderSpec, ticket_config
from sparsebert.tickets.finders import finder_spec as spec_from_dict
from sparsebert.tickets.pipeline import EvalSpec
from sparsebert.engine.runtime import Runtime
from sparsebert.engine.runtime import resolve_runtime

from .session import Session



def _join_trial_threads(timeout: float = 10.0) -> None:
    """At worker exit, give a stopped trial's thread a bounded time to unwind.

    Tune stops a function trial by waking its thread with ``SystemExit`` inside ``tune.report`` and does not wait
    for it (``session.finish(timeout=0)``); when the actor exits right after (the last trial of an experiment), the
    thread frees the model and removes its checkpoint temp dir while the interpreter finalizes, and a torch
    destructor re-taking the GIL then aborts the process (a SIGABRT stack after the results are written). atexit
    handlers run before finalization, so joining here lets that unwinding finish first."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.daemon and type(t).__name__ == "RunnerThread":
            t.join(max(0.0, deadline - time.monotonic()))


atexit.register(_join_trial_threads)  # a no-op in processes without trial threads (the driver)


def setup_worker() -> float:
    """One torch thread per trial CPU (Ray sets OMP_NUM_THREADS from the trial's resources); quiet HF."""
    t0 = time.perf_counter()
    n = int(os.environ.get("OMP_NUM_THREADS") or 1)
    torch.set_num_threads(max(1, n))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-trial logs: progress lines, not bars
    if os.environ.get("SPARSEBERT_VERBOSE") != "1":  # Ray's per-checkpoint INFO lines would reach the console
        import logging

        logging.getLogger("ray").setLevel(logging.WARNING)
    datasets_logging.disable_progress_bar()
    return t0


def trial_runtime(config: dict[str, Any], log: Callable[[str], None] | None = None) -> Runtime:
    """The trial's device and precision (``runtime`` section of the config; auto: the GPU Ray made visible to
    this trial, else the CPU)."""
    rt = resolve_runtime(config.get("runtime"))
    if log is not None:
        log(f"runtime: {rt.describe()}")
    return rt


def finder_spec(config: dict[str, Any]) -> FinderSpec:
    """The ticket spec of a trial: ``ticket`` (common fields) overlaid with ``variant`` (one grid point)."""
    return spec_from_dict(ticket_config(config))


def eval_spec(config: dict[str, Any]) -> EvalSpec:
    """The space's ``eval`` section; its text defaults to the ticket section's (one held-out text per space)."""
    ev = dict(config.get("eval") or {})
    text = ticket_config(config).get("text")
    if ev.get("text") is None and text is not None:
        ev["text"] = text
    return EvalSpec(**ev)


def log_fn(prefix: str, path: Path | None = None) -> Callable[[str], None]:
    """``[prefix] message`` lines: appended to ``path`` (the trial's log.txt under Tune, where the console shows the
    live view), or to stderr without one or with ``SPARSEBERT_VERBOSE=1`` (``run_search.py run --verbose``)."""
    to_console = path is None or os.environ.get("SPARSEBERT_VERBOSE") == "1"

    def log(msg: str) -> None:
        line = f"[{prefix}] {msg}"
        if to_console:
            print(line, file=sys.stderr, flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    return log


def reporter(session: Session, extra: dict[str, Any], checkpoint_every: int = 1) -> Callable:
    """The loop's ``report(metrics, write_checkpoint)`` -> ``session.report`` with a checkpoint every N reports."""
    count = {"n": 0}

    def report(metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
        count["n"] += 1
        row = {**extra, **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
        if count["n"] % max(1, checkpoint_every) == 0:
            with tempfile.TemporaryDirectory() as d:
                write(Path(d))
                session.report(row, checkpoint=Path(d))
        else:
            session.report(row)

    return report


def ticket_columns(spec: FinderSpec, ticket_path: Path | None, metrics: dict[str, Any],
                   runtime: Runtime | None = None) -> dict[str, Any]:
    """The ticket's identity and proxy losses (and the trial's device/precision), attached to every row a trial
    reports."""
    return {
        **({"device": runtime.device.type, "precision": runtime.precision} if runtime is not None else {}),
        "model": spec.model, "method": spec.method.value, "label": spec.label(), "sparsity": spec.sparsity,
        **spec.columns(), "ticket_seed": getattr(spec, "seed", 0), "ticket_id": spec.ticket_id,
        "ticket_path": str(ticket_path) if ticket_path else None,
        "mlm_loss": metrics.get("mlm_loss"), "kd_loss": metrics.get("kd_loss"),
        "kd_loss_mse": metrics.get("kd_loss_mse"), "mlm_head_sha256": metrics.get("mlm_head_sha256"),
    }


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``debug.fail_at_step`` (reliability tests and drills)."""


def _fail_with(name: str) -> type[Exception]:
    """``debug.fail_with``: the class an injected failure raises (a deterministic one to drill non-retries)."""
    from sparsebert.transfer.tasks import TaskDataError
    from sparsebert.tickets.ticket import TicketError

    return {"InjectedFailure": InjectedFailure, "TicketError": TicketError, "TaskDataError": TaskDataError}[name]


def fault_injector(debug: dict[str, Any] | None) -> Callable[[int], None] | None:
    """``debug: {fail_at_step: N, once_marker: PATH}`` in a space makes a trial raise at step N: always, or only
    the first time when ``once_marker`` is given (the file is created when it fires); ``fail_with: TicketError``
    (or TaskDataError) raises that deterministic error instead of :class:`InjectedFailure`. For drills and tests
    of FailureConfig retries; absent in normal spaces."""
    if not debug or not ({"fail_at_step", "sleep_per_step"} & debug.keys()):
        return None
    at, marker = int(debug.get("fail_at_step", -1)), debug.get("once_marker")
    slow = float(debug.get("sleep_per_step", 0))
    error = _fail_with(debug.get("fail_with", "InjectedFailure"))

    def on_step(step: int) -> None:
        if slow:
            time.sleep(slow)
        if at >= 0 and step == at:
            if marker is None:
                raise error(f"injected failure at step {step}")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return
            os.close(fd)
            raise error(f"injected failure at step {step} (once)")

    return on_step


# ------------------------------------------------------------------------------------- deterministic errors

DETERMINISTIC_ERROR = "deterministic_error.json"


def is_deterministic(e: BaseException) -> bool:
    """An error a retry would only repeat (a ticket that does not fit, a data file refused)."""
    from sparsebert.transfer.tasks import TaskDataError
    from sparsebert.tickets.ticket import TicketError

    return isinstance(e, (TicketError, TaskDataError))


def _trial_dir(session: Session) -> Path | None:
    d = getattr(session, "dir", None)  # a DirSession's
    if d is not None:
        return Path(d)
    try:
        log = session.log_path()
    except Exception:  # noqa: BLE001 -- outside a trial
        return None
    return log.parent if log is not None else None


def stop_deterministic_retries(fn: Callable) -> Callable:
    """A trainable that records a deterministic error (:func:`is_deterministic`) in its trial dir
    (``deterministic_error.json``) and, when a retry finds that record (Ray Tune's FailureConfig retries every
    error: it has no per-exception hook), re-raises it at once: no ticket is made, no model loaded, no step run
    again. The driver removes the records when it starts (``search/driver.py``), so a ``resume`` tries once more
    (the cause may have been fixed). Without a trial dir on this machine (a URI storage) a retry does the work
    again."""
    import functools

    @functools.wraps(fn)
    def trainable(config: dict[str, Any], shared: Any = None, session: Session | None = None) -> None:
        import json

        from .session import TuneSession

        session = session or TuneSession()
        d = _trial_dir(session)
        record = d / DETERMINISTIC_ERROR if d is not None else None
        if record is not None and record.is_file():
            try:
                rec = json.loads(record.read_text())
                cls = _fail_with(rec["base"])
            except (OSError, ValueError, KeyError, TypeError):
                rec = None
            if rec is not None:
                raise cls(f"{rec['message']} [{rec['type']}: not retried, it fails the same way every time; "
                          f"recorded by the first attempt in {record}, this retry did no work]")
        try:
            return fn(config, shared=shared, session=session)
        except Exception as e:
            if record is not None and is_deterministic(e):
                from sparsebert.engine.fsutil import atomic_write
                from sparsebert.transfer.tasks import TaskDataError

                lines = str(e).strip().splitlines()
                base = "TaskDataError" if isinstance(e, TaskDataError) else "TicketError"
                try:
                    atomic_write(record, json.dumps({"type": type(e).__name__, "base": base,
                                                     "message": lines[-1] if lines else type(e).__name__}).encode())
                    log_fn("trial", session.log_path())(
                        f"{type(e).__name__} is deterministic: a retry re-raises it at once ({record})")
                except OSError:  # e.g. a full disk: the retries then do the work again
                    pass
            raise

    return trainable
