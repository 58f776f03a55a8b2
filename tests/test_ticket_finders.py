"""TAMT (MLM, KD, MLM+KD; OMP/random init; threshold/top-k) and IMP on tiny models and the embedded corpus."""

from __future__ import annotations

import pytest
import torch

from sparsebert.text.data import TextDataConfig, tokenized_blocks
from sparsebert.tickets.evaluation import evaluate_kd, evaluate_mlm
from sparsebert.tickets.imp import IMP, IMPSpec
from sparsebert.tickets.masking import mask_params, num_pruned
from sparsebert.models.loading import load_pretraining_model
from sparsebert.tickets.pruning import magnitude_masks
from sparsebert.models.registry import prunable_weights
from sparsebert.tickets.tamt import TAMT, MaskInit, TAMTSpec
from sparsebert.tickets.ticket import Method, Ticket
from sparsebert.engine.training import TrainConfig, train


@pytest.fixture(scope="module")
def blocks(tok):
    cfg = TextDataConfig(source="embedded", block_size=32)
    return tokenized_blocks(cfg, tok, "train")[:512], tokenized_blocks(cfg, tok, "validation")[:32]


def make_tamt(tiny, tok, blocks, tmp_path=None, seed=0, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("objective", "mlm")
    spec = TAMTSpec(model=tiny, seed=seed, **kw)
    model = load_pretraining_model(tiny)
    return TAMT(model, spec, tok, blocks[0], blocks[1][:16], ticket_dir=tmp_path)


def _frozen(model):
    return {k: v.detach().clone() for k, v in prunable_weights(model.base).items()}


@pytest.mark.parametrize("objective", ["mlm", "kd", "mlm_kd"])
def test_gradients_reach_scores_and_head_only_and_weights_stay_bit_identical(objective, tiny, tok, blocks):
    t = make_tamt(tiny, tok, blocks, objective=objective, sparsity=0.5)
    before = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    flat = [p for g in t.parameters() for p in g["params"]]
    trainable = {id(p) for p in flat}
    assert {id(s.scores) for s in t.scores.values()} <= trainable
    assert (len(trainable) > len(t.scores)) == (objective != "kd")  # the MLM head trains only with MLM
    loss, _ = t.loss(next(t.batches(0)), 0)
    loss.backward()
    for name, p in t.model.named_parameters():
        if id(p) in trainable:
            if "pooler" not in name:  # neither MLM nor KD reaches the pooler: its mask stays at its init
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    for p in flat:
        p.grad = None
    train(t, TrainConfig(steps=6, lr=1e-2, eval_every=0, log_every=0))
    after = t.model.state_dict()
    for k, v in before.items():
        if "scores" in k or (objective != "kd" and k.startswith("head.") and not k.endswith("decoder.weight")):
            continue
        assert torch.equal(v, after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if "scores" in k)


@pytest.mark.parametrize("binarizer", ["threshold", "topk"])
@pytest.mark.parametrize("init", ["omp", "random"])
def test_every_saved_ticket_is_exactly_sparse_per_matrix(binarizer, init, tiny, tok, blocks, tmp_path):
    t = make_tamt(tiny, tok, blocks, tmp_path, objective="kd", sparsity=0.7, init=init, binarizer=binarizer,
                  reset_every=3, save_at=(2, 5))
    init_masks = {k: s.binary_mask().clone() for k, s in t.scores.items()}
    if init == "omp":
        ref = magnitude_masks(prunable_weights(t.model.base), 0.7)
        assert all(torch.equal(init_masks[k], ref[k]) for k in ref)
    train(t, TrainConfig(steps=8, lr=0.05, eval_every=0, log_every=0))
    final = t.save_ticket(8)
    assert sorted(t.saved) == [2, 5, 8]
    for step in (2, 5, 8):
        ticket = Ticket.load(tmp_path / f"step{step}")
        assert ticket.meta.method is Method.TAMT and ticket.meta.steps == step and ticket.meta.init == init
        for k, m in ticket.masks.items():
            assert int((~m).sum()) == num_pruned(m.numel(), 0.7), (step, k)
    changed = sum(int((final.masks[k] != init_masks[k]).sum()) for k in init_masks)
    assert changed > 0  # the mask really trained


def test_head_lr_is_its_own_param_group(tiny, tok, blocks):
    t = make_tamt(tiny, tok, blocks, objective="mlm", sparsity=0.5, head_lr=1e-5)
    train(t, TrainConfig(steps=2, lr=1e-2, eval_every=0, log_every=0))
    groups = t.parameters()
    assert len(groups) == 2 and groups[1].get("lr") == 1e-5
    assert make_tamt(tiny, tok, blocks, objective="kd", sparsity=0.5).parameters()[0]["params"]


def test_kd_teacher_runs_once_per_step_without_grad(tiny, tok, blocks):
    t = make_tamt(tiny, tok, blocks, objective="mlm_kd", sparsity=0.5)
    calls = []
    t.teacher.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    train(t, TrainConfig(steps=3, lr=1e-3, eval_every=0, log_every=0))
    assert calls == [False, False, False, False]  # 3 steps + the final evaluation's single batch... all no-grad


def test_interrupted_and_resumed_run_gives_the_same_mask(tiny, tok, blocks, tmp_path):
    kw = dict(objective="mlm_kd", sparsity=0.6, reset_every=2)
    tc = TrainConfig(steps=8, lr=0.05, eval_every=4, log_every=0, seed=5)
    full = make_tamt(tiny, tok, blocks, seed=5, **kw)
    train(full, tc)

    def crash_at_4(metrics, write):
        if metrics["step"] == 4:
            write(tmp_path / "ck")
            raise KeyboardInterrupt

    first = make_tamt(tiny, tok, blocks, seed=5, **kw)
    with pytest.raises(KeyboardInterrupt):
        train(first, tc, report=crash_at_4)
    resumed = make_tamt(tiny, tok, blocks, seed=5, **kw)
    train(resumed, tc, resume_from=tmp_path / "ck")
    a, b = full.ticket(8).masks, resumed.ticket(8).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full.scores[k].scores, resumed.scores[k].scores) for k in a)
    # and the run really depended on the resumed state: a fresh run with another seed differs
    other = make_tamt(tiny, tok, blocks, seed=6, **kw)
    train(other, TrainConfig(steps=8, lr=0.05, eval_every=0, log_every=0, seed=6))
    assert any(not torch.equal(other.scores[k].scores, full.scores[k].scores) for k in a)


