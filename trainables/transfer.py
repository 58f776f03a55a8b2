"""Transfer as a Tune trainable: get (or make) the trial's ticket from the store, fine-tune it on a task."""

from __future__ import annotations

import time
from typing import Any

from sparsebert.transfer.finetune import FineTune, split_transfer
from sparsebert.models.loading import load_tokenizer
from sparsebert.tickets.pipeline import SharedText, TicketStore
from sparsebert.tickets.ticket import Method

from .common import (eval_spec, fault_injector, finder_spec, log_fn, reporter, setup_worker, ticket_columns,
                     trial_runtime)
from .session import Session, TuneSession


def transfer_trainable(config: dict[str, Any], shared: SharedText | None = None, session: Session | None = None) -> None:
    t0 = setup_worker()
    session = session or TuneSession()
    spec = finder_spec(config)
    ft_cfg, train_cfg = split_transfer(config)
    name = f"{spec.label()} s={spec.sparsity} {ft_cfg.task} seed {train_cfg.seed}"
    log = log_fn(f"{name} | fine-tune", session.log_path())
    rt = trial_runtime(config, log)
    store = TicketStore(config["store"])
    ticket, made = store.get_or_make(spec, eval_spec(config), shared, runtime=rt,
                                     log=log_fn(f"{name} | ticket", session.log_path()))
    find_s = time.perf_counter() - t0 if made else 0.0
    tok = load_tokenizer(spec.model)
    ft = FineTune(spec.model, ft_cfg, tok, ticket=None if spec.method is Method.DENSE else ticket,
                  seed=train_cfg.seed, runtime=rt)
    train_cfg.steps = ft.num_steps()
    extra = {"stage": "transfer", "task": ft_cfg.task, "total_steps": train_cfg.steps, "transfer_seed": train_cfg.seed, "ticket_made": int(made),
             "find_s": find_s, "startup_s": time.perf_counter() - t0, "data_bad_rows": ft.bad_rows,
             **ticket_columns(spec, store.path(spec), ticket.meta.metrics, rt)}
    from sparsebert.engine.training import train

    with session.resume_dir() as ckpt:
        train(ft, train_cfg, report=reporter(session, extra, config.get("checkpoint_every", 1)), resume_from=ckpt, log=log,
              on_step=fault_injector(config.get("debug")))
    return None
