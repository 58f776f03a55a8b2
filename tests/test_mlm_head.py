"""The fitted MLM head is a function of its inputs: two fits in fresh caches give the same tensors bit for bit, whatever
ran before them in the process (transformers drew the missing head from torch's global RNG at load time: that was
the difference), and every ticket and result row names the head its MLM loss was measured with."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from sparsebert.tickets.finders import finder_spec
from sparsebert.tickets.mlm_head import HeadFitConfig, head_sha256, load_or_fit_head
from sparsebert.models.loading import load_pretraining_model, load_tokenizer
from sparsebert.tickets.pipeline import EvalSpec, SharedText, TicketStore
from trainables.common import ticket_columns

TEXT = {"source": "embedded", "block_size": 32}


@pytest.fixture(scope="module")
def headless(tmp_path_factory, tok):
    """A tiny BERT encoder that ships no MLM head (as all-MiniLM-L6-v2), with the embedded tokenizer."""
    path = tmp_path_factory.mktemp("headless")
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def blocks():
    return torch.randint(1000, 5000, (24, 32), generator=torch.Generator().manual_seed(0))


def _fit(headless, blocks, cache, monkeypatch, global_seed):
    monkeypatch.setenv("SPARSEBERT_CACHE", str(cache))
    torch.manual_seed(global_seed)  # what ran before in the process moves torch's global RNG
    model = load_pretraining_model(headless)
    assert not model.head_pretrained
    path = load_or_fit_head(model, headless, load_tokenizer(headless), blocks, "test-32",
                            HeadFitConfig(steps=6, batch_size=4), log=lambda m: None)
    assert str(path).startswith(str(cache))  # fitted here, not read from another cache
    return load_file(str(path)), head_sha256(model)


def test_two_fits_in_fresh_caches_give_the_same_head_bit_for_bit(headless, blocks, tmp_path, monkeypatch):
    a, sha_a = _fit(headless, blocks, tmp_path / "a", monkeypatch, global_seed=1)
    b, sha_b = _fit(headless, blocks, tmp_path / "b", monkeypatch, global_seed=2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sha_a == sha_b and len(sha_a) == 64
    # and the fit moved the head: a real fit, not a head left at its init
    fresh = load_pretraining_model(headless)
    assert not torch.equal(a["predictions.transform.dense.weight"],
                           fresh.head_state()["predictions.transform.dense.weight"])


def test_every_ticket_and_result_row_names_its_head(headless, blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBERT_CACHE", str(tmp_path / "cache"))
    shared = SharedText()
    for text in (TEXT, {"source": "embedded", "block_size": 128}):  # the eval text, and the head-fit text
        shared.blocks[SharedText.key(headless, text)] = {"train": blocks, "validation": blocks}
    es = EvalSpec(text=TEXT, eval_blocks=8, head_steps=3)
    store = TicketStore(tmp_path / "store")
    shas = set()
    for d in ({"method": "dense", "sparsity": 0.0}, {"method": "omp", "sparsity": 0.5}):
        spec = finder_spec({**d, "model": headless})
        ticket, made = store.get_or_make(spec, es, shared, log=lambda m: None)
        assert made
        sha = ticket.meta.metrics["mlm_head_sha256"]
        stored = store.load_verified(spec, lambda m: None)  # ticket.json holds it
        assert stored.meta.metrics["mlm_head_sha256"] == sha
        assert ticket_columns(spec, store.path(spec), stored.meta.metrics)["mlm_head_sha256"] == sha  # the row
        shas.add(sha)
    model = load_pretraining_model(headless)
    load_or_fit_head(model, headless, load_tokenizer(headless), blocks, "embedded-128", HeadFitConfig(steps=3),
                     log=lambda m: None)
    assert shas == {head_sha256(model)}  # both tickets' MLM losses used the one fitted head
