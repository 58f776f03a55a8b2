"""The text pipeline: sources, MLM blocks (+ disk cache), KD paragraphs, batching with exact resume, masking.

Tokenizers: the embedded MiniLM's (bert-base-uncased vocabulary; [CLS] … [SEP]) and a tiny byte-level BPE trained
here and wrapped as a RoBERTa tokenizer (<s> … </s>), both offline.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from sparsebert.text import batching as B
from sparsebert.text import data as D
from sparsebert.text import kd_data as K

from helpers import WIKI_LINES



@pytest.fixture(scope="module")
def roberta_tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(WIKI_LINES * 5, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")


@pytest.fixture
def wiki_dir(tmp_path) -> Path:
    d = tmp_path / "wiki"
    d.mkdir()
    (d / "wiki.train.raw").write_text("\n".join(WIKI_LINES * 20) + "\n", encoding="utf-8")
    (d / "wiki.valid.raw").write_text("\n".join(WIKI_LINES) + "\n", encoding="utf-8")
    return d


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "tokcache")


def _stream(tokenizer, path: Path) -> list[int]:
    """The expected token stream, computed without `datasets`: every line tokenized, in file order."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return [t for row in ids for t in row]


# ------------------------------------------------------------------------------------------------------ sources

def test_wikitext_dir_splits(wiki_dir, tmp_path):
    dd = D.load_text_splits(str(wiki_dir), cache_dir=tmp_path / "hf")
    assert set(dd) == {"train", "validation"}
    assert dd["validation"]["text"] == WIKI_LINES
    assert len(dd["train"]) == 20 * len(WIKI_LINES)


def test_real_wikitext2_validation_only(bert_tok, wikitext2_dir, tmp_path):
    dd = D.load_text_splits(str(wikitext2_dir), cache_dir=tmp_path / "hf")
    assert set(dd) == {"validation"}
    assert dd["validation"]["text"][1] == " = Homarus gammarus = "
    cfg = D.TextDataConfig(source=str(wikitext2_dir), cache_dir=str(tmp_path / "c"))
    with pytest.raises(KeyError, match="no split 'train'"):
        D.tokenized_blocks(cfg, bert_tok, "train")


def test_plain_files_rule(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(f"line a{i}\n" for i in range(15)))
    b.write_text("".join(f"line b{i}\n" for i in range(5)))
    dd = D.load_text_splits(f"{a},{b}", cache_dir=tmp_path / "hf")
    assert dd["train"]["text"] == [f"line a{i}" for i in range(15)] + [f"line b{i}" for i in range(3)]
    assert dd["validation"]["text"] == ["line b3", "line b4"]  # the last 10 % of the lines
    assert set(D.load_text_splits(str(b), cache_dir=tmp_path / "hf")) == {"train"}  # < 10 lines: train only


@pytest.mark.parametrize("source,exc,match", [
    ("/no/such/dir", FileNotFoundError, "/no/such/dir"),
    ("missing_file.txt", FileNotFoundError, "missing_file.txt"),
    ("a//b", ValueError, "neither an existing path nor a hub name"),
    ("", ValueError, "non-empty"),
])
def test_bad_sources(source, exc, match):
    with pytest.raises(exc, match=match):
        D.load_text_splits(source)


