"""The local executor: a grid space run to completion by a pool of worker processes on this machine, without Ray.

    run_search.py run SPACE --executor local [--workers N] [--shard K/N]
    run_search.py resume EXP_DIR --executor local [--workers N] [--shard K/N]

For a machine without Ray (a GPU box you can only copy a checkout to) or a single-machine grid where Tune's
schedulers add nothing. The trainables are the same ones Tune runs, with a :class:`~trainables.session.DirSession`:
each trial keeps ``<exp>/<trial>/`` with ``config.json``, ``progress.jsonl`` (every reported row), ``checkpoint/``
(the latest), ``log.txt`` (its log lines) and, once it ends, ``result.json``. ``results.parquet``/``.csv`` have the
schema of a Tune run (:mod:`search.results`), so ``report`` reads either.

* Trials that ended (``result.json`` with status TERMINATED) are never run again; a rerun or ``resume`` runs the
  rest, each from its latest checkpoint. Failed trials are retried ``tune.max_failures`` times.
* Workers share the machine's GPUs: trials reserving ``resources.gpu`` run on the GPU (``device: auto``), N workers
  per GPU; with several GPUs, worker i uses GPU i mod n. One torch thread per ``resources.cpu``.
* Order: the costliest trials first (a task's training file size x epochs), tickets interleaved, so that ticket
  finding starts in parallel and the long fine-tunings do not trail at the end.
* ``--shard K/N`` runs the K-th of N parts (whole tickets per part, balanced by cost): a sweep split over machines
  or sessions, merged by running the next shard in the same experiment directory.
* ``--exclude KEY=VALUE[,KEY=VALUE]`` (repeatable) leaves out the trials matching every pair of one item
  (e.g. ``transfer.task=sst2,transfer.seed=2``); they stay PENDING and a later run without it runs them.
* Only grid spaces with the fifo scheduler: ASHA/PBT/Optuna need Ray (the message says so).

No Ray is imported here or in the trial processes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces.space import Space, SpaceError

from sparsebert.engine.fsutil import atomic_write

from .results import fmt_duration, summarize, write_results

RESULT = "result.json"


from .trial_list import Trial, check_local, excluded, parse_exclude, parse_shard, schedule, shard, trials


# --------------------------------------------------------------------------------------------- the worker side

def _die_with(parent: int) -> None:
    """End this worker when its driver ends, however it ends (SIGKILL included): Linux's ``PR_SET_PDEATHSIG``
    (SIGKILL to us when the parent dies), else a thread that watches the parent pid. A driver already gone before
    this ran (the race PDEATHSIG leaves open) ends us at once."""
    import ctypes
    import signal
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="die-with-driver").start()


def _init_worker(slots, cpus: int, parent: int | None = None) -> None:
    """Pin a worker to a GPU (when there are several) and to ``cpus`` torch threads, before torch is imported; the
    worker dies with its driver (``parent``)."""
    if parent is not None:
        _die_with(parent)
    slot = slots.get()
    os.environ["OMP_NUM_THREADS"] = str(max(1, cpus))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    gpus = [g for g in os.environ.get("SPARSEBERT_LOCAL_GPUS", "").split(",") if g]
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]


def run_trial(trial_dir: str, trial_id: str, stage: str, config: dict[str, Any], max_failures: int) -> dict:
    """One trial in a worker: the stage's trainable with a DirSession, its log lines in ``log.txt``; retried from
    its latest checkpoint on failure. Returns what ``result.json`` holds."""
    from trainables import TRAINABLES
    from trainables.session import DirSession

    d = Path(trial_dir)
    t0 = time.time()
    attempts, error = 0, None
    while True:
        attempts += 1
        session = DirSession(d, trial_id)
        try:
            with open(d / "log.txt", "a", buffering=1) as log, contextlib.redirect_stderr(log), \
                    contextlib.redirect_stdout(log):
                TRAINABLES[stage](config, session=session)
            error = None
            break
        except Exception as e:  # noqa: BLE001 -- a trial's failure is reported, not raised
            error = {"type": type(e).__name__, "message": str(e).strip(), "traceback": traceback.format_exc()}
            with open(d / "log.txt", "a") as log:
                log.write(error["traceback"])
                if _deterministic(e):
                    log.write(f"not retried: a {type(e).__name__} fails the same way every time\n")
            if attempts > max_failures or _deterministic(e):
                break
    result = {"trial_id": trial_id, "status": "ERROR" if error else "TERMINATED", "error": error,
              "metrics": session.last, "wall_s": time.time() - t0, "attempts": attempts}
    atomic_write(d / RESULT, json.dumps(result, default=str, indent=1).encode("utf-8"))
    return result


def _deterministic(e: BaseException) -> bool:
    """An error a retry would only repeat (a ticket that does not fit, a data file refused): not retried."""
    from sparsebert.transfer.tasks import TaskDataError
    from sparsebert.tickets.ticket import TicketError

    return isinstance(e, (TicketError, TaskDataError))


# --------------------------------------------------------------------------------------------- the driver side

class Terminated(KeyboardInterrupt):
    """SIGTERM to the driver: handled as Ctrl-C is (workers stopped, results written), exit 143."""


EXIT_TERMINATED = 143  # 128 + SIGTERM


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the main thread for the body (the handler before is restored)."""
    import signal

    fired = []

    def handler(signum, frame):
        if not fired:  # once: a second SIGTERM must not cut the writing of the results short
            fired.append(signum)
            raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass
