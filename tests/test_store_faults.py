"""Issue 21 (someone else's file; a ticket whose content is not its address; leftovers of a crash) and issue 20.5
(resume holes): the ticket store and the checkpoints, without a search around them."""

from __future__ import annotations

import os
import shutil
import threading

import pytest
import torch

from sparsebert.tickets.finders import IMPSpec, OMPSpec, RandomSpec
from sparsebert.models.loading import tiny_model_dir
from sparsebert.tickets.pipeline import EvalSpec, SharedText, StoreError, TicketStore, make_ticket
from sparsebert.tickets.ticket import Ticket, TicketError
from sparsebert.engine.training import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, checkpoint_step, load_resume_checkpoint, \
    save_checkpoint

ES = EvalSpec(eval_blocks=4, head_steps=2)
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def smoke():
    from search_spaces.smoke import smoke_model_dir  # a tiny BERT with the embedded tokenizer

    return str(smoke_model_dir())


@pytest.fixture(scope="module")
def made(smoke, tmp_path_factory):
    """A store holding the OMP-0.5 ticket of the smoke model."""
    root = tmp_path_factory.mktemp("store")
    spec = OMPSpec(model=smoke, sparsity=0.5)
    TicketStore(root).get_or_make(spec, ES, SharedText(), **QUIET)
    return root, spec


def _store_copy(made, tmp_path) -> TicketStore:
    root, _ = made
    shutil.copytree(root / "tickets", tmp_path / "tickets")
    return TicketStore(tmp_path)


# ---- locks and symlinks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_lock_that_is_a_link_to_someone_elses_file_leaves_that_file_intact(made, tmp_path, how):
    """The tester's attack: tickets/.<id>.lock made a symlink to another file, which a run truncated to 0 bytes."""
    store = _store_copy(made, tmp_path / "s")
    spec = made[1]
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's thesis\n")
    lock = store.lock_path(spec)
    lock.unlink(missing_ok=True)
    (os.symlink if how == "symlink" else os.link)(victim, lock)
    logs: list[str] = []
    ticket, made_now = store.get_or_make(spec, ES, SharedText(), log=logs.append)
    assert not made_now and ticket.meta.method.value == "omp"
    assert victim.read_text() == "someone's thesis\n"  # not truncated, not written
    if how == "symlink":
        assert not lock.is_symlink() and lock.is_file()  # a fresh lock of our own
        moved = list(lock.parent.glob(f"{lock.name}.symlink-*"))
        assert len(moved) == 1 and moved[0].is_symlink()
        assert any("symlink" in m and str(lock) in m and str(moved[0]) in m for m in logs), logs
    with store.lock(spec) as held:  # holding it writes nothing into the lock file either
        assert held and victim.read_text() == "someone's thesis\n"
        assert "pid" in (lock.parent / f"{lock.name}.holder").read_text()


def test_a_symlinked_ticket_is_quarantined_not_read_and_never_listed(made, tmp_path):
    from search.tickets import ticket_table

    root, spec = made
    store = TicketStore(tmp_path / "s")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "tickets" / spec.ticket_id, elsewhere)  # a valid ticket of the same id, someone else's
    os.symlink(elsewhere, store.path(spec))
    os.symlink(elsewhere, store.root / "tickets" / "0000aaaa0000aaaa")  # any name: not listed either
    assert ticket_table(store.root).empty
    logs: list[str] = []
    ticket, made_now = store.get_or_make(spec, ES, SharedText(), log=logs.append)
    assert made_now  # made here, not taken through the link
    assert not store.path(spec).is_symlink() and Ticket.load(store.path(spec))
    assert any("symlink" in m and str(store.path(spec)) in m for m in logs), logs
    assert (elsewhere / "ticket.json").is_file()  # the link's target untouched
    assert list(ticket_table(store.root)["id"]) == [spec.ticket_id]


def test_a_symlinked_partial_is_moved_aside_and_store_dirs_must_be_real(made, tmp_path):
    root, spec = made
    store = TicketStore(tmp_path / "s")
    target = tmp_path / "theirs"
    target.mkdir()
    os.symlink(target, store.partial_path(spec))
    store.get_or_make(spec, ES, SharedText(), **QUIET)
    assert not store.partial_path(spec).is_symlink()
    assert len(list((store.root / "partial").glob(f"{spec.ticket_id}.symlink-*"))) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    os.symlink(target, bad / "tickets")
    with pytest.raises(StoreError, match="symlink"):
        TicketStore(bad)


