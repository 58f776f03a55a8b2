"""Pre-training evaluation as a Tune trainable: MLM and KD loss of a ticket (made if absent)."""

from __future__ import annotations

import time
from typing import Any

from sparsebert.tickets.pipeline import SharedText, TicketStore, evaluate_ticket

from .common import eval_spec, finder_spec, log_fn, setup_worker, ticket_columns, trial_runtime
from .session import Session, TuneSession


def evaluate_trainable(config: dict[str, Any], shared: SharedText | None = None, session: Session | None = None) -> None:
    t0 = setup_worker()
    session = session or TuneSession()
    spec = finder_spec(config)
    es = eval_spec(config)
    shared = shared or SharedText()
    log = log_fn(f"evaluate {spec.label()} s={spec.sparsity}", session.log_path())
    rt = trial_runtime(config, log)
    store = TicketStore(config["store"])
    ticket, made = store.get_or_make(spec, es, shared, log=log, runtime=rt)
    # a ticket made just now was evaluated with this very EvalSpec: do not evaluate it twice
    metrics = dict(ticket.meta.metrics) if made else evaluate_ticket(ticket, spec, es, shared, log=log, runtime=rt)
    session.report({"stage": "evaluate", "startup_s": time.perf_counter() - t0,
                 **ticket_columns(spec, store.path(spec), metrics, rt), **metrics})
    return None
