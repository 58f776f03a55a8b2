"""Issue 23 without a compiler: baked tickets (no parametrizations) give the parametrized path's losses, static batch
shapes (a handful per epoch, exact evaluation), TAMT's fixed MLM position count, its host work done once per run."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize
from transformers import AutoModel

import sparsebert.text.batching as B
from sparsebert.text.data import TextDataConfig, tokenized_blocks
from sparsebert.transfer.finetune import FineTune, FinetuneConfig
from sparsebert.tickets.masking import ScoreMask, has_masks
from sparsebert.models.loading import load_pretraining_model
from sparsebert.models.objectives import mlm_loss_at
from sparsebert.tickets.pruning import omp_ticket
from sparsebert.models.registry import prunable_weights
from sparsebert.engine.runtime import Runtime
from sparsebert.tickets.tamt import TAMT, TAMTSpec
from sparsebert.transfer.task_tensors import TaskTensors, epoch_batches, shape_count, train_batches
from sparsebert.engine.training import TrainConfig, train

BF16 = Runtime(torch.device("cpu"), torch.bfloat16)


def recorded_losses(ft, cfg: TrainConfig) -> list[float]:
    losses: list[float] = []
    step_loss = ft.loss

    def loss(batch, step):
        out = step_loss(batch, step)
        losses.append(float(out[0]))
        return out

    ft.loss = loss
    train(ft, cfg)
    return losses


@pytest.mark.parametrize("static", ["false", "true"])
def test_baked_ticket_gives_the_parametrized_losses_and_keeps_pruned_weights_exactly_zero(static, tiny, tok,
                                                                                           shared_data):
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.6)
    tc = TrainConfig(steps=50, lr=1e-3, weight_decay=0.1, eval_every=25, log_every=0)  # decoupled decay: 0 stays 0
    runs = {}
    for mode in ("parametrized", "baked"):
        cfg = FinetuneConfig(task="sst2", data_dir=str(shared_data / "glue"), subset_size=96, max_eval_examples=32,
                             batch_size=8, max_length=64, mask_mode=mode, static_shapes=static)
        ft = FineTune(tiny, cfg, tok, ticket=ticket)
        runs[mode] = (ft, recorded_losses(ft, tc))
    (par, lp), (baked, lb) = runs["parametrized"], runs["baked"]
    assert not has_masks(baked.model) and has_masks(par.model)
    assert len(lb) == 50 and max(abs(a - b) for a, b in zip(lp, lb)) <= 1e-6
    assert len(set(lb)) > 40  # it trained: losses move
    start = prunable_weights(AutoModel.from_pretrained(tiny))
    for key, w in prunable_weights(baked.model).items():
        k = key.removeprefix("bert.")
        assert torch.all(w[~ticket.masks[k]] == 0), key
        assert not torch.equal(w[ticket.masks[k]], start[k][ticket.masks[k]]), key  # kept weights trained
        assert torch.allclose(w, prunable_weights(par.model)[key], atol=1e-6)


def test_a_parametrized_checkpoint_resumes_on_the_baked_path(tiny, tok, shared_data, tmp_path):
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.5)
    kw = dict(task="mrpc", data_dir=str(shared_data / "glue"), subset_size=40, max_eval_examples=16, batch_size=8,
              max_length=64)
    tc = TrainConfig(steps=6, lr=5e-4, eval_every=3, log_every=0)
    full = FineTune(tiny, FinetuneConfig(**kw, mask_mode="baked"), tok, ticket=ticket)
    train(full, tc)

    def stop(metrics, write):
        if metrics["step"] == 3:
            write(tmp_path / "ck")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(FineTune(tiny, FinetuneConfig(**kw, mask_mode="parametrized"), tok, ticket=ticket), tc, report=stop)
    resumed = FineTune(tiny, FinetuneConfig(**kw, mask_mode="baked"), tok, ticket=ticket)
    train(resumed, tc, resume_from=tmp_path / "ck")
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("task,folder", [("sst2", "SST-2"), ("cola", "CoLA")])
def test_static_shapes_give_a_handful_of_batch_shapes_per_epoch_of_real_glue(task, folder, tok, tiny, shared_data):
    cfg = FinetuneConfig(task=task, data_dir=str(shared_data / "glue"), batch_size=32, max_length=128,
                         max_eval_examples=8)
    data = FineTune(tiny, cfg, tok).train_t
    before = shape_count(data, 32)
    after = shape_count(data, 32, multiple=32, fill_last=True)
    assert before >= 20 and after <= 4, (before, after)
    # the static batches: full rows, widths multiples of 32 (or the split's width), every row at least once
    seen = torch.zeros(len(data), dtype=torch.bool)
    per_epoch = -(-len(data) // 32)
    for idx in epoch_batches(data.lengths, 32, 0, 0, 50, fill_last=True):
        seen[idx] = True
    assert bool(seen.all())
    for _, b in zip(range(per_epoch + 3), train_batches(data, 32, 0, 0, 50, multiple=32, fill_last=True)):
        w = b["input_ids"].shape[1]
        assert b["input_ids"].shape[0] == 32 and (w % 32 == 0 or w == data.width)


def test_filled_last_batch_resumes_exactly_and_repeats_rows_of_its_own_epoch():
    lengths = torch.randint(3, 40, (23,), generator=torch.Generator().manual_seed(0))
    for buckets in (1, 3):
        batches = epoch_batches(lengths, 4, seed=1, epoch=0, buckets=buckets, fill_last=True)
        assert len(batches) == 6 and all(len(b) == 4 for b in batches)
        rows = torch.cat(batches).tolist()
        assert sorted(set(rows)) == list(range(23)) and len(rows) == 24
    data = TaskTensors({"input_ids": torch.arange(23 * 40).view(23, 40)}, lengths, {"labels": torch.arange(23)})
    a = [b["labels"].tolist() for b, _ in zip(train_batches(data, 4, 1, 0, 3, 16, True), range(14))]
    b = [b["labels"].tolist() for b, _ in zip(train_batches(data, 4, 1, 5, 3, 16, True), range(9))]
    assert a[5:] == b


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_static_shape_evaluation_predicts_what_dynamic_batches_do(task, tiny, tok, shared_data):
    kw = dict(task=task, data_dir=str(shared_data / "glue"), subset_size=32, max_eval_examples=45, batch_size=8,
              eval_batch_size=16, max_length=128)
    dynamic = FineTune(tiny, FinetuneConfig(**kw, static_shapes=False), tok)
    static = FineTune(tiny, FinetuneConfig(**kw, static_shapes=True), tok)
    a, b = dynamic._predict("validation"), static._predict("validation")
    assert a.shape == b.shape == (45, dynamic.spec.num_labels)  # 45 = 2 x 16 + a partial batch padded to 16
    assert abs(a - b).max() < 1e-4
    # the same rows, each once (the padding rows' outputs are dropped); float noise of other widths only
    assert dynamic.evaluate(0)["score"] == pytest.approx(static.evaluate(0)["score"], abs=1e-4)


def test_static_shapes_follow_the_runtime_and_bad_values_are_refused(tiny, tok, shared_data):
    kw = dict(task="rte", data_dir=str(shared_data / "glue"), subset_size=16, max_eval_examples=8)
    assert FineTune(tiny, FinetuneConfig(**kw), tok).static is False  # auto on a plain CPU runtime
    compiled = Runtime(torch.device("cpu"), torch.float32, compile=True, compile_backend="eager")
    assert FineTune(tiny, FinetuneConfig(**kw), tok, runtime=compiled).static is True
    for bad in (dict(mask_mode="sparse"), dict(static_shapes="maybe"), dict(pad_multiple=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FinetuneConfig(**kw, **bad)


# ---- TAMT ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blocks(tok):
    cfg = TextDataConfig(source="embedded", block_size=32)
    return tokenized_blocks(cfg, tok, "train")[:128], tokenized_blocks(cfg, tok, "validation")[:8]


def test_fixed_mlm_position_count_gives_the_same_loss_and_one_shape(tiny, tok, blocks):
    model = load_pretraining_model(tiny)
    plain = list(zip(range(6), B.pretraining_batches(blocks[0], 8, 0, 0, tok)))
    static = list(zip(range(6), B.pretraining_batches(blocks[0], 8, 0, 0, tok, static_positions=True)))
    cap = B.mlm_positions_cap(8, 32)
    assert {len(b["positions"]) for _, b in static} == {cap} and len({len(b["positions"]) for _, b in plain}) > 1
    with torch.no_grad():
        for (_, p), (_, s) in zip(plain, static):
            assert torch.equal(p["input_ids"], s["input_ids"])
            h = model(p["input_ids"]).last_hidden_state
            a = mlm_loss_at(model, h, p["positions"], p["targets"])
            b = mlm_loss_at(model, h, s["positions"], s["targets"])
            assert abs(float(a) - float(b)) < 1e-6
    # a batch with more masked tokens than the cap rounds its own count up to a multiple of 64
    ids = blocks[0][:2]
    out = B.mlm_batch(ids, tok, torch.Generator().manual_seed(0), mlm_probability=0.9, positions_to=8)
    assert len(out["positions"]) % 64 == 0 and int((out["targets"] != -100).sum()) > 8


def test_mlm_masking_builds_its_collator_once_per_run_and_masks_as_before(tiny, tok, blocks, monkeypatch):
    before = [b for _, b in zip(range(5), B.pretraining_batches(blocks[0], 4, 3, 0, tok))]
    calls = []
    real = B.mlm_collator
    monkeypatch.setattr(B, "mlm_collator", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = [b for _, b in zip(range(5), B.pretraining_batches(blocks[0], 4, 3, 0, tok))]
    assert len(calls) == 1
    for x, y in zip(before, after):
        assert all(torch.equal(x[k], y[k]) for k in x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    masker = B.MLMMasker(tok)
    a, b = B.mask_tokens(blocks[0][:4], tok, generator=g1), B.mask_tokens(blocks[0][:4], tok, generator=g2,
                                                                          masker=masker)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # a shared masker masks as a fresh one does


def test_tamt_bf16_casts_frozen_weights_once_and_holds_the_teacher_in_bf16(tiny, tok, blocks):
    cfg = TAMTSpec(model=tiny, objective="mlm_kd", sparsity=0.5, batch_size=4, reset_every=2)
    t = TAMT(load_pretraining_model(tiny), cfg, tok, blocks[0], blocks[1][:4], runtime=BF16)
    assert all(p.dtype == torch.bfloat16 for p in t.teacher.parameters())
    copies = []
    for _ in range(2):
        with BF16.autocast(), parametrize.cached():
            t.model.base.embeddings.word_embeddings.weight  # noqa: B018  (computes the masked weight)
        mask = t.model.base.embeddings.word_embeddings.parametrizations.weight[0]
        assert isinstance(mask, ScoreMask)
        copies.append(mask._cast[1])
    assert copies[0] is copies[1] and copies[0].dtype == torch.bfloat16  # one cast, reused
    out = train(t, TrainConfig(steps=4, lr=1e-2, eval_every=2, log_every=0))
    assert 0 <= out["kd_loss"] < 1 and out["mlm_loss"] > 0
    fp32 = TAMT(load_pretraining_model(tiny), cfg, tok, blocks[0], blocks[1][:4])
    out32 = train(fp32, TrainConfig(steps=4, lr=1e-2, eval_every=2, log_every=0))
    assert abs(out["kd_loss"] - out32["kd_loss"]) < 0.05 and abs(out["mlm_loss"] - out32["mlm_loss"]) < 0.2
