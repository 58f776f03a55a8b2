"""From a finder spec to a stored, evaluated ticket: content-addressed, locked, resumable. No Ray here.

A spec (:mod:`sparsebert.tickets.finders`: one small dataclass per method) says how a ticket is found; its canonical form
is hashed into the ticket id, so the same spec is never trained twice in one experiment or across experiments that
share a :class:`TicketStore` root. Making a ticket takes a file lock (concurrent trials wait rather than duplicate
work) and checkpoints into the store, so a crashed trial's retry resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sparsebert.text.data import TextDataConfig
from sparsebert.text.kd_data import text_data
from sparsebert.tickets.evaluation import evaluate_kd, evaluate_mlm
from sparsebert.tickets.finders import DEFAULT_TEXT, FindContext, FinderSpec, finder_spec
from sparsebert.engine.fsutil import atomic_write, file_lock, move_aside
from sparsebert.engine.knobs import check_knobs, knob
from sparsebert.tickets.masking import apply_masks
from sparsebert.tickets.mlm_head import head_sha256
from sparsebert.models.loading import load_pretraining_model, load_tokenizer
from sparsebert.engine.runtime import CPU, Runtime
from sparsebert.tickets.ticket import Method, Ticket, TicketError, check_address, check_fits, config_hash
from sparsebert.engine.training import CHECKPOINT_FILE, CheckpointError, checkpoint_step

__all__ = ["EvalSpec", "FinderSpec", "SharedText", "StoreError", "TicketStore", "ensure_head", "evaluate_ticket", "finder_spec",
           "make_ticket"]

logger = logging.getLogger(__name__)


@dataclass
class EvalSpec:
    """How a ticket's pre-training losses (the proxy) are measured."""

    eval_blocks: int = knob(64, "validation blocks for MLM/KD loss", min=1)
    batch_size: int = knob(16, "evaluation batch", min=1)
    head_steps: int = knob(100, "steps to fit an MLM head if the model has none", min=0)
    dense_decoder: bool = knob(False, "MLM loss with the dense pre-trained embedding as decoder (the reference's)")
    mlm_eval: dict = knob(help="evaluate_mlm options, e.g. {seed: 42, reduction: batch_mean} (the reference's)",
                          factory=dict)
    kd_eval: dict = knob(help="evaluate_kd options, e.g. {exclude_padding: false, reduction: batch_mean}",
                         factory=dict)
    text: dict | None = knob(None, "held-out text (TextDataConfig fields); None: the ticket's own text")

    def __post_init__(self) -> None:
        check_knobs(self)

    def text_for(self, spec: FinderSpec) -> dict:
        """The text the losses of ``spec``'s ticket are measured on."""
        if self.text is not None:
            return dict(self.text)
        own = spec.train_text()
        return dict(own) if own is not None else dict(DEFAULT_TEXT)


