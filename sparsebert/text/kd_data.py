"""The KD training data (TAMT-KD) and the padded sequences it is held in: WikiText paragraphs one per sequence
(``kd_grouping: line``) or as the reference's pre-generation script packs them (``kd_grouping: reference``), cached
like the MLM blocks of :mod:`sparsebert.text.data`. :func:`text_data` gives either kind for a text config.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sparsebert.text.data import (STATS, TextDataConfig, _cache_key, _normalize_split, _quiet_datasets, _split_dataset,
                   _tokenize_lines, special_tokens_wrap, tokenized_blocks)
from sparsebert.engine.fsutil import atomic_write


def paragraphs_cache_path(cfg: TextDataConfig, tokenizer, split: str, min_tokens: int = 20,
                          max_tokens: int = 512) -> Path:
    """The JSON-lines file :func:`kd_paragraphs` reads/writes for these arguments."""
    digest, _ = _cache_key(cfg, tokenizer, split, "paragraphs", min_tokens=min_tokens, max_tokens=max_tokens)
    return (cfg.resolved_cache_dir() / "paragraphs"
            / f"{_normalize_split(split)}-min{min_tokens}-max{max_tokens}-{digest}.jsonl")


# ---------------------------------------------------------------------------------------------------- paragraphs

def is_heading(line: str) -> bool:
    """WikiText heading lines: `` = Title = ``, `` = = Section = = ``."""
    s = line.strip()
    return len(s) >= 2 and s.startswith("=") and s.endswith("=")


def kd_paragraphs(cfg: TextDataConfig, tokenizer, split: str, min_tokens: int = 20,
                  max_tokens: int = 512) -> list[list[int]]:
    """The TAMT-KD data: one sequence per paragraph (line) of the split, headings dropped, paragraphs with fewer
    than ``min_tokens`` tokens (special tokens not counted) dropped, the rest truncated to ``max_tokens``
    including the special tokens and wrapped in them. Variable lengths: batch them with :func:`sparsebert.text.batching.pad_batch`.

    Cached as a JSON-lines file (one ``[ids…]`` per line: the reference's epoch_0.json idea);
    ``cfg.max_blocks`` keeps the first N paragraphs.
    """
    path = paragraphs_cache_path(cfg, tokenizer, split, min_tokens, max_tokens)
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            out = [json.loads(line) for line in fh if line.strip()]
        STATS["paragraphs_cache_hit"] += 1
    else:
        prefix, suffix = special_tokens_wrap(tokenizer)
        room = max_tokens - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(f"max_tokens {max_tokens} leaves no room besides the special tokens")
        ds = _split_dataset(cfg, split)
        with _quiet_datasets():
            ds = ds.filter(lambda b: [bool(t.strip()) and not is_heading(t) for t in b["text"]],
                           batched=True, keep_in_memory=True, load_from_cache_file=False)
        tokenized = _tokenize_lines(ds, tokenizer)
        STATS["tokenize_paragraphs"] += 1
        out = [prefix + ids[:room] + suffix for ids in tokenized["input_ids"] if len(ids) >= min_tokens]
        payload = "".join(json.dumps(ids, separators=(",", ":")) + "\n" for ids in out).encode()
        atomic_write(path, lambda fh: fh.write(payload))
    if cfg.max_blocks is not None:
        out = out[:cfg.max_blocks]
    return out


# ------------------------------------------------------------------------------------- padded KD sequences (tensors)

class PaddedSequences:
    """Fixed-width padded sequences as CPU tensors with one row count: ``input_ids`` and ``attention_mask``
    [N, L] (plus ``token_type_ids`` for the reference's A/B pairs). Stored compactly (int32 ids, int8 masks);
    :meth:`rows` gives int64 batches.

    ``len(x)`` is N; ``x["input_ids"]`` a stored tensor; ``x[slice or index tensor]`` another PaddedSequences (one
    indexing op per tensor), so code written for a [N, T] block tensor (``blocks[:64]``) works unchanged.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        if "input_ids" not in tensors:
            raise ValueError(f"PaddedSequences needs 'input_ids', got {sorted(tensors)}")
        n = {k: int(v.shape[0]) for k, v in tensors.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"PaddedSequences tensors differ in rows: {n}")
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return int(self.tensors["input_ids"].shape[0])

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.tensors[key]
        if isinstance(key, int):
            key = slice(key, key + 1) if key != -1 else slice(-1, None)
        return PaddedSequences({k: v[key] for k, v in self.tensors.items()})

    def __contains__(self, key) -> bool:
        return key in self.tensors

    def keys(self):
        return self.tensors.keys()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tensors["input_ids"].shape)

    def rows(self, idx=None) -> dict[str, torch.Tensor]:
        """A batch dict of int64 tensors: rows ``idx`` (all if None) of every tensor."""
        if idx is None:
            return {k: v.long() for k, v in self.tensors.items()}
        return {k: v[idx].long() for k, v in self.tensors.items()}

    def __repr__(self) -> str:
        return f"PaddedSequences({', '.join(f'{k}={tuple(v.shape)}' for k, v in self.tensors.items())})"


def kd_sequences_cache_path(cfg: TextDataConfig, tokenizer, split: str, min_tokens: int = 20) -> Path:
    """The .npz file :func:`kd_sequences` reads/writes for these arguments."""
    digest, _ = _cache_key(cfg, tokenizer, split, "kd_sequences", **_kd_key(cfg, min_tokens))
    return (cfg.resolved_cache_dir() / "kd_sequences"
            / f"{_normalize_split(split)}-L{cfg.block_size}-{cfg.kd_grouping}-{digest}.npz")


def _kd_key(cfg: TextDataConfig, min_tokens: int) -> dict:
    random = cfg.kd_grouping == "reference" or cfg.kd_truncation != "head" or cfg.kd_corruption != "none"
    return {"length": cfg.block_size, "grouping": cfg.kd_grouping, "truncation": cfg.kd_truncation,
            "corruption": cfg.kd_corruption, "min_tokens": min_tokens, "seed": cfg.kd_seed if random else None}


def pair_special_tokens(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(prefix, middle, suffix) around a pair: ([CLS], [SEP], [SEP]) for BERT, (<s>, </s></s>, </s>) for
    RoBERTa (the reference's pregenerate_training_data.py builds exactly these)."""
    prefix, suffix = special_tokens_wrap(tokenizer)
    build = getattr(type(tokenizer), "build_inputs_with_special_tokens", None)
    if build is not None:
        out = list(tokenizer.build_inputs_with_special_tokens([-7], [-8]))
        return out[:out.index(-7)], out[out.index(-7) + 1:out.index(-8)], out[out.index(-8) + 1:]
    n_pair = tokenizer.num_special_tokens_to_add(pair=True)
    mid = suffix * (n_pair - len(prefix) - len(suffix))  # BERT: [SEP]; RoBERTa: </s></s>
    return prefix, mid, suffix


def _equals_token_ids(tokenizer) -> set[int]:
    """Ids of the vocabulary's '=' tokens (the reference drops a group whose first line has the token '=')."""
    return {i for t, i in tokenizer.get_vocab().items() if t.lstrip("Ġ▁") == "="}


def _truncate_random_ends(a: list, b: list, max_tokens: int, rng) -> None:
    """The reference's ``truncate_seq_pair``: drop from the longer of a, b one token at a time, front or back
    with probability 1/2 each, until len(a) + len(b) <= max_tokens. In place."""
    while len(a) + len(b) > max_tokens:
        t = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del t[0]
        else:
            t.pop()


def _corrupt_one_token(ids: list[int], protected: set[int], mask_id: int, vocab_size: int, rng) -> None:
    """The reference's ``create_masked_lm_predictions`` with masked_lm_prob 0 (so max(1, round(0)) = 1 token): one
    non-special position picked uniformly; [MASK] 80 %, unchanged 10 %, a uniform vocabulary id 10 %. In place."""
    cand = [i for i, t in enumerate(ids) if t not in protected]
    if not cand:
        return
    rng.shuffle(cand)
    i = cand[0]
    if rng.random() < 0.8:
        ids[i] = mask_id
    elif rng.random() < 0.5:
        pass
    else:
        ids[i] = rng.randrange(vocab_size)


def _reference_groups(lines: list[str], ids: list[list[int]], eq_ids: set[int], min_tokens: int):
    """pregenerate_training_data.py main(): consecutive non-blank lines form a document; at a blank line the
    document is kept when its first line has no '=' token and >= min_tokens tokens; a document still open at the
    end of the file is kept unfiltered."""
    docs, doc = [], []
    for line, toks in zip(lines, ids):
        if line.strip() == "":
            if doc and not (eq_ids & set(doc[0])) and len(doc[0]) >= min_tokens:
                docs.append(doc)
            doc = []
        else:
            doc.append(list(toks))
    if doc:
        docs.append(doc)
    return docs


def _reference_instances(doc: list[list[int]], max_num_tokens: int, rng, dot_id: int, truncation: str,
                         short_seq_prob: float = 0.1) -> list[tuple[list[int], list[int]]]:
    """create_instances_from_document(bi_text=False): (A, B) token lists of one document."""
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    out, chunk, length = [], [], 0
    for i, seg in enumerate(doc):
        chunk.append(seg)
        length += len(seg)
        if i == len(doc) - 1 or length >= target:
            a_end = rng.randrange(1, len(chunk)) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            b = [t for s in chunk[a_end:] for t in s]
            if not a:
                a = [dot_id]
            if truncation == "random_ends":
                _truncate_random_ends(a, b, max_num_tokens, rng)
            else:
                b = b[:max(0, max_num_tokens - len(a))]
                a = a[:max_num_tokens]
            out.append((a, b))
            chunk, length = [], 0
    return out


def kd_sequences(cfg: TextDataConfig, tokenizer, split: str, min_tokens: int = 20) -> PaddedSequences:
    """The TAMT-KD data as fixed-width tensors padded to ``cfg.block_size`` (``kind="paragraphs"``).

    ``kd_grouping="line"`` (ours): one sequence per non-heading line with >= ``min_tokens`` tokens, wrapped in the
    special tokens, truncated by ``kd_truncation`` to block_size. ``"reference"``: the reference's documents and
    A/B packing (:func:`_reference_groups`, :func:`_reference_instances`), ``token_type_ids`` 0 for [CLS] A [SEP]
    and 1 for B [SEP] (all 0 when B is empty or the tokenizer has no token types). ``kd_corruption="one_token"``
    then corrupts one token per sequence. All randomness is drawn once, from ``random.Random(cfg.kd_seed)``, when
    the data is built; the result is cached (.npz, full split; ``cfg.max_blocks`` keeps the first N).
    """
    import random

    path = kd_sequences_cache_path(cfg, tokenizer, split, min_tokens)
    if path.is_file():
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        STATS["kd_sequences_cache_hit"] += 1
    else:
        L = cfg.block_size
        prefix, suffix = special_tokens_wrap(tokenizer)
        pre2, mid, suf2 = pair_special_tokens(tokenizer)
        rng = random.Random(cfg.kd_seed)
        typed = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        ds = _split_dataset(cfg, split)
        STATS["tokenize_kd_sequences"] += 1
        seqs: list[tuple[list[int], list[int]]] = []  # (ids, token types)
        if cfg.kd_grouping == "line":
            room = L - len(prefix) - len(suffix)
            if room < 1:
                raise ValueError(f"block_size {L} leaves no room besides the special tokens")
            with _quiet_datasets():
                ds = ds.filter(lambda b: [bool(t.strip()) and not is_heading(t) for t in b["text"]],
                               batched=True, keep_in_memory=True, load_from_cache_file=False)
            for ids in _tokenize_lines(ds, tokenizer)["input_ids"]:
                if len(ids) < min_tokens:
                    continue
                ids = list(ids)
                if cfg.kd_truncation == "random_ends":
                    _truncate_random_ends(ids, [], room, rng)
                else:
                    ids = ids[:room]
                seqs.append((prefix + ids + suffix, [0] * (len(ids) + len(prefix) + len(suffix))))
        else:
            max_num = L - len(pre2) - len(mid) - len(suf2)
            if max_num < 2:
                raise ValueError(f"block_size {L} leaves no room besides the pair's special tokens")
            lines = list(ds["text"])
            ids = _tokenize_lines(ds, tokenizer)["input_ids"]
            dot = tokenizer(".", add_special_tokens=False)["input_ids"]
            for doc in _reference_groups(lines, ids, _equals_token_ids(tokenizer), min_tokens):
                for a, b in _reference_instances(doc, max_num, rng, dot[0] if dot else 0, cfg.kd_truncation):
                    if b:
                        seq = pre2 + a + mid + b + suf2
                        tt = [0] * (len(pre2) + len(a) + len(mid)) + [1 if typed else 0] * (len(b) + len(suf2))
                    else:
                        seq, tt = prefix + a + suffix, [0] * (len(prefix) + len(a) + len(suffix))
                    seqs.append((seq, tt))
        if cfg.kd_corruption == "one_token":
            protected = set(prefix) | set(suffix) | set(mid)
            for seq, _ in seqs:
                _corrupt_one_token(seq, protected, tokenizer.mask_token_id, tokenizer.vocab_size, rng)
        n = len(seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        arrays = {"input_ids": np.full((n, L), pad, dtype=np.int32),
                  "attention_mask": np.zeros((n, L), dtype=np.int8)}
        if cfg.kd_grouping == "reference":
            arrays["token_type_ids"] = np.zeros((n, L), dtype=np.int8)
        for i, (seq, tt) in enumerate(seqs):
            arrays["input_ids"][i, :len(seq)] = seq
            arrays["attention_mask"][i, :len(seq)] = 1
            if "token_type_ids" in arrays:
                arrays["token_type_ids"][i, :len(tt)] = tt
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        _, info = _cache_key(cfg, tokenizer, split, "kd_sequences", **_kd_key(cfg, min_tokens))
        info.update(num_sequences=n, config=asdict(cfg))
        atomic_write(path.with_suffix(".json"), lambda fh: fh.write(json.dumps(info, indent=1).encode()))
    if cfg.max_blocks is not None:
        arrays = {k: v[:cfg.max_blocks] for k, v in arrays.items()}
    return PaddedSequences({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})


def text_data(cfg: TextDataConfig, tokenizer, split: str):
    """What a text config's split trains/evaluates on: :func:`tokenized_blocks` (kind "blocks", a LongTensor
    [N, block_size]) or :func:`kd_sequences` (kind "paragraphs", a :class:`PaddedSequences`)."""
    if cfg.kind == "paragraphs":
        return kd_sequences(cfg, tokenizer, split)
    return tokenized_blocks(cfg, tokenizer, split)