# ---- a ticket's content is its address ---------------------------------------------------------------------------

def test_a_ticket_copied_into_another_id_is_quarantined_and_made_again(made, tmp_path):
    """The tester's OMP-0.5 ticket in the directory of the Random-0.5 id, used silently before."""
    root, omp = made
    store = TicketStore(tmp_path)
    rnd = RandomSpec(model=omp.model, sparsity=0.5)
    shutil.copytree(root / "tickets" / omp.ticket_id, store.path(rnd))
    logs: list[str] = []
    ticket, made_now = store.get_or_make(rnd, ES, SharedText(), log=logs.append)
    assert made_now and ticket.meta.method.value == "random"
    aside = list((tmp_path / "tickets").glob(f"{rnd.ticket_id}.corrupt-*"))
    assert len(aside) == 1
    msg = next(m for m in logs if "moved aside" in m)
    assert str(store.path(rnd)) in msg and str(aside[0]) in msg and omp.ticket_id in msg and "not to its id" in msg


def test_a_ticket_of_another_model_in_this_models_id_is_quarantined_with_both_paths(made, tmp_path):
    """The smoke-model ticket in a MiniLM id: 'mask names do not match the model' without id or path before."""
    root, omp = made
    other = str(tiny_model_dir(tmp_path / "wider", hidden=48, layers=2))
    spec = OMPSpec(model=other, sparsity=0.5)
    store = TicketStore(tmp_path / "s")
    wrong = Ticket.load(root / "tickets" / omp.ticket_id)
    wrong.meta.config = spec.canonical()  # its address is right: only its masks are of another model
    wrong.save(store.path(spec))
    logs: list[str] = []
    ticket, made_now = store.get_or_make(spec, ES, SharedText(), log=logs.append)
    assert made_now and ticket.masks["encoder.layer.0.attention.self.query.weight"].shape == (48, 48)
    msg = next(m for m in logs if "moved aside" in m)
    aside = next((tmp_path / "s" / "tickets").glob(f"{spec.ticket_id}.corrupt-*"))
    assert "does not match" in msg or "shape" in msg
    assert str(store.path(spec)) in msg and str(aside) in msg


def test_a_ticket_error_is_not_retried_by_the_local_executor(tmp_path, monkeypatch):
    import trainables
    from search.local import run_trial

    calls = []

    def bad(config, session=None):
        calls.append(1)
        raise TicketError("ticket 0123 at /x: mask names do not match the model")

    monkeypatch.setitem(trainables.TRAINABLES, "transfer", bad)
    res = run_trial(str(tmp_path / "t"), "t", "transfer", {}, max_failures=3)
    assert res["status"] == "ERROR" and res["attempts"] == 1 and len(calls) == 1
    assert "not retried" in (tmp_path / "t" / "log.txt").read_text()

    def flaky(config, session=None):
        calls.append(1)
        raise RuntimeError("CUDA hiccup")

    monkeypatch.setitem(trainables.TRAINABLES, "transfer", flaky)
    assert run_trial(str(tmp_path / "u"), "u", "transfer", {}, max_failures=2)["attempts"] == 3


# ---- leftovers of a crash ----------------------------------------------------------------------------------------

def test_stale_temporary_ticket_dirs_are_removed_unless_their_writer_is_alive(made, tmp_path):
    from search.driver import clean_leftovers

    root, spec = made
    store = _store_copy(made, tmp_path)
    stale = store.root / "tickets" / f".{spec.ticket_id}.k2j4h1x_"  # Ticket.save's temp dir, writer killed
    stale.mkdir()
    (stale / "mask.safetensors").write_bytes(b"x" * 1000)
    live_id = "feedfacefeedface"
    live = store.root / "tickets" / f".{live_id}.abcdefgh"  # another trial is writing this one right now
    live.mkdir()
    part = store.root / "partial" / spec.ticket_id
    part.mkdir(parents=True)
    (part / ".trainer.pt.tmp123").write_bytes(b"half")
    (part / CHECKPOINT_FILE).write_bytes(b"kept")
    held, release = threading.Event(), threading.Event()

    def writer():
        with _lock_id(store, live_id):
            held.set()
            release.wait(30)

    th = threading.Thread(target=writer)
    th.start()
    assert held.wait(10)
    try:
        removed = clean_leftovers(tmp_path / "no-experiment", store.root, log=lambda m: None)
    finally:
        release.set()
        th.join()
    assert not stale.exists() and not (part / ".trainer.pt.tmp123").exists()
    assert live.is_dir() and (part / CHECKPOINT_FILE).read_bytes() == b"kept"
    assert set(removed) == {stale, part / ".trainer.pt.tmp123"}
    assert Ticket.load(store.path(spec))  # the finished ticket untouched