class SharedText:
    """Tokenized train/validation data for one text config, built once (driver) and shared with trials: a
    LongTensor [N, block_size] for ``kind: blocks`` (the default), a :class:`sparsebert.text.kd_data.PaddedSequences`
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


class StoreError(TicketError):
    """The store itself cannot be used safely (e.g. its ``tickets/`` is a symlink)."""


class TicketStore:
    """``<root>/tickets/<id>/`` (finished tickets), ``<root>/partial/<id>/`` (resumable state), locks beside.

    Nothing corrupt is used: a stored ticket is verified on every load (:meth:`Ticket.load`: checksum, sparsity);
    one that fails is moved aside to ``tickets/<id>.corrupt-<UTC time>`` and made again. A ticket is written only
    under its own lock (``tickets/.<id>.lock``), whose holder (pid, host, since when) is recorded in the lock file
    for whoever waits."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for sub in ("tickets", "partial"):
            d = self.root / sub
            if d.is_symlink():  # the store's own directories: a link would put tickets in someone else's place
                raise StoreError(f"{d} is a symlink (to {os.readlink(d)}): a ticket store's tickets/ and partial/ "
                                 f"must be real directories; remove the link")
            d.mkdir(parents=True, exist_ok=True)

    def path(self, spec: FinderSpec) -> Path:
        return self.root / "tickets" / spec.ticket_id

    def partial_path(self, spec: FinderSpec) -> Path:
        """The resumable training state of the run that makes ``spec``'s ticket."""
        return self.root / "partial" / spec.run_spec().ticket_id

    def lock_path(self, spec: FinderSpec) -> Path:
        return self.root / "tickets" / f".{spec.ticket_id}.lock"

    def has(self, spec: FinderSpec) -> bool:
        return (self.path(spec) / "ticket.json").is_file()

    @contextlib.contextmanager
    def lock(self, spec: FinderSpec, log: Callable[[str], None] | None = None, wait: bool = True,
             wanted: FinderSpec | None = None):
        """Hold ``spec``'s ticket lock. When another process holds it, say once (``log`` and :mod:`logging`) what is
        waited for (ticket id, label, lock path, holder) and again when it is got. ``wait=False``: do not wait;
        the context yields False (lock not held) instead of True. ``wanted``: the ticket the caller wants, when
        ``spec`` is the run that makes it (named in the messages). The lock file is never followed through a
        symlink nor written (:func:`sparsebert.engine.fsutil.file_lock`); a symlink in its place is moved aside."""
        path = self.lock_path(spec)
        what = _describe(spec, wanted)
        t0 = [None]

        def waiting(holder: str) -> None:
            t0[0] = time.monotonic()
            _note(log, f"waiting for {what}: its lock {path} is held by another trial ({holder})", logging.INFO)

        def symlink(link: Path, moved: Path) -> None:
            _note(log, f"the lock {link} of {what} was a symlink (someone else's file would have been used as "
                       f"the lock): moved aside to {moved}, not followed", logging.WARNING)

        with file_lock(path, wait=wait, on_wait=waiting, on_symlink=symlink) as held:
            if held and t0[0] is not None:
                _note(log, f"got the lock {path} of {what} after {time.monotonic() - t0[0]:.1f}s", logging.INFO)
            yield held

    def clean_leftovers(self) -> list[Path]:
        """Remove what a killed writer left (returns the paths): Ticket.save's temporary directories
        (``tickets/.<id>.<random>``, ``tickets/.<id>.old.<pid>``), stray lock-note temp files, and temporary files
        in ``partial/<id>/`` -- each only when the lock of its ticket is free (a live writer holds it: its files
        are kept). Symlinks among them are unlinked, never followed."""
        out: list[Path] = []
        tdir = self.root / "tickets"

        def remove(p: Path, tid: str) -> None:
            with file_lock(tdir / f".{tid}.lock", wait=False) as held:
                if not held:
                    return
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                out.append(p)

        for p in sorted(tdir.iterdir()):
            name = p.name
            if name.startswith(".") and not name.endswith((".lock", ".lock.holder")) and ".symlink-" not in name:
                remove(p, name[1:].split(".", 1)[0])
        for d in sorted((self.root / "partial").iterdir()):
            if d.is_dir() and not d.is_symlink():
                for p in sorted(d.iterdir()):
                    if p.name.startswith("."):
                        remove(p, d.name)
        return out

    def quarantine(self, spec: FinderSpec, reason: object = "",
                   log: Callable[[str], None] | None = None) -> Path | None:
        """Move ``spec``'s stored ticket aside to ``tickets/<id>.corrupt-<UTC time>`` (kept for a post mortem, never
        loaded) with a warning naming both paths. Call it holding the ticket's lock. Returns the new path (None if
        there was nothing to move)."""
        src = self.path(spec)
        if not src.exists() and not src.is_symlink():
            return None
        dest = move_aside(src)
        _note(log, f"stored ticket {spec.ticket_id} ({_label(spec)}) at {src} is corrupt and was moved aside to "
                   f"{dest}; it will be made again. Reason: {reason}", logging.WARNING)
        return dest

    def load_verified(self, spec: FinderSpec, log: Callable[[str], None] | None = None) -> Ticket | None:
        """The stored ticket of ``spec``, verified; None if there is none, or if it was corrupt (then it has been
        quarantined). Verified: the files (:meth:`Ticket.load`: checksum, sparsity), the address (the id is the hash
        of the spec in ``ticket.json``: a ticket copied into another id's directory is not that ticket) and the
        masks against the model's prunable weights (names and shapes). A symlink in the ticket's place (or in its
        partial's) is quarantined too: nothing is read through it. Call it holding the lock of the ticket (or of
        the run that makes it)."""
        path = self.path(spec)
        partial = self.partial_path(spec)
        if partial.is_symlink():
            dest = move_aside(partial, "symlink")
            _note(log, f"partial state {partial} of ticket {spec.ticket_id} was a symlink: moved aside to {dest}, "
                       "not followed", logging.WARNING)
        if path.is_symlink():
            self.quarantine(spec, f"{path} is a symlink (to {os.readlink(path)}), not a ticket of this store", log)
            return None
        if not path.exists():
            return None
        try:
            ticket = Ticket.load(path)
            check_address(ticket, spec.ticket_id, path)
            check_fits(ticket, spec.model, path)
        except TicketError as e:
            self.quarantine(spec, e, log)
            return None
        return ticket

    def get_or_make(
        self, spec: FinderSpec, eval_spec: EvalSpec | None = None, shared: SharedText | None = None,
        report: Callable | None = None, log: Callable[[str], None] = print, runtime: Runtime = CPU,
    ) -> tuple[Ticket, bool]:
        """The stored ticket for ``spec`` (made now if absent, on ``runtime``). Returns (ticket, made_now). The
        lock is the run's: trials asking for different snapshots of one run wait for that one run. A stored ticket
        that fails verification is quarantined (:meth:`quarantine`) and made again."""
        with self.lock(spec.run_spec(), log=log, wanted=spec):
            ticket = self.load_verified(spec, log)
            if ticket is not None:
                return ticket, False
            ticket = make_ticket(spec, eval_spec or EvalSpec(), shared or SharedText(), self, report, log, runtime)
            return ticket, True

    def restore_partial(self, spec: FinderSpec, src_checkpoint_file: str | os.PathLike,
                        log: Callable[[str], None] | None = None) -> bool:
        """Copy a training checkpoint (a Tune checkpoint's ``trainer.pt``) into ``partial/<run id>/trainer.pt``,
        where the run that makes ``spec``'s ticket resumes from, unless the store already holds a partial at least
        as far along. Under the run's lock; the copy is atomic and durable (temp file, fsync, rename). Returns
        whether it copied.

        "Newer" is the training step stored in each checkpoint, not the file time: a copy gets a fresh mtime
        whatever state it holds (so an old Tune checkpoint restored after the store's partial moved on would look
        newer), and the trials of one store run on machines whose clocks differ. A file whose step cannot be read
        is not older or newer but unusable: an unreadable source is not copied (warning); an unreadable partial
        is moved aside (``trainer.pt.corrupt-<UTC time>``, warning) and replaced. Nothing is restored for a run whose
        ticket is already stored."""
        src = Path(src_checkpoint_file)
        run = spec.run_spec()
        dest_dir = self.partial_path(spec)
        dest = dest_dir / CHECKPOINT_FILE
        with self.lock(run, log=log, wanted=spec):
            if self.has(run):
                _note(log, f"not restoring {src}: the ticket {run.ticket_id} it trains is already stored",
                      logging.INFO)
                return False
            try:
                src_step = checkpoint_step(src)
            except (CheckpointError, FileNotFoundError) as e:
                _note(log, f"not restoring the unreadable checkpoint {src} into {dest}: {e}", logging.WARNING)
                return False
            if dest.is_file():
                try:
                    dest_step = checkpoint_step(dest)
                except CheckpointError as e:
                    moved = move_aside(dest)
                    _note(log, f"partial checkpoint {dest} is unreadable, moved aside to {moved} ({e})",
                          logging.WARNING)
                else:
                    if dest_step >= src_step:
                        _note(log, f"kept {dest} (step {dest_step}): not older than {src} (step {src_step})",
                              logging.INFO)
                        return False
            dest_dir.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin:
                atomic_write(dest, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20))
            _note(log, f"restored {src} (step {src_step}) into {dest}", logging.INFO)
            return True


