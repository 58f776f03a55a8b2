"""From a finder spec to a stored, evaluated ticket: content-addressed, locked, resumable. No Ray here.

A spec (:mod:`sparsebert.finders`: one small dataclass per method) says how a ticket is found; its canonical form
is hashed into the ticket id, so the same spec is never trained twice in one experiment or across experiments that
share a :class:`TicketStore` root. Making a ticket takes a file lock (concurrent trials wait rather than duplicate
work) and checkpoints into the store, so a crashed trial's retry resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .data import TextDataConfig
from .kd_data import text_data
from .evaluation import evaluate_kd, evaluate_mlm
from .finders import DEFAULT_TEXT, FindContext, FinderSpec, finder_spec
from .masking import apply_masks
from .models import load_pretraining_model, load_tokenizer
from .runtime import CPU, Runtime
from .ticket import Method, Ticket, config_hash

__all__ = ["EvalSpec", "FinderSpec", "SharedText", "TicketStore", "ensure_head", "evaluate_ticket", "finder_spec",
           "make_ticket"]


@dataclass
class EvalSpec:
    """How a ticket's pre-training losses (the proxy) are measured."""

    eval_blocks: int = field(default=64, metadata={"help": "validation blocks for MLM/KD loss"})
    batch_size: int = field(default=16, metadata={"help": "evaluation batch"})
    head_steps: int = field(default=100, metadata={"help": "steps to fit an MLM head if the model has none"})
    dense_decoder: bool = field(default=False, metadata={"help": (
        "MLM loss with the dense pre-trained embedding as decoder (the reference's eval_mlm) instead of the masked")})
    mlm_eval: dict = field(default_factory=dict, metadata={"help": (
        "evaluate_mlm options, e.g. {seed: 42, reduction: batch_mean} (the reference's eval_mlm)")})
    kd_eval: dict = field(default_factory=dict, metadata={"help": (
        "evaluate_kd options, e.g. {exclude_padding: false, reduction: batch_mean} (the reference's eval_kd)")})
    text: dict | None = field(default=None, metadata={"help": (
        "held-out text (TextDataConfig fields) whose validation split the losses are measured on; None: the "
        "space's ticket text section (the same for every variant), else the embedded default")})

    def text_for(self, spec: FinderSpec) -> dict:
        """The text the losses of ``spec``'s ticket are measured on."""
        if self.text is not None:
            return dict(self.text)
        own = getattr(spec, "text", None)
        return dict(own) if own is not None else dict(DEFAULT_TEXT)


class SharedText:
    """Tokenized train/validation data for one text config, built once (driver) and shared with trials: a
    LongTensor [N, block_size] for ``kind: blocks`` (the default), a :class:`sparsebert.kd_data.PaddedSequences`
    (input_ids / attention_mask [/ token_type_ids], [N, block_size]) for ``kind: paragraphs``."""

    def __init__(self, blocks: dict[str, dict[str, torch.Tensor]] | None = None):
        self.blocks = blocks or {}

    @staticmethod
    def key(model: str, text: dict) -> str:
        # the dict as written: a text without the new fields (kind, kd_*) keys exactly as before
        return config_hash({"model": model, **text})

    def get(self, model: str, text: dict, split: str):
        k = self.key(model, text)
        if k not in self.blocks or split not in self.blocks[k]:
            cfg = TextDataConfig(**text)
            self.blocks.setdefault(k, {})[split] = text_data(cfg, load_tokenizer(model), split)
        return self.blocks[k][split]


class TicketStore:
    """``<root>/tickets/<id>/`` (finished tickets), ``<root>/partial/<id>/`` (resumable state), locks beside."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "tickets").mkdir(parents=True, exist_ok=True)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)

    def path(self, spec: FinderSpec) -> Path:
        return self.root / "tickets" / spec.ticket_id

    def has(self, spec: FinderSpec) -> bool:
        return (self.path(spec) / "ticket.json").is_file()

    @contextlib.contextmanager
    def lock(self, spec: FinderSpec):
        with open(self.root / "tickets" / f".{spec.ticket_id}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_make(
        self, spec: FinderSpec, eval_spec: EvalSpec | None = None, shared: SharedText | None = None,
        report: Callable | None = None, log: Callable[[str], None] = print, runtime: Runtime = CPU,
    ) -> tuple[Ticket, bool]:
        """The stored ticket for ``spec`` (made now if absent, on ``runtime``). Returns (ticket, made_now). The
        lock is the run's: trials asking for different snapshots of one run wait for that one run."""
        with self.lock(spec.run_spec()):
            if self.has(spec):
                return Ticket.load(self.path(spec)), False
            ticket = make_ticket(spec, eval_spec or EvalSpec(), shared or SharedText(), self, report, log, runtime)
            return ticket, True


