"""Issue 15, nothing corrupt is ever used: tickets are checksummed and their sparsity is checked on load, a corrupt
stored ticket is moved aside and made again, an unreadable resume checkpoint falls back (never blocks), a Tune
checkpoint never overwrites a newer partial, and every ticket is written under its own lock."""

from __future__ import annotations

import dataclasses
import json
import pickle
import threading
import time
from pathlib import Path

import pytest
import torch

from sparsebert.tickets.finders import IMPSpec, OMPSpec, TAMTSpec
from sparsebert.models.loading import load_pretraining_model
from sparsebert.tickets.pipeline import EvalSpec, SharedText, TicketStore, make_ticket
from sparsebert.tickets.pruning import omp_ticket
from sparsebert.tickets.tamt import TAMT
from sparsebert.text.data import TextDataConfig, tokenized_blocks
from sparsebert.tickets.ticket import MASK_FILE, META_FILE, Ticket, TicketError, TicketMeta, Method, read_masks
from sparsebert.engine.training import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, TrainConfig, checkpoint_step, \
    save_checkpoint, train

TID = "0123456789abcdef"  # a store-like directory name: the ticket id


@pytest.fixture(scope="module")
def omp(tiny):
    return omp_ticket(load_pretraining_model(tiny).base, tiny, 0.5)


@pytest.fixture(scope="module")
def smoke():
    from search_spaces.smoke import smoke_model_dir  # a tiny BERT with the embedded tokenizer

    return str(smoke_model_dir())


ES = EvalSpec(eval_blocks=4, head_steps=2)


def _data_offset(f: Path) -> int:
    """Where the tensor bytes of a safetensors file start (8-byte header length, JSON header)."""
    return 8 + int.from_bytes(f.read_bytes()[:8], "little")


def _poke(f: Path, pos: int, value: int) -> None:
    b = bytearray(f.read_bytes())
    b[pos] = value
    f.write_bytes(bytes(b))


def _strip_sha(d: Path) -> None:
    meta = json.loads((d / META_FILE).read_text())
    meta.pop("mask_sha256", None)
    (d / META_FILE).write_text(json.dumps(meta))


# ---- tickets on disk ---------------------------------------------------------------------------------------------

def test_saved_ticket_records_the_mask_checksum(omp, tmp_path):
    import hashlib

    d = omp.save(tmp_path / TID)
    meta = json.loads((d / META_FILE).read_text())
    assert meta["mask_sha256"] == hashlib.sha256((d / MASK_FILE).read_bytes()).hexdigest()
    assert Ticket.load(d).meta.mask_sha256 == meta["mask_sha256"]


@pytest.mark.parametrize("value", [0x02, 0xFF])
def test_an_invalid_bool_byte_in_the_mask_is_a_ticket_error_naming_id_and_path(omp, tmp_path, value):
    d = omp.save(tmp_path / TID)
    _poke(d / MASK_FILE, _data_offset(d / MASK_FILE) + 5, value)  # torch would read it as True
    with pytest.raises(TicketError) as e:
        Ticket.load(d)
    assert TID in str(e.value) and str(d / MASK_FILE) in str(e.value)


def test_a_flipped_bit_that_is_still_a_valid_bool_is_caught_by_the_checksum(omp, tmp_path):
    d = omp.save(tmp_path / TID)
    f = d / MASK_FILE
    pos = _data_offset(f) + 7
    _poke(f, pos, f.read_bytes()[pos] ^ 1)  # 0 <-> 1: within the sparsity tolerance of one weight
    with pytest.raises(TicketError, match="checksum") as e:
        Ticket.load(d)
    assert TID in str(e.value) and str(f) in str(e.value)
    with pytest.raises(TicketError, match="checksum"):
        read_masks(d)  # what analysis reads is checked too


def test_a_sparsity_lie_in_ticket_json_is_rejected(omp, tmp_path):
    d = omp.save(tmp_path / TID)
    meta = json.loads((d / META_FILE).read_text())
    meta["sparsity"] = 0.9  # the masks are at 0.5; the checksum (of the masks) still matches
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TicketError, match="sparsity") as e:
        Ticket.load(d)
    assert TID in str(e.value) and str(d) in str(e.value)