def test_bad_sources_in_a_list(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x\n")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        D.load_text_splits(f"{a},{tmp_path / 'nope.txt'}")
    with pytest.raises(FileNotFoundError, match="without WikiText files"):
        D.load_text_splits(str(tmp_path))


def test_hub_name_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        D.load_text_splits("wikitext/wikitext-103-raw-v1", cache_dir=tmp_path / "hf")
    msg = str(info.value)
    assert "wikitext-103-raw-v1" in msg and "unreachable" in msg and "local WikiText dir" in msg


# ------------------------------------------------------------------------------------------------------- blocks

@pytest.mark.parametrize("tok_name", ["bert_tok", "roberta_tok"])
def test_blocks_wrap_and_cover_the_stream(tok_name, request, wiki_dir, cache):
    tok = request.getfixturevalue(tok_name)
    cfg = D.TextDataConfig(source=str(wiki_dir), block_size=16, cache_dir=cache)
    blocks = D.tokenized_blocks(cfg, tok, "train")
    prefix, suffix = D.special_tokens_wrap(tok)
    expected_wrap = ([tok.cls_token_id], [tok.sep_token_id])
    assert (prefix, suffix) == expected_wrap
    assert blocks.dtype == torch.long and blocks.shape[1] == 16
    stream = _stream(tok, wiki_dir / "wiki.train.raw")
    inner = 16 - len(prefix) - len(suffix)
    assert blocks.shape[0] == len(stream) // inner > 0
    assert (blocks[:, 0] == prefix[0]).all() and (blocks[:, -1] == suffix[0]).all()
    assert blocks[:, 1:-1].reshape(-1).tolist() == stream[:blocks.shape[0] * inner]
    assert not torch.isin(blocks[:, 1:-1], torch.tensor(tok.all_special_ids)).any()


def test_blocks_on_real_wikitext2(bert_tok, wikitext2_dir, cache):
    cfg = D.TextDataConfig(source=str(wikitext2_dir), block_size=128, cache_dir=cache)
    blocks = D.tokenized_blocks(cfg, bert_tok, "validation")
    stream = _stream(bert_tok, wikitext2_dir / "wiki.valid.raw")
    assert blocks.shape == (len(stream) // 126, 128)
    assert blocks.shape[0] > 1500  # ~245k bert tokens in WikiText-2 validation
    assert blocks[:, 1:-1].reshape(-1).tolist() == stream[:blocks.shape[0] * 126]
    assert (blocks[:, 0] == bert_tok.cls_token_id).all() and (blocks[:, -1] == bert_tok.sep_token_id).all()
    assert bert_tok.decode(blocks[0, 1:20]).startswith("= homarus gammarus = homarus gammarus, known as")
    assert D.tokenized_blocks(D.TextDataConfig(**{**cfg.__dict__, "max_blocks": 7}), bert_tok,
                              "valid").equal(blocks[:7])  # "valid" aliases "validation"; cap after the cache


def test_blocks_cache(bert_tok, roberta_tok, wiki_dir, cache):
    cfg = D.TextDataConfig(source=str(wiki_dir), block_size=32, cache_dir=cache)
    n0 = D.STATS["tokenize_blocks"]
    first = D.tokenized_blocks(cfg, bert_tok, "train")
    assert D.STATS["tokenize_blocks"] == n0 + 1
    path = D.blocks_cache_path(cfg, bert_tok, "train")
    assert path.is_file() and path.with_suffix(".json").is_file()
    hits = D.STATS["blocks_cache_hit"]
    again = D.tokenized_blocks(cfg, bert_tok, "train")
    assert D.STATS["tokenize_blocks"] == n0 + 1 and D.STATS["blocks_cache_hit"] == hits + 1  # not re-tokenized
    assert again.equal(first)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    # every part of the key matters
    other_block = D.TextDataConfig(source=str(wiki_dir), block_size=64, cache_dir=cache)
    assert D.blocks_cache_path(other_block, bert_tok, "train") != path
    assert D.tokenized_blocks(other_block, bert_tok, "train").shape[1] == 64
    assert D.STATS["tokenize_blocks"] == n0 + 2
    assert D.blocks_cache_path(cfg, roberta_tok, "train") != path
    assert D.blocks_cache_path(cfg, bert_tok, "validation") != path
    train = wiki_dir / "wiki.train.raw"
    train.write_text(train.read_text() + " one more line of text . \n")
    assert D.blocks_cache_path(cfg, bert_tok, "train") != path  # the source file changed
    # a copy elsewhere is another source; a symlink to the same dir is not (paths are resolved)
    copy = wiki_dir.parent / "copy"
    shutil.copytree(wiki_dir, copy)
    cfg_copy = D.TextDataConfig(source=str(copy), block_size=32, cache_dir=cache)
    assert D.blocks_cache_path(cfg_copy, bert_tok, "train") != D.blocks_cache_path(cfg, bert_tok, "train")
    link = wiki_dir.parent / "link"
    link.symlink_to(wiki_dir)
    cfg_link = D.TextDataConfig(source=str(link), block_size=32, cache_dir=cache)
    assert D.blocks_cache_path(cfg_link, bert_tok, "train") == D.blocks_cache_path(cfg, bert_tok, "train")


def test_block_size_too_small(bert_tok, wiki_dir, cache):
    with pytest.raises(ValueError, match="no room"):
        D.tokenized_blocks(D.TextDataConfig(source=str(wiki_dir), block_size=2, cache_dir=cache), bert_tok, "train")


def test_embedded_source(bert_tok, cache):
    """The default source: the prepared Wikipedia sample (prepared here if `make data` has not run)."""
    try:
        blocks = D.tokenized_blocks(D.TextDataConfig(cache_dir=cache), bert_tok, "validation")
    except RuntimeError as exc:
        if "could not download" in str(exc) and not os.environ.get("CI"):
            pytest.skip(str(exc))
        raise
    assert blocks.shape[1] == 128 and 200 <= blocks.shape[0] <= 1000


# --------------------------------------------------------------------------------------------------- paragraphs

def test_kd_paragraphs(bert_tok, wiki_dir, cache):
    cfg = D.TextDataConfig(source=str(wiki_dir), cache_dir=cache)
    paras = K.kd_paragraphs(cfg, bert_tok, "validation", min_tokens=12, max_tokens=20)
    # 3 long paragraphs kept; headings, blank and short lines dropped
    assert len(paras) == 3
    for p in paras:
        assert p[0] == bert_tok.cls_token_id and p[-1] == bert_tok.sep_token_id and len(p) == 20  # truncated
    assert bert_tok.decode(paras[0][1:4]) == "the first article"
    assert bert_tok.decode(paras[2][1:4]) == "the second article"
    untruncated = K.kd_paragraphs(cfg, bert_tok, "validation", min_tokens=12, max_tokens=512)
    assert [len(p) for p in untruncated] == [len(bert_tok(WIKI_LINES[i])["input_ids"]) for i in (3, 8, 12)]
    n = D.STATS["tokenize_paragraphs"]
    assert K.kd_paragraphs(cfg, bert_tok, "validation", min_tokens=12, max_tokens=20) == paras
    assert D.STATS["tokenize_paragraphs"] == n  # served from the JSON-lines cache
    assert K.paragraphs_cache_path(cfg, bert_tok, "validation", 12, 20).suffix == ".jsonl"
    capped = K.kd_paragraphs(D.TextDataConfig(source=str(wiki_dir), cache_dir=cache, max_blocks=2), bert_tok,
                             "validation", min_tokens=12, max_tokens=20)
    assert capped == paras[:2]


def test_kd_paragraphs_real_wikitext2(bert_tok, wikitext2_dir, cache):
    cfg = D.TextDataConfig(source=str(wikitext2_dir), cache_dir=cache)
    paras = K.kd_paragraphs(cfg, bert_tok, "validation")
    raw = (wikitext2_dir / "wiki.valid.raw").read_text(encoding="utf-8").split("\n")
    n_text = sum(1 for ln in raw if ln.strip() and not K.is_heading(ln))
    assert 1000 < len(paras) <= n_text
    assert all(22 <= len(p) <= 512 for p in paras)
    assert not any(bert_tok.decode(p[1:3]).startswith("=") for p in paras)
    # an independent computation of the same rule
    kept = [ln for ln in raw if ln.strip() and not ln.startswith(" =")]
    ids = bert_tok(kept, add_special_tokens=False)["input_ids"]
    assert paras == [[bert_tok.cls_token_id] + t[:510] + [bert_tok.sep_token_id] for t in ids if len(t) >= 20]
    short = K.kd_paragraphs(cfg, bert_tok, "validation", max_tokens=128)
    assert len(short) == len(paras) and max(map(len, short)) == 128


def test_pad_batch():
    out = B.pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["input_ids"].dtype == torch.long


# ----------------------------------------------------------------------------------------------------- batching

def test_iterate_batches_resume_exactly():
    blocks = torch.arange(23 * 4).reshape(23, 4)
    it = B.iterate_batches(blocks, batch_size=5, seed=3)
    from_zero = [next(it) for _ in range(15)]  # 4 steps per epoch: spans 4 epochs
    assert [s for s, _ in from_zero] == list(range(15))
    for k in (1, 4, 7, 13):
        it_k = B.iterate_batches(blocks, batch_size=5, seed=3, start_step=k)
        for step, batch in [next(it_k) for _ in range(15 - k)]:
            assert batch.equal(from_zero[step][1])
    # each epoch: distinct rows, a fresh permutation; another seed gives other batches
    for e in range(3):
        rows = torch.cat([b[:, 0] for _, b in from_zero[4 * e:4 * e + 4]])
        assert len(set(rows.tolist())) == 20
    assert not from_zero[0][1].equal(from_zero[4][1])
    assert not next(B.iterate_batches(blocks, 5, seed=4))[1].equal(from_zero[0][1])
    assert from_zero[6][1].equal(blocks[B.epoch_permutation(23, seed=3, epoch=1)[10:15]])  # step 6: epoch 1, pos 2


def test_iterate_batches_lists_and_errors():
    items = [[i] * (i % 3 + 1) for i in range(10)]
    step, batch = next(B.iterate_batches(items, batch_size=4, seed=0, start_step=5))
    assert step == 5 and len(batch) == 4 and all(b in items for b in batch)
    with pytest.raises(ValueError):
        next(B.iterate_batches(items, batch_size=11, seed=0))


# ------------------------------------------------------------------------------------------------------ masking

def test_mask_tokens_statistics(bert_tok, wikitext2_dir, cache):
    cfg = D.TextDataConfig(source=str(wikitext2_dir), block_size=128, cache_dir=cache, max_blocks=400)
    blocks = D.tokenized_blocks(cfg, bert_tok, "validation")
    masked, labels = B.mask_tokens(blocks, bert_tok, seed=0)
    assert masked.shape == labels.shape == blocks.shape
    sel = labels != -100
    special = B.special_tokens_mask(blocks, bert_tok)
    assert not (sel & special).any()  # [CLS]/[SEP] never masked
    assert masked[special].equal(blocks[special])
    assert labels[sel].equal(blocks[sel])
    rate = sel.sum().item() / (~special).sum().item()
    assert 0.14 < rate < 0.16, rate
    n = sel.sum().item()
    to_mask = (masked[sel] == bert_tok.mask_token_id).sum().item() / n
    unchanged = (masked[sel] == blocks[sel]).sum().item() / n
    assert 0.78 < to_mask < 0.82, to_mask
    assert 0.085 < unchanged < 0.115, unchanged  # 10 % kept (+ a few random draws of the same token)
    assert masked[~sel].equal(blocks[~sel])  # positions without a label are untouched
    assert blocks.equal(D.tokenized_blocks(cfg, bert_tok, "validation"))  # input not modified in place


def test_mask_tokens_determinism_and_collator(bert_tok):
    ids = B.pad_batch([[101] + list(range(2000, 2000 + n)) + [102] for n in (60, 30, 45)], bert_tok.pad_token_id)
    x = ids["input_ids"]
    a = B.mask_tokens(x, bert_tok, seed=7)
    b = B.mask_tokens(x, bert_tok, generator=torch.Generator().manual_seed(7))
    assert a[0].equal(b[0]) and a[1].equal(b[1])
    c = B.mask_tokens(x, bert_tok, seed=8)
    assert not c[1].equal(a[1])
    gen = torch.Generator().manual_seed(7)
    first, second = B.mask_tokens(x, bert_tok, generator=gen), B.mask_tokens(x, bert_tok, generator=gen)
    assert not first[1].equal(second[1])  # the generator advances
    pad = x == bert_tok.pad_token_id
    assert pad.any()
    for _ in range(20):  # padding and special tokens never masked
        m, lab = B.mask_tokens(x, bert_tok)
        assert (lab[pad] == -100).all() and (lab[:, 0] == -100).all() and m[pad].equal(x[pad])
    # the same rule as transformers' standard collator, with the same seed
    collated = B.mlm_collator(bert_tok, seed=7)([row[row != bert_tok.pad_token_id] for row in x])
    assert collated["input_ids"].equal(a[0]) and collated["labels"].equal(a[1])
    with pytest.raises(ValueError):
        B.mask_tokens(x, bert_tok, seed=1, generator=gen)
