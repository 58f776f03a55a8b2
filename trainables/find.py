"""Ticket finding as a Tune trainable: OMP, random, IMP, TAMT-MLM/KD/MLM+KD (one spec per trial)."""

from __future__ import annotations

import time
from typing import Any

from sparsebert.tickets.pipeline import SharedText, TicketStore
from sparsebert.engine.training import CHECKPOINT_FILE

from .common import (eval_spec, fault_injector, finder_spec, log_fn, reporter, setup_worker, ticket_columns,
                     trial_runtime)
from .session import Session, TuneSession


def find_trainable(config: dict[str, Any], shared: SharedText | None = None, session: Session | None = None) -> None:
    t0 = setup_worker()
    session = session or TuneSession()
    spec = finder_spec(config)
    store = TicketStore(config["store"])
    log = log_fn(f"find {spec.label()} s={spec.sparsity}", session.log_path())
    rt = trial_runtime(config, log)
    base = {"stage": "find", **ticket_columns(spec, None, {}, rt)}
    first = {"startup_s": None}
    to_session = reporter(session, base, config.get("checkpoint_every", 1))
    inject = fault_injector(config.get("debug"))  # drills: a failure at a mask-training step

    def report(metrics, write):
        if inject is not None and isinstance(metrics.get("step"), int):
            inject(metrics["step"])
        if first["startup_s"] is None:
            first["startup_s"] = time.perf_counter() - t0
        to_session({**metrics, "startup_s": first["startup_s"]}, write)

    with session.resume_dir() as ckpt:
        if ckpt is not None and (ckpt / CHECKPOINT_FILE).is_file():  # restore Tune's checkpoint into the store
            store.restore_partial(spec, ckpt / CHECKPOINT_FILE, log=log)  # atomic, under the run's lock, never older
    # content-addressed: a ticket already in the store is reused, never trained twice
    ticket, made = store.get_or_make(spec, eval_spec(config), shared, report=report, log=log, runtime=rt)
    session.report({**base, **ticket_columns(spec, store.path(spec), ticket.meta.metrics, rt), "cached": int(not made),
                 "startup_s": first["startup_s"] or time.perf_counter() - t0, **ticket.meta.metrics})
    return None
