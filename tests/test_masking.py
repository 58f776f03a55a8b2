"""The one mask mechanism: registry, tickets, OMP/random pruning, apply/bake, TAMT score masks."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.nn.utils import prune
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    RobertaConfig,
    RobertaModel,
)

from sparsebert.tickets.masking import (
    ScoreMask,
    apply_masks,
    bake,
    current_masks,
    has_masks,
    num_pruned,
    remove_masks,
)
from sparsebert.models.loading import load_pretraining_model, tiny_model_dir
from sparsebert.tickets.pruning import magnitude_masks, omp_ticket, random_masks, random_ticket
from sparsebert.models.registry import UnsupportedModelError, prunable_weight_names, prunable_weights
from sparsebert.tickets.ticket import Method, Ticket, TicketError, config_hash

LAYER = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "intermediate.dense", "output.dense"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("bert"), "bert", vocab_size=1000)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("roberta"), "roberta", vocab_size=1000)


def test_registry_bert_base_has_74_matrices_and_roberta_the_same():
    with torch.device("meta"):
        bert = BertModel(BertConfig())
        roberta = RobertaModel(RobertaConfig())
    names = prunable_weight_names(bert)
    assert len(names) == 74 and names == prunable_weight_names(roberta)
    expected = {"embeddings.word_embeddings.weight", "pooler.dense.weight"} | {
        f"encoder.layer.{i}.{s}.weight" for i in range(12) for s in LAYER
    }
    assert set(names) == expected
    assert not any("LayerNorm" in n or "position" in n or "token_type" in n or "bias" in n for n in names)


def test_registry_task_models_carry_the_base_prefix(bert_dir):
    clf = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    names = prunable_weight_names(clf)
    assert names[0] == "bert.embeddings.word_embeddings.weight" and names[-1] == "bert.pooler.dense.weight"
    # mask keys are base-relative: the same for the MLM model and the classifier
    assert set(prunable_weights(clf)) == set(prunable_weights(load_pretraining_model(str(bert_dir)).base))


def test_unknown_model_type_is_a_clear_error():
    from transformers import GPT2Config, GPT2Model

    with torch.device("meta"):
        gpt = GPT2Model(GPT2Config(n_layer=1))
    with pytest.raises(UnsupportedModelError, match="unknown model type 'gpt2'"):
        prunable_weight_names(gpt)


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.7, 0.9])
def test_omp_is_exact_per_matrix_and_equals_torch_prune(bert_dir, sparsity):
    base = AutoModel.from_pretrained(bert_dir)
    ticket = omp_ticket(base, str(bert_dir), sparsity)
    for name, w in prunable_weights(base).items():
        mask = ticket.masks[name]
        assert int((~mask).sum()) == num_pruned(w.numel(), sparsity)
        # independent implementation: torch's L1 unstructured pruning on a copy of the matrix
        lin = torch.nn.Linear(1, 1, bias=False)
        lin.weight = torch.nn.Parameter(w.detach().clone())
        prune.l1_unstructured(lin, "weight", amount=sparsity)
        assert torch.equal(lin.weight_mask.bool(), mask), name


def test_global_omp_matches_torch_global_unstructured(bert_dir):
    base = AutoModel.from_pretrained(bert_dir)
    weights = prunable_weights(base)
    masks = magnitude_masks(weights, 0.6, scope="global")
    mods = []
    for w in weights.values():
        lin = torch.nn.Linear(1, 1, bias=False)
        lin.weight = torch.nn.Parameter(w.detach().clone())
        mods.append(lin)
    prune.global_unstructured([(m, "weight") for m in mods], pruning_method=prune.L1Unstructured, amount=0.6)
    for (name, _), lin in zip(weights.items(), mods):
        assert torch.equal(lin.weight_mask.bool(), masks[name])
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    per = [1 - m.float().mean().item() for m in masks.values()]
    assert max(per) - min(per) > 0.01  # global: matrices differ


def test_random_masks_are_seeded_and_exact(bert_dir):
    base = AutoModel.from_pretrained(bert_dir)
    a = random_ticket(base, "m", 0.5, seed=1)
    b = random_ticket(base, "m", 0.5, seed=1)
    c = random_ticket(base, "m", 0.5, seed=2)
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n])
        assert int((~a.masks[n]).sum()) == num_pruned(a.masks[n].numel(), 0.5)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)
    g = random_masks({n: m.shape for n, m in a.masks.items()}, 0.3, seed=0, scope="global")
    total = sum(m.numel() for m in g.values())
    assert sum(int((~m).sum()) for m in g.values()) == round(0.3 * total)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_sparsity_raises(bert_dir, bad):
    base = AutoModel.from_pretrained(bert_dir)
    with pytest.raises(ValueError, match="sparsity must be in"):
        omp_ticket(base, "m", bad)


def test_ticket_roundtrip_is_atomic_and_validated(bert_dir, tmp_path):
    base = AutoModel.from_pretrained(bert_dir)
    t = omp_ticket(base, str(bert_dir), 0.5)
    t.meta.metrics["kd_loss"] = 0.25
    path = t.save(tmp_path / "tickets" / "omp-0.5")
    assert sorted(os.listdir(tmp_path / "tickets")) == ["omp-0.5"]  # no temp dirs left behind
    meta = json.loads((path / "ticket.json").read_text())
    assert meta["method"] == "omp" and meta["sparsity"] == 0.5
    u = Ticket.load(path)
    assert u.meta.method is Method.OMP and u.meta.metrics == {"kd_loss": 0.25}
    assert all(torch.equal(u.masks[n], t.masks[n]) for n in t.masks)
    t.save(path)  # overwrite in place
    assert Ticket.load(path).kept() == t.kept()
    with pytest.raises(TicketError, match="not a ticket directory"):
        Ticket.load(tmp_path)


def test_mask_name_and_shape_mismatch_are_clear_errors(bert_dir, roberta_dir):
    base = AutoModel.from_pretrained(bert_dir)
    t = omp_ticket(base, "m", 0.5)
    missing = dict(t.masks)
    missing.pop("pooler.dense.weight")
    with pytest.raises(TicketError, match="missing \\['pooler.dense.weight'\\]"):
        apply_masks(AutoModel.from_pretrained(bert_dir), missing)
    wrong = dict(t.masks)
    wrong["pooler.dense.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(TicketError, match="has shape \\(3, 3\\)"):
        apply_masks(AutoModel.from_pretrained(bert_dir), wrong)
    bigger = tiny_model_dir(roberta_dir.parent / "bigger", "bert", vocab_size=1000, layers=3)
    with pytest.raises(TicketError, match="missing"):
        apply_masks(AutoModel.from_pretrained(bigger), t)


@pytest.mark.parametrize("model_dir", ["bert_dir", "roberta_dir"])
def test_baked_ticket_reloads_with_from_pretrained_and_gives_the_same_logits(request, model_dir, tmp_path):
    path = request.getfixturevalue(model_dir)
    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    ticket = omp_ticket(clf, str(path), 0.7)
    ids = torch.randint(5, 1000, (3, 12))
    dense_logits = clf(ids).logits
    apply_masks(clf, ticket)
    assert has_masks(clf)
    clf.eval()
    masked_logits = clf(ids).logits
    assert not torch.allclose(masked_logits, dense_logits)
    bake(clf)
    assert not has_masks(clf)
    clf.save_pretrained(tmp_path / "baked")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "baked").eval()
    assert torch.allclose(reloaded(ids).logits, masked_logits, atol=1e-6)
    for name, w in prunable_weights(reloaded).items():
        assert torch.all(w[~ticket.masks[name]] == 0), name


def test_embedding_mask_reaches_the_tied_mlm_decoder_and_bakes_consistently(bert_dir):
    pm = load_pretraining_model(str(bert_dir))
    ids = torch.randint(5, 1000, (2, 10))
    ticket = omp_ticket(pm.base, "m", 0.8)
    apply_masks(pm.base, ticket)
    pm.eval()
    with torch.no_grad():
        before = pm.mlm_logits(pm(ids).last_hidden_state)
        emb = pm.base.embeddings.word_embeddings.weight
        assert torch.all(emb[~ticket.masks["embeddings.word_embeddings.weight"]] == 0)
        bake(pm.base)
        after = pm.mlm_logits(pm(ids).last_hidden_state)
    assert torch.allclose(before, after, atol=1e-6)


def test_remove_without_bake_restores_weights_and_zero_pruned_zeroes_storage(bert_dir):
    base = AutoModel.from_pretrained(bert_dir)
    orig = {n: w.detach().clone() for n, w in prunable_weights(base).items()}
    t = omp_ticket(base, "m", 0.5)
    apply_masks(base, t)
    with pytest.raises(ValueError, match="already has masks"):
        apply_masks(base, t)
    assert all(torch.equal(current_masks(base)[n], t.masks[n]) for n in t.masks)
    remove_masks(base, bake=False)
    assert all(torch.equal(prunable_weights(base)[n], orig[n]) for n in orig)
    apply_masks(base, t, zero_pruned=True)
    for n, w in prunable_weights(base).items():
        assert torch.all(w[~t.masks[n]] == 0) and torch.equal(w[t.masks[n]], orig[n][t.masks[n]])


@pytest.mark.parametrize("binarizer", ["threshold", "topk"])
def test_score_mask_init_sparsity_and_straight_through_gradient(binarizer):
    torch.manual_seed(0)
    w = torch.randn(8, 10)
    init = magnitude_masks({"w": w}, 0.7)["w"]
    sm = ScoreMask(init, 0.7, binarizer)
    sm.reset_threshold()
    assert torch.equal(sm.binary_mask(), init)
    assert sm.scores[init].eq(0.02).all() and sm.scores[~init].eq(0).all()
    x = torch.randn(4, 10)
    out = torch.nn.functional.linear(x, sm(w))
    g_out = torch.randn_like(out)
    out.backward(g_out)
    # dL/dS := dL/dM = (g_out^T x) * W
    expected = (g_out.T @ x) * w
    assert torch.allclose(sm.scores.grad, expected, atol=1e-5)


def test_threshold_reset_restores_exact_sparsity_after_scores_move():
    torch.manual_seed(0)
    init = torch.rand(50, 40) > 0.5
    sm = ScoreMask(init, 0.5)
    sm.reset_threshold()
    with torch.no_grad():
        sm.scores.add_(torch.randn_like(sm.scores) * 0.05)
    drifted = int(sm.binary_mask().sum())
    sm.reset_threshold()
    assert int(sm.binary_mask().sum()) == 1000
    assert drifted != 1000  # it really had drifted


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_threshold_reset_is_exact_with_ties_and_prefers_kept_entries():
    init = torch.zeros(10, dtype=torch.bool)
    init[:6] = True  # 6 kept at 0.02, 4 pruned at 0; sparsity 0.5 -> keep 5
    sm = ScoreMask(init.view(2, 5), 0.5)
    with torch.no_grad():
        sm.threshold.fill_(0.01)  # before reset: the 6 entries at 0.02 are the kept ones
    sm.reset_threshold()
    m = sm.binary_mask().view(-1)
    assert int(m.sum()) == 5 and not m[6:].any()  # exact, and the quota is filled from the kept tie group
