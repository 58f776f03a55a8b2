"""Mask comparison: Jaccard similarity, normalized Hamming distance, distance from the OMP mask.

Masks are compared **by matrix name**, never by position: two tickets must hold exactly the same names (and
shapes) or a :class:`MaskMismatchError` is raised. Similarity of two tickets is the *unweighted* mean over
matrices of the per-matrix Jaccard index |A∧B| / |A∨B| of kept weights (both empty → 1.0), as in the paper;
the normalized Hamming distance is the fraction of differing entries over *all* entries (so it is weighted by
matrix size).

A mask argument may be a ``dict`` name -> bool tensor/array, a ticket directory (holding ``mask.safetensors``)
or a ``.safetensors`` file. Files are read with ``safetensors.safe_open`` one matrix at a time, so comparing two
BERT-base tickets holds two matrices in memory, never two whole 110M-entry masks. No model is ever loaded.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Union

import numpy as np
import pandas as pd
import torch

from sparsebert.tickets.ticket import MASK_FILE, mask_file as _mask_file  # noqa: F401  (the one ticket format)

MaskLike = Union[Mapping[str, Any], str, os.PathLike]


class MaskMismatchError(ValueError):
    """Two masks do not hold the same matrix names or shapes."""


# ---------------------------------------------------------------------------------------------------------------
# sources


def _as_bool(t: Any) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    return t if t.dtype == torch.bool else t != 0


class _Source:
    """Read-only access to one mask set, one matrix at a time."""

    def __init__(self, masks: MaskLike):
        self._dict: Mapping[str, Any] | None = None
        self._handle = None
        if isinstance(masks, Mapping):
            self._dict = masks
            self.where = "<dict>"
        else:
            from safetensors import safe_open

            f = _mask_file(masks)
            self.where = str(f)
            self._handle = safe_open(str(f), framework="pt")

    def names(self) -> set[str]:
        return set(self._dict.keys()) if self._dict is not None else set(self._handle.keys())

    def get(self, name: str) -> torch.Tensor:
        if self._dict is not None:
            return _as_bool(self._dict[name])
        return _as_bool(self._handle.get_tensor(name))


def _pairs(a: MaskLike, b: MaskLike) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield (name, mask_a, mask_b) for every matrix name (sorted), after checking the name sets are equal."""
    sa, sb = _Source(a), _Source(b)
    na, nb = sa.names(), sb.names()
    if na != nb:
        only_a, only_b = sorted(na - nb), sorted(nb - na)
        raise MaskMismatchError(
            f"mask names differ between {sa.where} and {sb.where}: only in first {only_a[:3]}"
            f"{'...' if len(only_a) > 3 else ''} ({len(only_a)}), only in second {only_b[:3]}"
            f"{'...' if len(only_b) > 3 else ''} ({len(only_b)})"
        )
    if not na:
        raise MaskMismatchError(f"no masks in {sa.where}")
    for name in sorted(na):
        ma, mb = sa.get(name), sb.get(name)
        if tuple(ma.shape) != tuple(mb.shape):
            raise MaskMismatchError(f"mask {name!r}: shape {tuple(ma.shape)} vs {tuple(mb.shape)}")
        yield name, ma, mb


# ---------------------------------------------------------------------------------------------------------------
# per matrix


def jaccard(a: Any, b: Any) -> float:
    """|A∧B| / |A∨B| of kept (True) entries of two same-shaped masks; 1.0 when both keep nothing."""
    a, b = _as_bool(a), _as_bool(b)
    if tuple(a.shape) != tuple(b.shape):
        raise MaskMismatchError(f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
    union = int((a | b).sum())
    if union == 0:
        return 1.0
    return int((a & b).sum()) / union


def _hamming_count(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a ^ b).sum())


# ---------------------------------------------------------------------------------------------------------------
# per ticket


