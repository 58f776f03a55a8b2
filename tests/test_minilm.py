"""Real weights: the embedded MiniLM. TAMT at sparsity 0.7 from the OMP mask beats the OMP ticket's held-out
KD loss (TAMT-KD) and MLM loss (TAMT-MLM, with the fitted head) within a few dozen small steps."""

from __future__ import annotations

import pytest

from sparsebert.text.data import TextDataConfig, tokenized_blocks
from sparsebert.tickets.mlm_head import HeadFitConfig, load_or_fit_head
from sparsebert.models.loading import load_pretraining_model, load_tokenizer
from sparsebert.tickets.tamt import TAMT, TAMTSpec
from sparsebert.engine.training import TrainConfig, train

pytestmark = pytest.mark.slow
MODEL = "embedded-minilm"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def blocks(tok):
    cfg = TextDataConfig(source="embedded", block_size=64)
    return tokenized_blocks(cfg, tok, "train"), tokenized_blocks(cfg, tok, "validation")


@pytest.fixture(scope="module")
def head_file(tok):
    """The fitted MLM head (MiniLM ships none): fitted once per machine, then read from the cache."""
    model = load_pretraining_model(MODEL)
    cfg = TextDataConfig(source="embedded", block_size=128)
    return load_or_fit_head(model, MODEL, tok, tokenized_blocks(cfg, tok, "train"), "embedded-128", HeadFitConfig())


def _tamt(objective, tok, blocks, head_file=None):
    model = load_pretraining_model(MODEL, mlm_head=str(head_file) if head_file else None)
    spec = TAMTSpec(model=MODEL, sparsity=0.7, objective=objective, reset_every=10, batch_size=8)
    return TAMT(model, spec, tok, blocks[0], blocks[1][:64])


def test_fitted_head_is_far_better_than_a_random_one(tok, blocks, head_file):
    from sparsebert.tickets.evaluation import evaluate_mlm

    fitted = load_pretraining_model(MODEL, mlm_head=str(head_file))
    random_head = load_pretraining_model(MODEL)
    random_head.head_pretrained = True
    a = evaluate_mlm(fitted, blocks[1][:32], tok)["mlm_loss"]
    b = evaluate_mlm(random_head, blocks[1][:32], tok)["mlm_loss"]
    assert a < b - 2.5, (a, b)  # ~7.5 vs ~11 (ln 30522 = 10.3)


def test_tamt_kd_beats_the_omp_ticket_on_held_out_kd_loss(tok, blocks):
    t = _tamt("kd", tok, blocks)
    omp = t.evaluate(0)["kd_loss"]  # before any step the mask IS the OMP mask
    out = train(t, TrainConfig(steps=40, lr=2e-3, eval_every=0, log_every=0))
    assert out["actual_sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert out["kd_loss"] < 0.85 * omp, (out["kd_loss"], omp)


def test_tamt_mlm_beats_the_omp_ticket_on_held_out_mlm_loss(tok, blocks, head_file):
    t = _tamt("mlm", tok, blocks, head_file)
    omp = t.evaluate(0)["mlm_loss"]
    out = train(t, TrainConfig(steps=40, lr=2e-3, eval_every=0, log_every=0))
    assert out["mlm_loss"] < omp - 0.3, (out["mlm_loss"], omp)
