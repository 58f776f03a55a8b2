"""Tokenized task splits as tensors, batched with no per-step Python over rows.

A split is tokenized once (``datasets`` map), then held as padded int64 tensors ``[N, W]`` (W = the longest row)
plus each row's length. The batch of a step is one index op and one slice to the longest row in the batch
(dynamic padding): ``columns[idx, :width]``. Training batches are length-bucketed: every epoch is a seeded
permutation, cut into chunks of ``batch_size x buckets`` rows, each chunk sorted by length and cut into batches,
then the batch order is shuffled. Rows of similar length share a batch, so little of a batch is padding (most GLUE
sentences are far shorter than 128 tokens). ``buckets=1`` gives plain shuffled batches (the same permutation).
The batch at step k is a function of (seed, k): resumes are exact. Evaluation runs rows sorted by length and puts
the outputs back in the split's order.

Static shapes (a compiled step, CUDA: ``FinetuneConfig.static_shapes``): a batch's width is rounded up to a multiple
of ``multiple`` (capped at the split's width), so an epoch has a handful of shapes instead of one per distinct
longest row; the last partial batch of an epoch is filled up with rows from the start of the epoch's permutation
(real rows, seen twice that epoch: every loss stays a plain mean, regression and spans included); evaluation pads
its last partial batch with copies of a row whose outputs are discarded (metrics exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from sparsebert.text.batching import epoch_permutation, pair_generator

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
TARGET_COLUMNS = ("labels", "start_positions", "end_positions")


@dataclass
class TaskTensors:
    """One tokenized split: padded model inputs, row lengths, targets (all CPU tensors)."""

    inputs: dict[str, torch.Tensor]    # name -> Long[N, W]
    lengths: torch.Tensor              # Long[N]: tokens before padding
    targets: dict[str, torch.Tensor]   # labels (Long or Float[N]) / start_positions, end_positions (Long[N])

    @classmethod
    def from_dataset(cls, ds, pad_id: int) -> "TaskTensors":
        """From a tokenized ``datasets.Dataset`` (lists of ids per row; rows may already be padded)."""
        cols = set(ds.column_names)
        if "input_ids" not in cols:
            raise ValueError(f"tokenized split has no input_ids column (has {sorted(cols)})")
        rows = ds["input_ids"]
        masks = ds["attention_mask"] if "attention_mask" in cols else None
        lengths = torch.tensor([sum(m) if masks is not None else len(r) for r, m in
                                zip(rows, masks if masks is not None else rows)], dtype=torch.long)
        width = max(1, max((len(r) for r in rows), default=1))
        inputs = {}
        for name in MODEL_COLUMNS:
            if name not in cols:
                continue
            fill = pad_id if name == "input_ids" else 0
            data = ds[name] if name != "input_ids" else rows
            t = torch.full((len(data), width), fill, dtype=torch.long)
            for i, r in enumerate(data):
                t[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
            inputs[name] = t
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        targets = {}
        for name in TARGET_COLUMNS:
            if name in cols:
                v = torch.as_tensor(ds[name])
                targets[name] = v.float() if v.is_floating_point() else v.long()
        return cls(inputs, lengths, targets)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def batch(self, idx: torch.Tensor, with_targets: bool = True, multiple: int = 0) -> dict[str, torch.Tensor]:
        """Rows ``idx``, cut to the longest of them (right padding: real tokens keep their positions); with
        ``multiple`` > 0 the width is rounded up to a multiple of it (at most the split's width)."""
        width = int(self.lengths[idx].max()) if len(idx) else 1
        if multiple > 0:
            width = min(-(-width // multiple) * multiple, self.width)
        out = {k: v[idx, :width] for k, v in self.inputs.items()}
        if with_targets:
            out.update({k: v[idx] for k, v in self.targets.items()})
        return out

    def padding_fraction(self, batches: list[torch.Tensor]) -> float:
        """Share of the tokens in ``batches`` that are padding (what bucketing saves)."""
        real = sum(int(self.lengths[b].sum()) for b in batches)
        total = sum(int(self.lengths[b].max()) * len(b) for b in batches)
        return 1.0 - real / max(total, 1)


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int, buckets: int = 50,
                  fill_last: bool = False) -> list[torch.Tensor]:
    """The batches of one epoch: ``ceil(N / batch_size)`` index tensors, only the last chunk's last batch partial.
    ``buckets`` > 1: length-bucketed (see the module doc); 1: the permutation cut in order. ``fill_last``: that
    partial batch is filled up with the first rows of the epoch's permutation (every batch has batch_size rows)."""
    if batch_size < 1 or buckets < 1:
        raise ValueError(f"batch_size and buckets must be >= 1, got {batch_size}, {buckets}")
    perm = epoch_permutation(len(lengths), seed, epoch)
    g = pair_generator("buckets", seed, epoch)  # the order of the bucketed batches
    if buckets == 1:
        return _filled(list(perm.split(batch_size)), perm, batch_size) if fill_last else list(perm.split(batch_size))
    out: list[torch.Tensor] = []
    for chunk in perm.split(batch_size * buckets):
        order = torch.argsort(lengths[chunk], stable=True)
        out.extend(chunk[order].split(batch_size))
    if fill_last:
        out = _filled(out, perm, batch_size)
    shuffle = torch.randperm(len(out), generator=g)
    return [out[i] for i in shuffle.tolist()]


def _filled(batches: list[torch.Tensor], perm: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``batches`` with the last one filled up to ``batch_size`` rows from the start of ``perm`` (cycled)."""
    need = batch_size - len(batches[-1]) if batches else 0
    if need > 0:
        fill = perm.repeat(-(-need // len(perm)))[:need]
        batches = batches[:-1] + [torch.cat([batches[-1], fill])]
    return batches


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Fine-tuning batches per epoch: every row is seen, the last partial batch included (or filled up)."""
    return math.ceil(n / batch_size)


def train_batches(data: TaskTensors, batch_size: int, seed: int, start_step: int, buckets: int = 50,
                  multiple: int = 0, fill_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite CPU batches from ``start_step`` on; the batch at step k is the same wherever iteration began.
    ``multiple`` / ``fill_last``: static shapes (see the module doc)."""
    per_epoch = batches_per_epoch(len(data), batch_size)
    step, cached = int(start_step), (None, None)
    while True:
        epoch, pos = divmod(step, per_epoch)
        if cached[0] != epoch:
            cached = (epoch, epoch_batches(data.lengths, batch_size, seed, epoch, buckets, fill_last))
        yield data.batch(cached[1][pos], multiple=multiple)
        step += 1


def eval_order(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Evaluation batches: rows sorted by length (least padding), deterministic."""
    return list(torch.argsort(lengths, stable=True).split(batch_size))


def eval_batches(data: TaskTensors, order: list[torch.Tensor], batch_size: int, multiple: int = 0
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """The model inputs of the evaluation batches ``order``; with ``multiple`` > 0 (static shapes) widths are
    rounded up and a partial batch is padded to ``batch_size`` rows with copies of its first row (the caller keeps
    the first ``len(idx)`` outputs of each batch)."""
    for idx in order:
        if multiple > 0 and 0 < len(idx) < batch_size:
            idx = torch.cat([idx, idx[:1].expand(batch_size - len(idx))])
        yield data.batch(idx, with_targets=False, multiple=multiple)


def shape_count(data: TaskTensors, batch_size: int, seed: int = 0, epoch: int = 0, buckets: int = 50,
                multiple: int = 0, fill_last: bool = False) -> int:
    """Distinct (rows, width) batch shapes in one training epoch (what a compiled step compiles once each)."""
    shapes = set()
    for idx in epoch_batches(data.lengths, batch_size, seed, epoch, buckets, fill_last):
        width = int(data.lengths[idx].max())
        if multiple > 0:
            width = min(-(-width // multiple) * multiple, data.width)
        shapes.add((len(idx), width))
    return len(shapes)