@dataclass
class Comparison:
    """Result of comparing two mask sets in one streaming pass."""

    similarity: float  # mean per-matrix Jaccard
    hamming: float  # differing entries / all entries
    n_matrices: int
    n_entries: int
    per_matrix: pd.DataFrame  # name, shape, numel, kept_a, kept_b, jaccard, hamming

    @property
    def distance(self) -> float:
        return 1.0 - self.similarity


def compare(masks_a: MaskLike, masks_b: MaskLike) -> Comparison:
    """Jaccard similarity (mean over matrices matched by name) and normalized Hamming distance, one pass."""
    rows = []
    diff_total = 0
    n_total = 0
    for name, ma, mb in _pairs(masks_a, masks_b):
        d = _hamming_count(ma, mb)
        n = ma.numel()
        diff_total += d
        n_total += n
        rows.append(
            {
                "name": name,
                "shape": "x".join(map(str, ma.shape)),
                "numel": n,
                "kept_a": int(ma.sum()),
                "kept_b": int(mb.sum()),
                "jaccard": jaccard(ma, mb),
                "hamming": d / n if n else 0.0,
            }
        )
        del ma, mb
    per = pd.DataFrame(rows)
    return Comparison(
        similarity=float(per["jaccard"].mean()),
        hamming=diff_total / n_total if n_total else 0.0,
        n_matrices=len(per),
        n_entries=n_total,
        per_matrix=per,
    )


def similarity(masks_a: MaskLike, masks_b: MaskLike) -> float:
    """Mean over matrices (matched by name; names must be equal) of the per-matrix Jaccard similarity."""
    return compare(masks_a, masks_b).similarity


def hamming(masks_a: MaskLike, masks_b: MaskLike) -> float:
    """Normalized Hamming distance: differing entries / all entries, over all matrices (matched by name)."""
    return compare(masks_a, masks_b).hamming


def distance_from_omp(masks: MaskLike, omp_masks: MaskLike) -> dict[str, float]:
    """{"omp_similarity", "omp_distance" (= 1 − similarity), "omp_hamming"} of a ticket against the OMP mask."""
    c = compare(masks, omp_masks)
    return {"omp_similarity": c.similarity, "omp_distance": c.distance, "omp_hamming": c.hamming}


# ---------------------------------------------------------------------------------------------------------------
# many tickets


def pairwise(ticket_paths: Mapping[str, MaskLike]) -> pd.DataFrame:
    """Long table over all unordered pairs (and the diagonal): a, b, similarity, distance, hamming.

    Each pair is one streaming pass over both files (O(#pairs) reads; the OS page cache makes repeats cheap)."""
    labels = list(ticket_paths)
    if len(set(labels)) != len(labels):
        raise ValueError("ticket labels must be unique")
    rows = []
    for la in labels:
        rows.append({"a": la, "b": la, "similarity": 1.0, "distance": 0.0, "hamming": 0.0})
    for la, lb in itertools.combinations(labels, 2):
        c = compare(ticket_paths[la], ticket_paths[lb])
        row = {"similarity": c.similarity, "distance": c.distance, "hamming": c.hamming}
        rows.append({"a": la, "b": lb, **row})
        rows.append({"a": lb, "b": la, **row})
    return pd.DataFrame(rows, columns=["a", "b", "similarity", "distance", "hamming"])


def to_matrix(long: pd.DataFrame, value: str = "similarity", labels: list[str] | None = None) -> pd.DataFrame:
    """Square matrix (rows a, columns b) from a :func:`pairwise` table, in ``labels`` order (default: first seen)."""
    if labels is None:
        labels = list(dict.fromkeys(long["a"].tolist()))
    m = long.pivot(index="a", columns="b", values=value)
    m = m.reindex(index=labels, columns=labels).astype(float)
    m.index.name = None
    m.columns.name = None
    return m


def similarity_matrix(ticket_paths: Mapping[str, MaskLike], value: str = "similarity") -> pd.DataFrame:
    """Square DataFrame label x label of ``value`` ("similarity", "distance" or "hamming")."""
    return to_matrix(pairwise(ticket_paths), value, labels=list(ticket_paths))
