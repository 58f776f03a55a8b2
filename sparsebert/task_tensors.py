"""Tokenized task splits as tensors, batched with no per-step Python over rows.

A split is tokenized once (``datasets`` map), then held as padded int64 tensors ``[N, W]`` (W = the longest row)
plus each row's length. The batch of a step is one index op and one slice to the longest row in the batch
(dynamic padding): ``columns[idx, :width]``. Training batches are length-bucketed: every epoch is a seeded
permutation, cut into chunks of ``batch_size x buckets`` rows, each chunk sorted by length and cut into batches,
then the batch order is shuffled. Rows of similar length share a batch, so little of a batch is padding (most GLUE
sentences are far shorter than 128 tokens). ``buckets=1`` gives plain shuffled batches (the same permutation).
The batch at step k is a function of (seed, k): resumes are exact. Evaluation runs rows sorted by length and puts
the outputs back in the split's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from .batching import epoch_permutation, pair_generator

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

    def batch(self, idx: torch.Tensor, with_targets: bool = True) -> dict[str, torch.Tensor]:
        """Rows ``idx``, cut to the longest of them (right padding: real tokens keep their positions)."""
        width = int(self.lengths[idx].max()) if len(idx) else 1
        out = {k: v[idx, :width] for k, v in self.inputs.items()}
        if with_targets:
            out.update({k: v[idx] for k, v in self.targets.items()})
        return out

    def padding_fraction(self, batches: list[torch.Tensor]) -> float:
        """Share of the tokens in ``batches`` that are padding (what bucketing saves)."""
        real = sum(int(self.lengths[b].sum()) for b in batches)
        total = sum(int(self.lengths[b].max()) * len(b) for b in batches)
        return 1.0 - real / max(total, 1)


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int, buckets: int = 50
                  ) -> list[torch.Tensor]:
    """The batches of one epoch: ``ceil(N / batch_size)`` index tensors, only the last chunk's last batch partial.
    ``buckets`` > 1: length-bucketed (see the module doc); 1: the permutation cut in order."""
    if batch_size < 1 or buckets < 1:
        raise ValueError(f"batch_size and buckets must be >= 1, got {batch_size}, {buckets}")
    perm = epoch_permutation(len(lengths), seed, epoch)
    g = pair_generator("buckets", seed, epoch)  # the order of the bucketed batches
    if buckets == 1:
        return list(perm.split(batch_size))
    out: list[torch.Tensor] = []
    for chunk in perm.split(batch_size * buckets):
        order = torch.argsort(lengths[chunk], stable=True)
        out.extend(chunk[order].split(batch_size))
    shuffle = torch.randperm(len(out), generator=g)
    return [out[i] for i in shuffle.tolist()]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def train_batches(data: TaskTensors, batch_size: int, seed: int, start_step: int, buckets: int = 50
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite CPU batches from ``start_step`` on; the batch at step k is the same wherever iteration began."""
    per_epoch = steps_per_epoch(len(data), batch_size)
    step, cached = int(start_step), (None, None)
    while True:
        epoch, pos = divmod(step, per_epoch)
        if cached[0] != epoch:
            cached = (epoch, epoch_batches(data.lengths, batch_size, seed, epoch, buckets))
        yield data.batch(cached[1][pos])
        step += 1


def eval_order(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Evaluation batches: rows sorted by length (least padding), deterministic."""
    return list(torch.argsort(lengths, stable=True).split(batch_size))