def test_per_matrix_sparsity_is_checked_for_per_matrix_tickets_only(omp, tmp_path):
    names = sorted(omp.masks)
    a, b = next((x, y) for i, x in enumerate(names) for y in names[i + 1:]
                if omp.masks[x].numel() == omp.masks[y].numel())
    masks = {n: m.clone() for n, m in omp.masks.items()}
    n = masks[a].numel()
    masks[a] = torch.zeros(n, dtype=torch.bool)
    masks[a][: n // 4] = True  # 0.75
    masks[a] = masks[a].view(omp.masks[a].shape)
    masks[b] = torch.zeros(n, dtype=torch.bool)
    masks[b][: 3 * n // 4] = True  # 0.25: overall still 0.5
    masks[b] = masks[b].view(omp.masks[b].shape)
    lie = Ticket(masks, TicketMeta(model="m", method=Method.OMP, sparsity=0.5, scope="per_matrix"))
    with pytest.raises(TicketError, match=f"mask '{a}' has sparsity 0.75"):
        Ticket.load(lie.save(tmp_path / "per_matrix"))
    fine = Ticket(masks, TicketMeta(model="m", method=Method.OMP, sparsity=0.5, scope="global"))
    assert abs(Ticket.load(fine.save(tmp_path / "global")).sparsity() - 0.5) < 1e-6


@pytest.mark.parametrize("old_format", [False, True])
def test_a_pickle_in_place_of_the_mask_is_a_ticket_error_with_the_path(omp, tmp_path, old_format):
    d = omp.save(tmp_path / TID)
    if old_format:
        _strip_sha(d)  # no checksum: the reader itself must fail with the path
    with open(d / MASK_FILE, "wb") as fh:
        pickle.dump(dict(omp.masks), fh)
    with pytest.raises(TicketError) as e:
        Ticket.load(d)
    assert TID in str(e.value) and str(d / MASK_FILE) in str(e.value)
    assert ("unreadable" if old_format else "checksum") in str(e.value)


def test_a_truncated_mask_is_a_ticket_error_with_the_path(omp, tmp_path):
    d = omp.save(tmp_path / TID)
    _strip_sha(d)
    (d / MASK_FILE).write_bytes((d / MASK_FILE).read_bytes()[:200])
    with pytest.raises(TicketError, match="unreadable mask file") as e:
        Ticket.load(d)
    assert TID in str(e.value) and str(d / MASK_FILE) in str(e.value)


def test_an_old_format_ticket_without_checksum_still_loads_and_is_still_checked(omp, tmp_path):
    d = omp.save(tmp_path / TID)
    _strip_sha(d)
    t = Ticket.load(d)
    assert t.meta.mask_sha256 is None and all(torch.equal(t.masks[n], omp.masks[n]) for n in omp.masks)
    assert set(read_masks(d)) == set(omp.masks)
    _poke(d / MASK_FILE, _data_offset(d / MASK_FILE), 0x02)  # still no invalid bool passes
    with pytest.raises(TicketError, match="0/1"):
        Ticket.load(d)


def test_bad_metadata_names_the_ticket_and_the_file(omp, tmp_path):
    d = omp.save(tmp_path / TID)
    (d / META_FILE).write_text("{not json")
    with pytest.raises(TicketError) as e:
        Ticket.load(d)
    assert TID in str(e.value) and str(d / META_FILE) in str(e.value)


# ---- the store ---------------------------------------------------------------------------------------------------

def test_a_corrupt_stored_ticket_is_quarantined_and_made_again(smoke, tmp_path):
    store, spec = TicketStore(tmp_path), OMPSpec(model=smoke, sparsity=0.5)
    first, made = store.get_or_make(spec, ES, SharedText(), log=lambda m: None)
    assert made
    f = store.path(spec) / MASK_FILE
    _poke(f, _data_offset(f) + 3, 0x02)
    logs: list[str] = []
    ticket, made = store.get_or_make(spec, ES, SharedText(), log=logs.append)
    assert made  # not the corrupt one: made again
    aside = sorted((tmp_path / "tickets").glob(f"{spec.ticket_id}.corrupt-*"))
    assert len(aside) == 1 and aside[0].is_dir()
    assert any(str(store.path(spec)) in m and str(aside[0]) in m for m in logs), logs
    again = Ticket.load(store.path(spec))  # the fresh one verifies
    assert all(torch.equal(again.masks[n], first.masks[n]) for n in first.masks)
    assert all(torch.equal(ticket.masks[n], first.masks[n]) for n in first.masks)
    assert store.get_or_make(spec, ES, SharedText(), log=lambda m: None)[1] is False  # and is used from now on


def _hold(store: TicketStore, spec, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Hold ``spec``'s store lock in another thread (another open file: flock excludes it like another process)."""
    got = threading.Event()

    def run():
        with store.lock(spec):
            got.set()
            time.sleep(seconds)

    th = threading.Thread(target=run)
    th.start()
    assert got.wait(10)
    return th, got


def test_a_trial_waiting_for_a_ticket_lock_says_what_for_once_and_when_it_got_it(smoke, tmp_path):
    store, spec = TicketStore(tmp_path), OMPSpec(model=smoke, sparsity=0.5)
    store.get_or_make(spec, ES, SharedText(), log=lambda m: None)
    th, _ = _hold(store, spec, 1.0)
    logs: list[str] = []
    _, made = store.get_or_make(spec, ES, SharedText(), log=logs.append)
    th.join()
    assert not made
    waits = [m for m in logs if m.startswith("waiting for")]
    assert len(waits) == 1, logs
    assert spec.ticket_id in waits[0] and "OMP s=0.5" in waits[0] and str(store.lock_path(spec)) in waits[0]
    assert "pid" in waits[0]  # the holder, as it recorded itself
    assert any(m.startswith("got the lock") and spec.ticket_id in m for m in logs), logs


def test_imp_siblings_are_stored_under_their_own_locks(smoke, tmp_path):
    spec = IMPSpec(model=smoke, sparsity=0.2, imp_interval=2, batch_size=4, lr=1e-3,
                   text={"source": "embedded", "block_size": 32, "max_blocks": 64})
    sibling = dataclasses.replace(spec, sparsity=0.1)
    store = TicketStore(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder():  # another trial holds 0.1's lock (it makes or stores that ticket itself) all along
        with store.lock(sibling):
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    logs: list[str] = []
    try:
        ticket = make_ticket(spec, ES, SharedText(), store, log=logs.append)
    finally:
        release.set()
        t.join()
    assert abs(ticket.sparsity() - 0.2) < 1e-3 and store.has(spec)
    assert not store.has(sibling)  # not written behind the back of the lock's holder
    assert any(sibling.ticket_id in m and "locked by another trial" in m for m in logs), logs


# ---- resume checkpoints ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blocks(tok):
    cfg = TextDataConfig(source="embedded", block_size=32)
    return tokenized_blocks(cfg, tok, "train")[:256], tokenized_blocks(cfg, tok, "validation")[:16]


def _tamt(tiny, tok, blocks):
    spec = TAMTSpec(model=tiny, objective="kd", sparsity=0.5, batch_size=4, reset_every=2, seed=3)
    return TAMT(load_pretraining_model(tiny), spec, tok, blocks[0], blocks[1][:8])


def _checkpoint_at(step, tiny, tok, blocks, directory, tc):
    def crash(metrics, write):
        if metrics["step"] == step:
            write(directory)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_tamt(tiny, tok, blocks), tc, report=crash, log=lambda m: None)


def test_a_truncated_resume_checkpoint_starts_afresh_with_a_warning_naming_it(tiny, tok, blocks, tmp_path):
    tc = TrainConfig(steps=4, lr=0.05, eval_every=2, log_every=0, seed=3)
    ck = tmp_path / "ck"
    _checkpoint_at(2, tiny, tok, blocks, ck, tc)
    f = ck / CHECKPOINT_FILE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    logs: list[str] = []
    out = train(_tamt(tiny, tok, blocks), tc, resume_from=ck, log=logs.append)
    assert out["step"] == 4 and out["resumed_at"] == 0
    assert any("WARNING" in m and str(f) in m and "from scratch" in m for m in logs), logs
    assert not f.exists() and len(list(ck.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_an_unreadable_resume_checkpoint_falls_back_to_the_previous_good_one(tiny, tok, blocks, tmp_path):
    tc = TrainConfig(steps=4, lr=0.05, eval_every=2, log_every=0, seed=3)
    ck = tmp_path / "ck"
    _checkpoint_at(2, tiny, tok, blocks, ck, tc)
    (ck / CHECKPOINT_FILE).rename(ck / PREVIOUS_CHECKPOINT_FILE)
    with open(ck / CHECKPOINT_FILE, "wb") as fh:
        pickle.dump({"step": 3}, fh)  # not a torch checkpoint (weights_only refuses a plain pickle... or its keys)
    logs: list[str] = []
    out = train(_tamt(tiny, tok, blocks), tc, resume_from=ck, log=logs.append)
    assert out["step"] == 4 and out["resumed_at"] == 2
    assert any(str(ck / CHECKPOINT_FILE) in m and "previous" in m for m in logs), logs


def test_a_truncated_partial_of_the_store_does_not_block_the_ticket(smoke, tmp_path):
    spec = TAMTSpec(model=smoke, sparsity=0.5, objective="kd", steps=4, batch_size=4, lr=1e-2, reset_every=2,
                    text={"source": "embedded", "block_size": 32, "max_blocks": 64})
    store = TicketStore(tmp_path)

    def crash(metrics, write):
        if metrics["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the trial dies after the store's partial was written at step 2
        store.get_or_make(spec, ES, SharedText(), report=crash, log=lambda m: None)
    f = store.partial_path(spec) / CHECKPOINT_FILE
    assert checkpoint_step(f) == 2
    f.write_bytes(f.read_bytes()[:1000])
    logs: list[str] = []
    ticket, made = store.get_or_make(spec, ES, SharedText(), log=logs.append)
    assert made and abs(ticket.sparsity() - 0.5) < 1e-3 and store.has(spec)
    assert any("WARNING" in m and str(f) in m for m in logs), logs
    assert [p.name.split("-")[0] for p in store.partial_path(spec).iterdir()] == [f"{CHECKPOINT_FILE}.corrupt"]


def _state(step: int) -> dict:
    return {"step": step, "method": {"x": torch.full((4,), float(step))}, "optimizer": {}, "scheduler": {},
            "rng": torch.get_rng_state()}


def test_restore_partial_never_overwrites_a_newer_partial(tmp_path):
    import os

    store, spec = TicketStore(tmp_path / "store"), OMPSpec(sparsity=0.5)
    dest = store.partial_path(spec) / CHECKPOINT_FILE
    save_checkpoint(tmp_path / "tune_new", _state(6))
    save_checkpoint(tmp_path / "tune_old", _state(2))
    assert store.restore_partial(spec, tmp_path / "tune_new" / CHECKPOINT_FILE)  # nothing there yet: copied
    assert checkpoint_step(dest) == 6
    before = dest.read_bytes()
    os.utime(dest, (1, 1))  # the partial looks ancient: the step decides, not the file time
    logs: list[str] = []
    assert not store.restore_partial(spec, tmp_path / "tune_old" / CHECKPOINT_FILE, log=logs.append)
    assert dest.read_bytes() == before and any("step 6" in m and "step 2" in m for m in logs), logs
    save_checkpoint(tmp_path / "tune_newer", _state(8))
    assert store.restore_partial(spec, tmp_path / "tune_newer" / CHECKPOINT_FILE)
    assert checkpoint_step(dest) == 8
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_restore_partial_skips_an_unreadable_source_and_replaces_an_unreadable_partial(tmp_path):
    store, spec = TicketStore(tmp_path / "store"), OMPSpec(sparsity=0.5)
    dest = store.partial_path(spec) / CHECKPOINT_FILE
    save_checkpoint(tmp_path / "good", _state(3))
    bad = tmp_path / "bad" / CHECKPOINT_FILE
    bad.parent.mkdir()
    bad.write_bytes((tmp_path / "good" / CHECKPOINT_FILE).read_bytes()[:100])
    logs: list[str] = []
    assert not store.restore_partial(spec, bad, log=logs.append)
    assert not dest.exists() and any(str(bad) in m for m in logs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"garbage")
    assert store.restore_partial(spec, tmp_path / "good" / CHECKPOINT_FILE, log=logs.append)
    assert checkpoint_step(dest) == 3 and len(list(dest.parent.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == 1


def test_restore_partial_waits_for_the_run_lock(tmp_path):
    store, spec = TicketStore(tmp_path / "store"), OMPSpec(sparsity=0.5)
    save_checkpoint(tmp_path / "tune", _state(4))
    th, _ = _hold(store, spec, 1.0)
    t0 = time.monotonic()
    logs: list[str] = []
    assert store.restore_partial(spec, tmp_path / "tune" / CHECKPOINT_FILE, log=logs.append)
    th.join()
    assert time.monotonic() - t0 > 0.5 and any(m.startswith("waiting for") for m in logs), logs