class LocalResult:
    """One trial as :func:`search.results.results_frame` reads a Tune result."""

    metrics: dict[str, Any]
    config: dict[str, Any]
    error: Exception | None
    path: str
    metrics_dataframe: Any


def _error(e: dict | None) -> Exception | None:
    if not e:
        return None
    return type(e["type"], (Exception,), {})(e["message"] or e["type"])


def collect(exp_dir: Path, ts: list[Trial]) -> list[LocalResult]:
    import pandas as pd

    out = []
    for t in sorted(ts, key=lambda t: t.index):
        d = exp_dir / t.trial_id
        rows = []
        if (d / "progress.jsonl").is_file():
            for line in (d / "progress.jsonl").read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash
                    rows.append(json.loads(line))
        res = json.loads((d / RESULT).read_text()) if (d / RESULT).is_file() else {}
        # without result.json a trial did not end (interrupted, or never started): PENDING, whatever it reported
        m = {**(res.get("metrics") or {}), "trial_id": t.trial_id}
        frame = pd.DataFrame(rows) if rows and res else None  # an unfinished trial's best so far is no score
        out.append(LocalResult(m, t.config, _error(res.get("error")), str(d), frame))
    return out


def _done(exp_dir: Path, t: Trial) -> bool:
    f = exp_dir / t.trial_id / RESULT
    try:
        return json.loads(f.read_text()).get("status") == "TERMINATED"
    except (OSError, json.JSONDecodeError):
        return False


