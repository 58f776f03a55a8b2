"""KD paragraph data as tensors (text.kind: paragraphs, the reference's knobs), its batching, and the KD / MLM
evaluation knobs (kd_loss_cos / kd_loss_mse, reductions)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparsebert.text import batching as B
from sparsebert.text import data as D
from sparsebert.text import kd_data as K
from sparsebert.tickets import evaluation as E
from sparsebert.text.embedded import EMBEDDED_MODEL
from sparsebert.models.objectives import kd_loss, kd_mse_loss

from helpers import WIKI_LINES



@pytest.fixture
def wiki_dir(tmp_path):
    d = tmp_path / "wiki"
    d.mkdir()
    (d / "wiki.train.raw").write_text("\n".join(WIKI_LINES * 20) + "\n", encoding="utf-8")
    (d / "wiki.valid.raw").write_text("\n".join(WIKI_LINES) + "\n", encoding="utf-8")
    return d


def _cfg(wiki_dir, tmp_path, **kw):
    return D.TextDataConfig(source=str(wiki_dir), cache_dir=str(tmp_path / "c"), kind="paragraphs", **kw)


# ---------------------------------------------------------------------------------------------- config / compat

def test_config_defaults_and_validation():
    cfg = D.TextDataConfig()
    assert (cfg.kind, cfg.kd_grouping, cfg.kd_truncation, cfg.kd_corruption) == ("blocks", "line", "head", "none")
    for bad in ({"kind": "docs"}, {"kd_grouping": "x"}, {"kd_truncation": "tail"}, {"kd_corruption": "all"}):
        with pytest.raises(ValueError, match="must be one of"):
            D.TextDataConfig(**bad)
    assert D.TextDataConfig(**D.REFERENCE_KD_TEXT).kind == "paragraphs"


def test_old_text_dicts_keep_their_ids():
    """A text dict without the new fields is hashed as written: ticket ids and SharedText keys do not move."""
    from sparsebert.tickets.finders import DEFAULT_TEXT, finder_spec
    from sparsebert.tickets.pipeline import SharedText
    from sparsebert.tickets.ticket import config_hash

    spec = finder_spec({"method": "tamt", "sparsity": 0.5})
    assert spec.canonical()["text"] == DEFAULT_TEXT == {"source": "embedded", "block_size": 128}
    assert SharedText.key("m", {"source": "s", "block_size": 128}) == config_hash(
        {"model": "m", "source": "s", "block_size": 128})
    with_kind = finder_spec({"method": "tamt", "sparsity": 0.5, "text": {**DEFAULT_TEXT, "kind": "paragraphs"}})
    assert with_kind.ticket_id != spec.ticket_id


# ------------------------------------------------------------------------------------------------------- data

def test_line_grouping_matches_kd_paragraphs_padded(tok, wiki_dir, tmp_path):
    cfg = _cfg(wiki_dir, tmp_path, block_size=24)
    seqs = K.kd_sequences(cfg, tok, "validation", min_tokens=12)
    paras = K.kd_paragraphs(cfg, tok, "validation", min_tokens=12, max_tokens=24)
    assert isinstance(seqs, K.PaddedSequences) and seqs.shape == (len(paras), 24) == (3, 24)
    assert sorted(seqs.keys()) == ["attention_mask", "input_ids"]
    for i, p in enumerate(paras):
        n = int(seqs["attention_mask"][i].sum())
        assert seqs["input_ids"][i, :n].tolist() == p and n == len(p)
        assert (seqs["input_ids"][i, n:] == tok.pad_token_id).all()
    # cached: the second call does not tokenize
    before = D.STATS["tokenize_kd_sequences"]
    again = K.kd_sequences(cfg, tok, "validation", min_tokens=12)
    assert D.STATS["tokenize_kd_sequences"] == before and torch.equal(again["input_ids"], seqs["input_ids"])
    assert len(seqs[:2]) == 2 and torch.equal(seqs[:2]["input_ids"], seqs["input_ids"][:2])


def test_random_ends_truncation(tok, wiki_dir, tmp_path):
    L = 12
    head = K.kd_sequences(_cfg(wiki_dir, tmp_path, block_size=L), tok, "train", min_tokens=12)
    rnd = K.kd_sequences(_cfg(wiki_dir, tmp_path, block_size=L, kd_truncation="random_ends"), tok, "train",
                         min_tokens=12)
    full = K.kd_sequences(_cfg(wiki_dir, tmp_path, block_size=64), tok, "train", min_tokens=12)
    assert len(rnd) == len(head) == len(full) == 60
    moved = 0
    for i in range(len(rnd)):
        ids = rnd["input_ids"][i].tolist()
        inner = full["input_ids"][i][full["attention_mask"][i].bool()].tolist()[1:-1]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and rnd["attention_mask"][i].all()
        window = ids[1:-1]
        starts = [s for s in range(len(inner) - len(window) + 1) if inner[s:s + len(window)] == window]
        assert starts, "a random-end truncation is a contiguous window of the paragraph"
        moved += starts[0] > 0
    assert moved > 10  # not simply the head


def test_reference_grouping_and_one_token_corruption(tok, wiki_dir, tmp_path):
    L = 40
    clean = K.kd_sequences(_cfg(wiki_dir, tmp_path, block_size=L, kd_grouping="reference",
                                kd_truncation="random_ends"), tok, "train", min_tokens=12)
    dirty = K.kd_sequences(_cfg(wiki_dir, tmp_path, block_size=L, kd_grouping="reference",
                                kd_truncation="random_ends", kd_corruption="one_token"), tok, "train", min_tokens=12)
    assert sorted(clean.keys()) == ["attention_mask", "input_ids", "token_type_ids"]
    assert torch.equal(clean["attention_mask"], dirty["attention_mask"])
    # the groups: (long line + short line) and the two single long paragraphs of every copy; headings dropped
    assert len(clean) >= 60
    lengths = clean["attention_mask"].sum(1)
    assert int(lengths.max()) <= L - 1  # <= (L - 3) tokens + [CLS] [SEP] (+ [SEP] of a B part)
    pairs = (clean["token_type_ids"].sum(1) > 0)
    assert pairs.any()  # the two-line group gives [CLS] A [SEP] B [SEP] with token types 1 on B [SEP]
    for i in torch.nonzero(pairs).flatten().tolist():
        ids = clean["input_ids"][i, :int(lengths[i])].tolist()
        assert ids.count(tok.sep_token_id) == 2 and ids[-1] == tok.sep_token_id
    diff = (clean["input_ids"] != dirty["input_ids"]).sum(1)
    assert int(diff.max()) <= 1 and (diff == 1).float().mean() > 0.6  # exactly one token picked (10 % kept as is)
    changed = dirty["input_ids"][clean["input_ids"] != dirty["input_ids"]]
    assert (changed == tok.mask_token_id).float().mean() > 0.6
    for special in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id):
        assert not (clean["input_ids"][clean["input_ids"] != dirty["input_ids"]] == special).any()
    # the build-time randomness is seeded: same seed, same data; another seed, other data
    again = K.kd_sequences(_cfg(wiki_dir, tmp_path / "x", block_size=L, kd_grouping="reference",
                                kd_truncation="random_ends", kd_corruption="one_token"), tok, "train", min_tokens=12)
    assert torch.equal(again["input_ids"], dirty["input_ids"])
    other = K.kd_sequences(_cfg(wiki_dir, tmp_path, block_size=L, kd_grouping="reference", kd_seed=1,
                                kd_truncation="random_ends", kd_corruption="one_token"), tok, "train", min_tokens=12)
    assert not torch.equal(other["input_ids"], dirty["input_ids"])


def test_reference_groups_rule():
    """pregenerate_training_data.py: a doc is kept iff its first line has no '=' token and >= 20 tokens; the doc
    still open at the end of the file is kept unfiltered."""
    lines = ["", "h", "", "a", "b", "", "c", "", "d"]
    ids = [[], [5, 9], [], list(range(10, 30)), [1], [], list(range(10, 29)), [], [3]]
    docs = K._reference_groups(lines, ids, {9}, 20)
    assert docs == [[list(range(10, 30)), [1]], [[3]]]
    assert K._reference_groups(["x", ""], [[9] + list(range(10, 30)), []], {9}, 20) == []


def test_shared_text_paragraphs(tok, wiki_dir, tmp_path):
    from sparsebert.tickets.pipeline import SharedText

    text = {"source": str(wiki_dir), "cache_dir": str(tmp_path / "c"), "block_size": 32, "kind": "paragraphs"}
    got = SharedText().get(EMBEDDED_MODEL, text, "validation")
    assert isinstance(got, K.PaddedSequences) and got.shape[1] == 32
    blocks = SharedText().get(EMBEDDED_MODEL, {k: v for k, v in text.items() if k != "kind"}, "validation")
    assert isinstance(blocks, torch.Tensor) and blocks.dtype == torch.long


# --------------------------------------------------------------------------------------------------- batching

def _seqs(n=10, L=8, types=True):
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(3, L + 1, (n,), generator=g)
    am = (torch.arange(L)[None] < lens[:, None]).to(torch.int8)
    ids = torch.where(am.bool(), torch.randint(1000, 2000, (n, L), generator=g), torch.zeros(n, L, dtype=torch.long))
    t = {"input_ids": ids.to(torch.int32), "attention_mask": am}
    if types:
        t["token_type_ids"] = torch.zeros(n, L, dtype=torch.int8)
    return K.PaddedSequences(t)


def test_iterate_batches_padded_sequences_resume():
    data = _seqs()
    full = [b for _, b in zip(range(7), B.iterate_batches(data, 3, seed=5))]
    for step, b in full:
        assert sorted(b) == ["attention_mask", "input_ids", "token_type_ids"]
        assert all(v.dtype == torch.long and v.shape == (3, 8) for v in b.values())
    resumed = [b for _, b in zip(range(3), B.iterate_batches(data, 3, seed=5, start_step=4))]
    for (s1, b1), (s2, b2) in zip(full[4:], resumed):
        assert s1 == s2 and all(torch.equal(b1[k], b2[k]) for k in b1)
    plain = [b for _, b in zip(range(7), B.iterate_batches(dict(data.tensors), 3, seed=5))]
    assert all(torch.equal(a[1]["input_ids"], b[1]["input_ids"]) for a, b in zip(full, plain))
    # the same rows as a tensor of the ids would give
    ids_only = [b for _, b in zip(range(7), B.iterate_batches(data["input_ids"].long(), 3, seed=5))]
    assert all(torch.equal(a[1]["input_ids"], b[1]) for a, b in zip(full, ids_only))


def test_pretraining_batches_padded(tok):
    data = _seqs(types=False)
    data.tensors["input_ids"][:, 0] = tok.cls_token_id
    plain = next(B.pretraining_batches(data, 4, seed=1))
    assert sorted(plain) == ["attention_mask", "input_ids"] and plain["attention_mask"].dtype == torch.long
    a = [b for _, b in zip(range(3), B.pretraining_batches(data, 4, seed=1, tokenizer=tok, mlm_probability=0.5))]
    b = [b for _, b in zip(range(2), B.pretraining_batches(data, 4, seed=1, start_step=1, tokenizer=tok,
                                                             mlm_probability=0.5))]
    for x in a:
        assert sorted(x) == ["attention_mask", "input_ids", "positions", "targets"]
        assert (x["attention_mask"].reshape(-1)[x["positions"]] == 1).all()  # padding never masked
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a[1:], b) for k in x)


# -------------------------------------------------------------------------------------------------- evaluation

class _Tiny(nn.Module):
    """forward(input_ids, attention_mask=None, output_hidden_states) -> hidden_states (emb, layer1, layer2)."""

    def __init__(self, seed, vocab=3000):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, 8)
        self.l1, self.l2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.dec = nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        h0 = self.emb(input_ids)
        h1 = torch.tanh(self.l1(h0))
        h2 = torch.tanh(self.l2(h1))
        return SimpleNamespace(hidden_states=(h0, h1, h2), last_hidden_state=h2)

    def mlm_logits(self, rows):
        return self.dec(rows)


def test_kd_mse_loss_reduction():
    g = torch.Generator().manual_seed(0)
    hs = tuple(torch.randn(2, 5, 4, generator=g) for _ in range(3))
    ht = tuple(torch.randn(2, 5, 4, generator=g) for _ in range(3))
    expect = sum(nn.MSELoss()(a, b) for a, b in zip(hs[1:], ht[1:])) / 2  # eval_kd.py: sum over layers / #layers
    assert torch.allclose(kd_mse_loss(hs, ht), expect)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    sel = m.bool()
    expect_m = sum(((a - b) ** 2)[sel].mean() for a, b in zip(hs[1:], ht[1:])) / 2
    assert torch.allclose(kd_mse_loss(hs, ht, m), expect_m)


def test_evaluate_kd_reports_both_and_knobs():
    s, t = _Tiny(0), _Tiny(1)
    data = _seqs(n=7)
    out = E.evaluate_kd(s, t, data, batch_size=3)
    assert out["kd_loss"] == out["kd_loss_cos"] and out["kd_loss_mse"] > 0
    assert E.evaluate_kd(t, t, data, batch_size=3)["kd_loss_mse"] == 0.0
    # reference: all 512-padded positions, plain mean over batches
    ref = E.evaluate_kd(s, t, data, batch_size=3, **E.REFERENCE_KD_EVAL)
    batches = [data[i:i + 3].rows() for i in range(0, 7, 3)]
    per = []
    with torch.no_grad():
        for b in batches:
            hs = s(b["input_ids"], output_hidden_states=True).hidden_states
            ht = t(b["input_ids"], output_hidden_states=True).hidden_states
            per.append((float(kd_loss(hs, ht)), float(kd_mse_loss(hs, ht))))
    assert ref["kd_loss_cos"] == pytest.approx(sum(p[0] for p in per) / 3)
    assert ref["kd_loss_mse"] == pytest.approx(sum(p[1] for p in per) / 3)
    assert ref["kd_loss_mse"] != pytest.approx(out["kd_loss_mse"])
    # blocks (a tensor) work as before
    blocks = torch.randint(1000, 2000, (5, 6))
    assert set(E.evaluate_kd(s, t, blocks, 2)) == {"kd_loss", "kd_loss_cos", "kd_loss_mse", "kd_eval_s"}
    with pytest.raises(ValueError, match="reduction"):
        E.evaluate_kd(s, t, blocks, 2, reduction="token")


def test_evaluate_mlm_reduction(tok):
    V = len(tok)
    model = _Tiny(0, vocab=V)
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(1000, 2000, (7, 12), generator=g)
    blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
    tokw = E.evaluate_mlm(model, blocks, tok, batch_size=3)
    assert tokw == {**tokw, **E.evaluate_mlm(model, blocks, tok, batch_size=3, seed=E.EVAL_MASK_SEED,
                                             reduction="token"), "mlm_eval_s": tokw["mlm_eval_s"]}
    ref = E.evaluate_mlm(model, blocks, tok, batch_size=3, **E.REFERENCE_MLM_EVAL)
    gen = torch.Generator().manual_seed(42)
    sums, counts = [], []
    for i in range(0, 7, 3):
        masked, labels = B.mask_tokens(blocks[i:i + 3], tok, generator=gen)
        with torch.no_grad():
            logits = model.dec(model(masked).last_hidden_state)
        flat = labels.reshape(-1)
        keep = flat != -100
        l = nn.functional.cross_entropy(logits.reshape(-1, V)[keep], flat[keep], reduction="sum")
        sums.append(float(l))
        counts.append(int(keep.sum()))
    assert ref["mlm_tokens"] == sum(counts)
    assert ref["mlm_loss"] == pytest.approx(sum(s / c for s, c in zip(sums, counts)) / 3, rel=1e-5)
    # token weighting of the same masks differs in general
    assert ref["mlm_loss"] != pytest.approx(sum(sums) / sum(counts), rel=1e-9)
    pad = E.evaluate_mlm(model, _seqs(n=7, L=12, types=False), tok, batch_size=3)
    assert pad["mlm_tokens"] > 0
    with pytest.raises(ValueError, match="reduction"):
        E.evaluate_mlm(model, blocks, tok, reduction="mean")
