"""The reference's code, knob by knob (issue 12): each test shows the knob changes what the old behaviour did, and
``preset: reference`` sets them all."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from search_spaces.smoke import smoke_model_dir
from sparsebert.text.data import TextDataConfig, tokenized_blocks
from sparsebert.tickets.finders import TAMTSpec, finder_spec
from sparsebert.tickets.imp import IMP, IMPSpec
from sparsebert.tickets.masking import ScoreMask, apply_score_masks, num_pruned
from sparsebert.models.loading import load_pretraining_model
from sparsebert.engine.optim import BertAdam
from sparsebert.tickets.pipeline import EvalSpec, SharedText, TicketStore, evaluate_ticket
from sparsebert.tickets.pruning import magnitude_masks, omp_ticket
from sparsebert.models.registry import prunable_weights, weight_of
from sparsebert.tickets.tamt import TAMT
from sparsebert.tickets.ticket import Ticket
from sparsebert.engine.training import TrainConfig, train

TEXT = {"source": "embedded", "block_size": 32, "max_blocks": 96}


@pytest.fixture(scope="module")
def model_dir():
    return str(smoke_model_dir())  # a tiny BERT with the embedded tokenizer


@pytest.fixture(scope="module")
def blocks(tok):
    cfg = TextDataConfig(**TEXT)
    return tokenized_blocks(cfg, tok, "train"), tokenized_blocks(cfg, tok, "validation")[:8]


def make_tamt(model_dir, tok, blocks, **kw):
    kw.setdefault("objective", "mlm")
    spec = TAMTSpec(model=model_dir, sparsity=0.5, batch_size=4, **kw)
    return TAMT(load_pretraining_model(model_dir), spec, tok, blocks[0], blocks[1][:4])


def test_dense_decoder_uses_the_unmasked_embedding_and_changes_the_mlm_loss(model_dir, tok, blocks):
    t = make_tamt(model_dir, tok, blocks)
    h = torch.randn(5, t.model.config.hidden_size)
    emb = t.model.base.embeddings.word_embeddings
    masked = t.model.mlm_logits(h)
    t.model.dense_decoder = True
    dense = t.model.mlm_logits(h)
    expect = F.linear(t.model.head.predictions.transform(h), weight_of(emb), t.model.head.predictions.bias)
    assert torch.allclose(dense, expect) and not torch.allclose(dense, masked)
    # the ticket's MLM loss as evaluated: the reference's dense decoder gives another (lower) number
    spec = finder_spec({"method": "omp", "sparsity": 0.5, "model": model_dir})
    ticket = omp_ticket(load_pretraining_model(model_dir).base, model_dir, 0.5)
    shared = SharedText()
    ours = evaluate_ticket(ticket, spec, EvalSpec(eval_blocks=4, text=TEXT), shared, log=lambda m: None)
    ref = evaluate_ticket(ticket, spec, EvalSpec(eval_blocks=4, text=TEXT, dense_decoder=True), shared,
                          log=lambda m: None)
    assert ref["mlm_loss"] != ours["mlm_loss"] and ref["kd_loss"] == pytest.approx(ours["kd_loss"])


def test_the_reference_keeps_tau_at_0_01_until_the_first_reset(model_dir, tok, blocks):
    model = load_pretraining_model(model_dir)
    init = magnitude_masks(prunable_weights(model.base), 0.5)
    ours = apply_score_masks(model.base, init, 0.5)
    assert all(float(s.threshold) == 0.0 for s in ours.values())  # reset at init: tau = the k-th score = 0
    ref = make_tamt(model_dir, tok, blocks, reset_at_init=False)
    assert all(float(s.threshold) == pytest.approx(0.01) for s in ref.scores.values())
    with torch.no_grad():  # a pruned score raised by less than 0.01 enters our mask, not the reference's
        for s in list(ours.values()) + list(ref.scores.values()):
            s.scores.add_(0.005)
    assert all(bool(s.binary_mask().all()) for s in ours.values())
    assert all(abs(1 - float(s.binary_mask().float().mean()) - 0.5) < 0.01 for s in ref.scores.values())


def test_floor_count_rule_is_int_n_s():
    m = torch.ones(7, dtype=torch.bool)
    assert num_pruned(7, 0.5) == 4 and num_pruned(7, 0.5, "floor") == 3
    assert ScoreMask(m, 0.5).n_kept == 3 and ScoreMask(m, 0.5, count_rule="floor").n_kept == 4


def test_teacher_in_train_mode_applies_dropout(model_dir, tok, blocks):
    ids = blocks[0][:2]
    for train_mode in (False, True):
        t = make_tamt(model_dir, tok, blocks, objective="kd", teacher_train_mode=train_mode)
        t.model.eval()  # the student without dropout: only the teacher's mode can make two losses differ
        with torch.no_grad():
            a, _ = t.loss({"input_ids": ids}, 0)
            b, _ = t.loss({"input_ids": ids}, 0)
        assert t.teacher.training is train_mode
        assert torch.equal(a, b) is (not train_mode)


def test_bertadam_has_no_bias_correction_and_clips_per_tensor():
    p1, p2 = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = BertAdam([p1, p2], lr=0.1, weight_decay=0.0, max_grad_norm=1.0)
    p1.grad, p2.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.1, 0.0, 0.0])
    opt.step()
    # first step: m = 0.1 g', v = 0.001 g'^2 (g' the per-tensor clipped grad) -> update = 0.1/sqrt(0.001) ~ 3.16 lr
    assert p1[0].item() == pytest.approx(-0.1 * 0.1 / (0.001 ** 0.5 + 1e-6 / 0.6), rel=1e-3)
    assert p2[0].item() == pytest.approx(-0.1 * 0.1 / (0.001 ** 0.5 + 1e-6 / 0.1), rel=1e-3)
    q = torch.nn.Parameter(torch.zeros(1))
    adamw = torch.optim.AdamW([q], lr=0.1, weight_decay=0.0)
    q.grad = torch.tensor([0.6])
    adamw.step()
    assert q.item() == pytest.approx(-0.1, rel=1e-3)  # AdamW's bias-corrected first step: lr, not 3.16 lr


def test_imp_as_the_reference_prunes_first_and_never_rewinds(model_dir, tok, blocks):
    cfg = dict(model=model_dir, imp_interval=2, sparsity=0.3, batch_size=4)
    ours = IMPSpec(**cfg)
    ref = IMPSpec(**cfg, prune_first=True, rewind="none")
    assert (ours.run_steps(), ref.run_steps()) == (6, 4)  # 0.3 costs 3 intervals, the reference's 2
    assert finder_spec({"method": "imp", "sparsity": 0.7, "imp_interval": 200, "prune_first": True}).columns()[
        "steps"] == 1200  # its README: 200 x 6
    imp = IMP(load_pretraining_model(model_dir), ref, tok, blocks[0], blocks[1][:4])
    assert imp.round == 1 and 0.1 in imp.tickets  # pruned before any training
    train(imp, TrainConfig(steps=ref.run_steps(), lr=1e-2, eval_every=0, log_every=0))
    assert sorted(imp.tickets) == [0.1, 0.2, 0.3]
    w = {k: v for k, v in imp.model.state_dict().items() if k.endswith("original")}
    assert any(not torch.equal(w[k], imp.pretrained[k]) for k in w)  # no rewind: trained weights kept
    enc = IMP(load_pretraining_model(model_dir), IMPSpec(**cfg, rewind="encoder"), tok, blocks[0], blocks[1][:4])
    train(enc, TrainConfig(steps=2, lr=1e-2, eval_every=0, log_every=0))
    state = enc.model.state_dict()
    assert all(torch.equal(state[k], enc.pretrained[k]) for k in state if k.startswith("base."))
    assert any(not torch.equal(state[k], enc.pretrained[k]) for k in state if k.startswith("head."))


def test_one_run_stores_every_save_at_step_as_the_ticket_of_its_own_spec(model_dir, tmp_path):
    base = {"method": "tamt", "model": model_dir, "objective": "kd", "sparsity": 0.5, "lr": 1e-2, "batch_size": 4,
            "reset_every": 2, "text": TEXT, "save_at": [2, 4, 6]}
    store, es = TicketStore(tmp_path / "s"), EvalSpec(eval_blocks=4, head_steps=2)
    quiet = lambda m: None  # noqa: E731
    first, made = store.get_or_make(finder_spec({**base, "steps": 2}), es, SharedText(), log=quiet)
    assert made
    for steps in (4, 6):  # made by the same run: taken from the store, no training
        t, made = store.get_or_make(finder_spec({**base, "steps": steps}), es, SharedText(), log=quiet)
        assert not made and t.meta.steps == steps
    # a snapshot is what a run of that length with the same LR horizon gives: same id, same mask
    alone = finder_spec({**{k: v for k, v in base.items() if k != "save_at"}, "steps": 2, "schedule_steps": 6})
    assert alone.ticket_id == finder_spec({**base, "steps": 2}).ticket_id
    from sparsebert.tickets.pipeline import make_ticket

    fresh = make_ticket(alone, es, SharedText(), None, log=quiet)
    assert all(torch.equal(fresh.masks[k], first.masks[k]) for k in first.masks)
    # without a shared horizon the 2-step ticket of a 6-step run is another ticket than a 2-step run's
    assert finder_spec({**base, "steps": 2, "save_at": []}).ticket_id != alone.ticket_id


def test_the_steps_study_trains_one_run_per_configuration():
    from search_spaces.loader import load_space
    from search_spaces.space import finder_runs

    tickets, runs, steps = finder_runs(load_space("steps_study"))
    assert (tickets, runs) == (20, 8)  # 14 TAMT tickets from 2 runs of 25k steps, 6 IMP runs
    assert steps == 2 * 25_000 + 7 * (200 + 300 + 500 + 900 + 1396 + 2792)


def test_preset_reference_sets_every_knob_and_explicit_keys_win(tmp_path):
    from search_spaces.loader import SpaceError, load_space

    p = tmp_path / "ref.yaml"
    p.write_text("stage: find\nmodel: embedded-minilm\npreset: reference\nticket: {sparsity: 0.7, optimizer: adamw}\n"
                 "variants:\n  - {method: tamt, objective: kd}\n  - {method: imp}\n")
    space = load_space(p)
    tamt, imp = (finder_spec({**space.ticket, **v}) for v in space.variants)
    assert isinstance(tamt, TAMTSpec) and tamt.dense_decoder and not tamt.reset_at_init
    assert tamt.count_rule == "floor" and tamt.teacher_train_mode and tamt.optimizer == "adamw"  # explicit wins
    assert imp.prune_first and imp.rewind == "none" and imp.dense_decoder
    assert space.eval["dense_decoder"] is True
    t = tmp_path / "tr.yaml"
    t.write_text("preset: reference\nmodel: embedded-minilm\nticket: {method: omp}\ntransfer: {task: mnli}\n")
    from sparsebert.transfer.finetune import split_transfer

    ft, tc = split_transfer({"transfer": load_space(t).transfer})
    assert (ft.select_split, ft.stride_mode, tc.eval_at_end, tc.eval_every) == ("mismatched", "step", False, 500)
    assert tamt.ticket_id != dataclasses.replace(tamt, dense_decoder=False).ticket_id
    p.write_text("stage: find\npreset: paper-ish\nticket: {method: omp}\n")
    with pytest.raises(SpaceError, match="ref.yaml: preset: unknown preset 'paper-ish'"):
        load_space(p)


def test_reference_tickets_are_found_end_to_end(model_dir, tmp_path):
    for d in ({"method": "tamt", "objective": "mlm_kd", "steps": 4, "reset_every": 2},
              {"method": "imp", "sparsity": 0.2, "imp_interval": 2}):
        spec = finder_spec({"model": model_dir, "sparsity": 0.5, "batch_size": 4, "lr": 1e-3, "text": TEXT,
                            "dense_decoder": True, "reset_at_init": False, "count_rule": "floor",
                            "teacher_train_mode": True, "optimizer": "bertadam", "weight_decay": 0.01,
                            "prune_first": True, "rewind": "none", **d})
        t, made = TicketStore(tmp_path).get_or_make(spec, EvalSpec(eval_blocks=4, head_steps=2, dense_decoder=True),
                                                     SharedText(), log=lambda m: None)
        assert made and isinstance(t, Ticket) and abs(t.sparsity() - spec.sparsity) < 1e-3


def test_preset_reference_trains_tamt_kd_on_the_reference_kd_paragraphs(tmp_path):
    from search_spaces.loader import load_space
    from sparsebert.text.data import REFERENCE_KD_TEXT

    p = tmp_path / "kd.yaml"
    p.write_text("stage: find\nmodel: embedded-minilm\npreset: reference\nticket: {sparsity: 0.5, text: {block_size: 64}}\n"
                 "variants:\n  - {method: tamt, objective: kd}\n  - {method: tamt, objective: mlm}\n  - {method: omp}\n")
    space = load_space(p)
    kd, mlm, omp = (finder_spec({**space.ticket, **v}) for v in space.variants)
    assert kd.text == {**REFERENCE_KD_TEXT, "block_size": 64}  # the space's own block size wins
    assert mlm.text == {"block_size": 64}
    assert space.eval["kd_eval"] == {"exclude_padding": False, "reduction": "batch_mean"}