def test_checkpointed_head_keeps_every_head_tensor_under_a_masked_embedding(tiny, tok, blocks):
    """Regression: head_state once told the tied decoder apart by id(); under a mask the embedding's .weight is a
    fresh tensor per access, whose recycled id could drop the head's bias from a TAMT checkpoint at random."""
    t = make_tamt(tiny, tok, blocks, objective="mlm", sparsity=0.5)
    want = {k for k in t.model.head.state_dict() if "decoder" not in k}
    assert "predictions.bias" in want
    for step in range(20):  # as in training: checkpoints between forward passes (the collision needs both)
        t.loss(next(t.batches(step)), step)[0].backward()
        state = t.state_dict()
        assert set(state["head"]) == want
    t.load_state_dict(state)  # and it loads back, key for key
    with pytest.raises(ValueError, match="missing \\['predictions.bias'\\]"):
        t.load_state_dict({**state, "head": {k: v for k, v in state["head"].items() if k != "predictions.bias"}})


def test_imp_prunes_ten_percent_per_interval_and_rewinds(tiny, tok, blocks, tmp_path):
    model = load_pretraining_model(tiny)
    pretrained = {k: v.detach().clone() for k, v in prunable_weights(model.base).items()}
    head = {k: v.detach().clone() for k, v in model.head_state().items()}
    imp = IMP(model, IMPSpec(model=tiny, imp_interval=3, sparsity=0.3, batch_size=4), tok, blocks[0],
              blocks[1][:8], ticket_dir=tmp_path)
    seen = []
    original = imp.prune_and_rewind

    def checked(step):
        trained = {k: v.detach().clone() for k, v in prunable_weights(model.base).items()}
        assert any(not torch.equal(trained[k], pretrained[k]) for k in trained)  # it did train
        ticket = original(step)
        for k, w in prunable_weights(model.base).items():
            assert torch.equal(w, pretrained[k]), k  # rewound
        assert all(torch.equal(v, model.head_state()[k]) for k, v in head.items())
        seen.append((step, ticket.meta.sparsity))
        return ticket

    imp.prune_and_rewind = checked
    train(imp, TrainConfig(steps=imp.cfg.run_steps(), lr=1e-2, eval_every=0, log_every=0))
    assert seen == [(3, 0.1), (6, 0.2), (9, 0.3)]
    prev = None
    for s in (0.1, 0.2, 0.3):
        t = Ticket.load(tmp_path / f"sparsity{s:.1f}")
        assert t.meta.method is Method.IMP and t.meta.sparsity == s
        for k, m in t.masks.items():
            assert int((~m).sum()) == num_pruned(m.numel(), s), (s, k)
            if prev is not None:
                assert not torch.any(m & ~prev.masks[k])  # pruned weights stay pruned
        prev = t
    assert all(p.mask.dtype == torch.float32 for p in mask_params(model.base).values())


def test_evaluation_is_deterministic(tiny, tok, blocks):
    m = load_pretraining_model(tiny)
    teacher = load_pretraining_model(tiny)
    a = evaluate_mlm(m, blocks[1], tok, batch_size=8)
    b = evaluate_mlm(m, blocks[1], tok, batch_size=8)
    assert a["mlm_loss"] == b["mlm_loss"] and a["mlm_tokens"] == b["mlm_tokens"] > 0
    assert evaluate_mlm(m, blocks[1], tok, batch_size=8, seed=99)["mlm_loss"] != a["mlm_loss"]
    assert evaluate_kd(m, teacher, blocks[1])["kd_loss"] == pytest.approx(0.0, abs=1e-6)  # same model


def test_paper_budget_and_bad_config():
    # the reference's TAMT-KD budget is the spec's default (tamt.paper_tamt is gone: the preset is the reference)
    spec, tc = TAMTSpec(objective="kd", sparsity=0.7, steps="paper"), TrainConfig()
    assert (spec.reset_every, spec.batch_size, spec.lr, spec.steps, spec.init) == (100, 16, 2e-5, 17000, MaskInit.OMP)
    spec = TAMTSpec(objective="mlm", sparsity=0.5, steps="paper")
    assert (spec.steps, tc.grad_clip, spec.weight_decay) == (11000, 1.0, 0.0)
    with pytest.raises(ValueError, match="sparsity"):
        TAMTSpec(sparsity=1.2)
    with pytest.raises(ValueError, match="binarizer"):
        TAMTSpec(binarizer="sigmoid")
    with pytest.raises(ValueError):
        TAMTSpec(init="magnitude")