def run_local(space: Space, exp_dir: Path, name: str, store_root: Path, workers: int | None = None,
              shard_spec: str | None = None, exclude: list[str] | None = None) -> int:
    """Run (or continue) the space's trials in ``exp_dir``; write the results; print a line per trial."""
    from . import EXIT_BAD_INPUT

    t_start = time.time()
    try:
        check_local(space)
        k, n = parse_shard(shard_spec)
        rules = parse_exclude(exclude)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    every = trials(space, store_root)
    mine = schedule(shard(every, k, n) if n > 1 else every)
    left_out = [t for t in mine if excluded(t, rules)]
    mine = [t for t in mine if not excluded(t, rules)]
    todo = [t for t in mine if not _done(exp_dir, t)]
    cpus = max(1, int(space.resources.get("cpu", 1)))
    gpu_share = float(space.resources.get("gpu", 0) or 0)
    ngpu = _gpu_count() if gpu_share and space.runtime["device"] != "cpu" else 0
    default = max(1, (os.cpu_count() or 1) // cpus)
    if ngpu:
        default = min(default, int(ngpu / gpu_share))
    workers = max(1, min(workers or default, len(todo) or 1))
    print(f"local executor: {len(every)} trial(s) in the space"
          + (f", shard {k}/{n}: {len(mine) + len(left_out)}" if n > 1 else "")
          + (f", {len(left_out)} excluded" if left_out else "")
          + f", {len(mine) - len(todo)} already finished, {len(todo)} to run; {workers} worker(s)"
          + (f" on {ngpu} GPU(s)" if ngpu else " on the CPU") + f", {cpus} thread(s) each", flush=True)
    for t in todo:
        (exp_dir / t.trial_id).mkdir(parents=True, exist_ok=True)
        (exp_dir / t.trial_id / "config.json").write_text(json.dumps(t.config, indent=1, default=str))
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    if ngpu:
        os.environ.setdefault("SPARSEBERT_LOCAL_GPUS", ",".join(str(i) for i in range(ngpu)) if ngpu > 1 else "")
    with _sigterm_as_interrupt():
        return _drive(space, exp_dir, name, every, mine, todo, n, workers, cpus, ctx, slots, t_start)


def _drive(space, exp_dir, name, every, mine, todo, n, workers, cpus, ctx, slots, t_start) -> int:
    from . import EXIT_INTERRUPTED

    done_n, failed, cost_left = 0, 0, sum(t.cost for t in todo)
    interrupted = None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slots, cpus, os.getpid()))
    try:
        futs = {pool.submit(run_trial, str(exp_dir / t.trial_id), t.trial_id, space.stage, t.config,
                            space.tune["max_failures"]): t for t in todo}
        pending = set(futs)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                t = futs[f]
                done_n += 1
                cost_left -= t.cost
                try:
                    res = f.result()
                except Exception as e:  # the worker process itself died
                    res = {"status": "ERROR", "error": {"type": type(e).__name__, "message": str(e)},
                           "metrics": {}, "wall_s": 0.0}
                elapsed = time.time() - t_start
                rate = (sum(x.cost for x in todo) - cost_left) / max(elapsed, 1e-9)
                print(f"[{done_n}/{len(todo)} {fmt_duration(elapsed)}, ETA {fmt_duration(cost_left / rate if rate else 0)}] "
                      f"{t.label}: {_outcome(res)} in {fmt_duration(res.get('wall_s', 0))}  "
                      f"({exp_dir.name}/{t.trial_id}/log.txt)", flush=True)
                failed += res["status"] == "ERROR"
        pool.shutdown()
    except KeyboardInterrupt as e:
        interrupted = e
        print(f"\n{'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}: trials in flight are "
              f"stopped; `run_search.py resume {exp_dir} --executor local` "
              "runs what did not finish", file=sys.stderr)
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # the trials in flight: stop them now (their latest checkpoints stay)
            p.terminate()
    from .results import ResultsWriteError

    try:
        df = write_results(collect(exp_dir, every), exp_dir, name)
    except ResultsWriteError as e:  # e.g. the disk is full: the results files there before are unchanged
        from . import EXIT_INFRA

        print(f"error: {e}; every trial's result.json is kept: free space, then `run_search.py resume {exp_dir} "
              "--executor local` (only what did not finish runs)", file=sys.stderr)
        return EXIT_INFRA
    code = summarize(df[df["trial_id"].isin([t.trial_id for t in mine])] if n > 1 else df, exp_dir,
                     time.time() - t_start)
    if interrupted is not None:
        return EXIT_TERMINATED if isinstance(interrupted, Terminated) else EXIT_INTERRUPTED
    return code


def _outcome(res: dict) -> str:
    if res["status"] == "ERROR":
        msg = (res["error"].get("message") or "").splitlines()
        return f"FAILED {res['error']['type']}: {msg[-1][:120] if msg else ''}"
    m = res.get("metrics") or {}
    out = f"score {m['score']:.4f}" if isinstance(m.get("score"), (int, float)) else "done"
    for k in ("mlm_loss", "kd_loss"):
        if isinstance(m.get(k), float):
            out += f" ({k.split('_')[0]} {m[k]:.4f})"
    return out


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0