def _label(spec: FinderSpec) -> str:
    return f"{spec.label()} s={spec.sparsity}"


def _describe(spec: FinderSpec, wanted: FinderSpec | None) -> str:
    if wanted is None or wanted.ticket_id == spec.ticket_id:
        return f"ticket {spec.ticket_id} ({_label(spec)})"
    return f"ticket {wanted.ticket_id} ({_label(wanted)}), made by the run {spec.ticket_id}"


def _note(log: Callable[[str], None] | None, msg: str, level: int) -> None:
    logger.log(level, msg)
    if log is not None:
        log(f"WARNING: {msg}" if level >= logging.WARNING else msg)


def ensure_head(spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log=print, runtime: Runtime = CPU,
                model=None):
    """Give ``model`` (default: ``spec.model`` loaded now) a usable MLM head: the checkpoint's own, or one fitted
    once with the encoder frozen and cached (:func:`sparsebert.tickets.mlm_head.load_or_fit_head`). Returns the model. The
    driver calls it before trials start, so trials find the head cached."""
    from sparsebert.tickets.mlm_head import HeadFitConfig, load_or_fit_head

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
    save it in ``store`` (with every sibling ticket the finder passed on the way, each under its own lock). The
    ticket id does not depend on the runtime; the ticket records it. With a ``store``, the caller holds the lock of
    ``spec.run_spec()`` (:meth:`TicketStore.get_or_make` does)."""
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
        if store is None:
            stamp(found, t)
            return
        # under the sibling's own lock; a holder of it is making, storing or reading that very ticket: leave it
        with store.lock(found, log=log, wait=False) as held:
            if not held:
                log(f"sibling ticket {found.ticket_id} ({_label(found)}) is locked by another trial that makes or "
                    f"stores it: not stored from here")
                if found.ticket_id == spec.ticket_id:  # the one asked for: returned, stored by the other trial
                    stamp(found, t)
                return
            stored = store.load_verified(found, log)  # a corrupt stored sibling is quarantined and replaced
            if stored is not None:
                made[found.ticket_id] = stored
                return
            stamp(found, t)
            t.save(store.path(found))

    ctx = FindContext(
        model=model, tokenizer=load_tokenizer(spec.model), eval_blocks=eval_spec.eval_blocks,
        blocks=lambda split: shared.get(spec.model, spec.train_text(), split),
        partial=store.partial_path(run) if store else None, report=report, log=log, runtime=runtime,
        emit=emit,
    )
    ticket = stamp(run, run.find(ctx))
    ticket.meta.metrics["find_s"] = time.perf_counter() - t0
    if store is not None:
        ticket.save(store.path(run))
        _drop_partial(ctx.partial, log)
    if spec.ticket_id not in made:
        raise RuntimeError(f"the run of {run.ticket_id} did not make ticket {spec.ticket_id}")
    return made[spec.ticket_id]


def _drop_partial(partial: Path, log: Callable[[str], None]) -> None:
    """Remove a finished run's training state; files moved aside as corrupt (``*.corrupt-*``) are kept for a post
    mortem (they are never read: resuming reads ``trainer.pt`` only)."""
    if not partial.exists():
        return
    corrupt = [p for p in partial.iterdir() if ".corrupt-" in p.name]
    if not corrupt:
        shutil.rmtree(partial, ignore_errors=True)
        return
    for p in partial.iterdir():
        if p not in corrupt:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    log(f"kept {', '.join(str(p) for p in corrupt)} (moved aside as unreadable) for a post mortem")


def evaluate_ticket(
    ticket: Ticket, spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log: Callable = print,
    runtime: Runtime = CPU,
) -> dict[str, float | str]:
    """MLM loss (fixed masking, the original/fitted head) and KD losses (vs the dense model) on validation blocks:
    ``kd_loss`` (= ``kd_loss_cos``, ours) and ``kd_loss_mse`` (the reference's full_mse); ``mlm_head_sha256``
    names the head the MLM loss was measured with (:func:`sparsebert.tickets.mlm_head.head_sha256`).

    ``eval_spec.mlm_eval`` / ``eval_spec.kd_eval`` (optional dicts, read with getattr) are passed to
    :func:`evaluate_mlm` (``seed``, ``reduction``, ``mlm_probability``) and :func:`evaluate_kd`
    (``exclude_padding``, ``reduction``): e.g. :data:`sparsebert.tickets.evaluation.REFERENCE_MLM_EVAL` /
    :data:`~sparsebert.tickets.evaluation.REFERENCE_KD_EVAL`; absent: ours."""
    tok = load_tokenizer(spec.model)
    blocks = shared.get(spec.model, eval_spec.text_for(spec), "validation")[: eval_spec.eval_blocks]
    model = ensure_head(spec, eval_spec, shared, log, runtime)
    head = head_sha256(model)  # the head the MLM loss is measured with (the checkpoint's or the fitted one)
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
    out["mlm_head_sha256"] = head
    return out