def ensure_head(spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log=print, runtime: Runtime = CPU,
                model=None):
    """Give ``model`` (default: ``spec.model`` loaded now) a usable MLM head: the checkpoint's own, or one fitted
    once with the encoder frozen and cached (:func:`sparsebert.mlm_head.load_or_fit_head`). Returns the model. The
    driver calls it before trials start, so trials find the head cached."""
    from .mlm_head import HeadFitConfig, load_or_fit_head

    model = model if model is not None else load_pretraining_model(spec.model)
    if model.head_pretrained:
        return model
    text = {"source": eval_spec.text_for(spec).get("source", "embedded"), "block_size": 128}
    blocks = shared.get(spec.model, text, "train")
    load_or_fit_head(model, spec.model, load_tokenizer(spec.model), blocks, f"{text['source']}-128",
                    HeadFitConfig(steps=eval_spec.head_steps), log=log, runtime=runtime)
    return model


def make_ticket(
    spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, store: TicketStore | None = None,
    report: Callable | None = None, log: Callable[[str], None] = print, runtime: Runtime = CPU,
) -> Ticket:
    """Find the ticket ``spec`` describes on ``runtime`` (device, precision), evaluate its pre-training losses,
    save it in ``store`` (with every sibling ticket the finder passed on the way). The ticket id does not depend on
    the runtime; the ticket records it."""
    t0 = time.perf_counter()
    run = spec.run_spec()  # a snapshot ticket is made by the run it is a snapshot of
    model = load_pretraining_model(spec.model)
    if spec.needs_mlm_head:
        ensure_head(spec, eval_spec, shared, log, runtime, model=model)
    made: dict[str, Ticket] = {}

    def stamp(found: FinderSpec, t: Ticket) -> Ticket:
        t.meta.config = found.canonical()
        t.meta.seed = getattr(found, "seed", 0)
        t.meta.runtime = {"device": runtime.device.type, "precision": runtime.precision}
        t.meta.metrics = evaluate_ticket(t, found, eval_spec, shared, log=log, runtime=runtime)
        made[found.ticket_id] = t
        return t

    def emit(found: FinderSpec, t: Ticket) -> None:  # a sibling: evaluated and stored at once (crash-safe)
        if store is not None and store.has(found):
            return
        stamp(found, t)
        if store is not None:
            t.save(store.path(found))

    ctx = FindContext(
        model=model, tokenizer=load_tokenizer(spec.model), eval_blocks=eval_spec.eval_blocks,
        blocks=lambda split: shared.get(spec.model, spec.text, split),
        partial=store.root / "partial" / run.ticket_id if store else None, report=report, log=log, runtime=runtime,
        emit=emit,
    )
    ticket = stamp(run, run.find(ctx))
    ticket.meta.metrics["find_s"] = time.perf_counter() - t0
    if store is not None:
        ticket.save(store.path(run))
        if ctx.partial.exists():
            shutil.rmtree(ctx.partial, ignore_errors=True)
    if spec.ticket_id not in made:
        raise RuntimeError(f"the run of {run.ticket_id} did not make ticket {spec.ticket_id}")
    return made[spec.ticket_id]


def evaluate_ticket(
    ticket: Ticket, spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log: Callable = print,
    runtime: Runtime = CPU,
) -> dict[str, float]:
    """MLM loss (fixed masking, the original/fitted head) and KD losses (vs the dense model) on validation blocks:
    ``kd_loss`` (= ``kd_loss_cos``, ours) and ``kd_loss_mse`` (the reference's full_mse).

    ``eval_spec.mlm_eval`` / ``eval_spec.kd_eval`` (optional dicts, read with getattr) are passed to
    :func:`evaluate_mlm` (``seed``, ``reduction``, ``mlm_probability``) and :func:`evaluate_kd`
    (``exclude_padding``, ``reduction``): e.g. :data:`sparsebert.evaluation.REFERENCE_MLM_EVAL` /
    :data:`~sparsebert.evaluation.REFERENCE_KD_EVAL`; absent: ours."""
    tok = load_tokenizer(spec.model)
    blocks = shared.get(spec.model, eval_spec.text_for(spec), "validation")[: eval_spec.eval_blocks]
    model = ensure_head(spec, eval_spec, shared, log, runtime)
    model.dense_decoder = eval_spec.dense_decoder
    teacher = copy.deepcopy(model.base).to(runtime.device)
    if ticket.meta.method is not Method.DENSE:
        apply_masks(model.base, ticket)
    model.to(runtime.device)
    out = {}
    mlm_kw = dict(getattr(eval_spec, "mlm_eval", None) or {})
    kd_kw = dict(getattr(eval_spec, "kd_eval", None) or {})
    out.update(evaluate_mlm(model, blocks, tok, eval_spec.batch_size, runtime=runtime, **mlm_kw))
    out.update(evaluate_kd(model, teacher, blocks, eval_spec.batch_size, runtime=runtime, **kd_kw))
    out["eval_blocks"] = int(len(blocks))
    return out