def _lock_id(store: TicketStore, tid: str):
    from sparsebert.engine.fsutil import file_lock

    return file_lock(store.root / "tickets" / f".{tid}.lock")


# ---- resume holes (issue 20.5) -----------------------------------------------------------------------------------

def _imp_spec(smoke, sparsity):
    return IMPSpec(model=smoke, sparsity=sparsity, imp_interval=2, batch_size=4, lr=1e-3,
                   text={"source": "embedded", "block_size": 32, "max_blocks": 64})


def test_imp_resumed_after_its_last_round_returns_its_ticket_and_emits_the_siblings(smoke, tmp_path, monkeypatch):
    import sparsebert.tickets.pipeline as pipeline

    spec, sibling = _imp_spec(smoke, 0.2), _imp_spec(smoke, 0.1)
    store = TicketStore(tmp_path)
    monkeypatch.setattr(pipeline, "_drop_partial", lambda partial, log: None)  # the crash: partial/ stays
    first = make_ticket(spec, ES, SharedText(), store, **QUIET)
    assert checkpoint_step(store.partial_path(spec) / CHECKPOINT_FILE) == 4  # written after the last round
    for s in (spec, sibling):  # lost with the crash: only the partial state is left
        shutil.rmtree(store.path(s))
    logs: list[str] = []
    again = make_ticket(spec, ES, SharedText(), store, log=logs.append)  # resumes at step 4 of 4
    assert store.has(spec) and store.has(sibling)
    assert all(torch.equal(again.masks[k], first.masks[k]) for k in first.masks)


def test_a_leftover_checkpoint_old_never_blocks_a_report_and_a_kill_between_renames_resumes(tmp_path):
    from trainables.session import CHECKPOINT, DirSession

    src = tmp_path / "src"
    src.mkdir()
    (src / "trainer.pt").write_text("step 1")
    trial = tmp_path / "trial"
    s = DirSession(trial, "t")
    s.report({"step": 1}, checkpoint=src)
    shutil.copytree(trial / CHECKPOINT, trial / "checkpoint.old")  # left by a kill after the swap's 2nd rename
    (src / "trainer.pt").write_text("step 2")
    s.report({"step": 2}, checkpoint=src)  # os.replace onto a non-empty checkpoint.old failed here before
    assert (trial / CHECKPOINT / "trainer.pt").read_text() == "step 2" and not (trial / "checkpoint.old").exists()
    os.replace(trial / CHECKPOINT, trial / "checkpoint.old")  # a kill between the two renames
    (trial / ".checkpoint-x1y2").mkdir()  # and the half-copied next one
    with DirSession(trial, "t").resume_dir() as d:
        assert d is not None and (d / "trainer.pt").read_text() == "step 2"
    assert not (trial / ".checkpoint-x1y2").exists()


def test_save_checkpoint_keeps_the_previous_good_one_that_resume_falls_back_to(tmp_path):
    state = {"step": 1, "method": {}, "optimizer": {}, "scheduler": {}, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, state)
    assert not (tmp_path / PREVIOUS_CHECKPOINT_FILE).exists()
    save_checkpoint(tmp_path, {**state, "step": 2})
    assert checkpoint_step(tmp_path / PREVIOUS_CHECKPOINT_FILE) == 1
    assert checkpoint_step(tmp_path / CHECKPOINT_FILE) == 2
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"cut")
    got, path = load_resume_checkpoint(tmp_path, log=lambda m: None)
    assert int(got["step"]) == 1 and path == tmp_path / PREVIOUS_CHECKPOINT_FILE
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
