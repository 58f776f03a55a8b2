"""Batches of pre-training blocks and their MLM masking, on the CPU (the training loop moves them to the device).

The batch at a step is a pure function of (seed, step) (:func:`epoch_permutation`, :func:`step_generator`), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

import torch

from sparsebert.text.kd_data import PaddedSequences


def mlm_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions of the masked tokens, their target ids) from MLM labels (-100 elsewhere). Computed where the
    masking happens (the CPU), so the loss on the device needs no boolean indexing (no sync per step)."""
    flat = labels.reshape(-1)
    positions = (flat != -100).nonzero().squeeze(1)
    return positions, flat[positions]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad variable-length id lists: ``{"input_ids": Long[B, L], "attention_mask": Long[B, L]}``."""
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------------------------------------------ batching

def full_batches_per_epoch(num_items: int, batch_size: int) -> int:
    """Full batches per epoch of pre-training blocks (the last partial batch of each epoch is dropped)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_items < batch_size:
        raise ValueError(f"{num_items} items cannot fill one batch of {batch_size}")
    return num_items // batch_size


#: the version of the data order (:func:`epoch_permutation`): 1 drew epoch e of seed s from ``s + e`` (so seeds
#: shared epoch orders), 2 from a hash of the pair. Trained tickets (TAMT, IMP) carry it in their id.
DATA_ORDER = 2


def pair_generator(purpose: str, seed: int, index: int) -> torch.Generator:
    """A generator determined by ``(purpose, seed, index)`` through sha256: distinct pairs get unrelated streams
    (``seed + index`` would give epoch 1 of seed 1 the stream of epoch 0 of seed 2)."""
    digest = hashlib.sha256(f"{purpose}:{int(seed)}:{int(index)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: a permutation drawn from a generator hashed from (seed, epoch) (every sampler
    in the project uses it, so the batch at a step is a pure function of (seed, step): exact resume; and no two
    (seed, epoch) pairs share an order)."""
    return torch.randperm(num_items, generator=pair_generator("epoch", seed, epoch))


def iterate_batches(blocks, batch_size: int, seed: int, start_step: int = 0) -> Iterator[tuple[int, Any]]:
    """Infinite ``(step, batch)`` from ``start_step`` on, over shuffled epochs (:func:`epoch_permutation`); the last
    partial batch of each epoch is dropped.

    ``blocks`` a tensor -> batches are ``blocks[idx]`` (one indexing op); a :class:`~sparsebert.text.kd_data.PaddedSequences`
    or a dict of [N, L] tensors (padded KD paragraphs) -> a dict of int64 tensors, each indexed once
    (``{"input_ids", "attention_mask"[, "token_type_ids"]}``); a list (variable-length KD paragraphs) -> lists of
    its items (pad them with :func:`pad_batch`). The batch at step k is the same whether iteration began at 0 or k.
    """
    if isinstance(blocks, Mapping):
        blocks = PaddedSequences(dict(blocks))
    n = len(blocks)
    spe = full_batches_per_epoch(n, batch_size)
    step = int(start_step)
    perm_epoch, perm = None, None
    while True:
        epoch, pos = divmod(step, spe)
        if epoch != perm_epoch:
            perm = epoch_permutation(n, seed, epoch)
            perm_epoch = epoch
        idx = perm[pos * batch_size:(pos + 1) * batch_size]
        if isinstance(blocks, torch.Tensor):
            yield step, blocks[idx]
        elif isinstance(blocks, PaddedSequences):
            yield step, blocks.rows(idx)
        else:
            yield step, [blocks[i] for i in idx.tolist()]
        step += 1


# ------------------------------------------------------------------------------------------------------- masking

def mlm_collator(tokenizer, mlm_probability: float = 0.15, seed: int | None = None):
    """transformers' standard ``DataCollatorForLanguageModeling`` (15 %; of those 80 % [MASK], 10 % random,
    10 % unchanged). ``seed`` gives the collator its own torch.Generator (a constructor argument in transformers 5),
    so its masking is reproducible without touching the global RNG."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=mlm_probability,
                                           seed=seed)


def special_tokens_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Bool mask of special tokens (incl. padding) in ``input_ids``."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


class MLMMasker:
    """The MLM masking of batches, built once per run: one :func:`mlm_collator` and one tensor of the special
    token ids (not one of each per batch)."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15):
        self.collator = mlm_collator(tokenizer, mlm_probability)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        device = input_ids.device
        ids = input_ids.detach().to("cpu", dtype=torch.long).clone()
        self.collator.generator = generator  # torch_mask_tokens draws every random number from self.generator
        masked, labels = self.collator.torch_mask_tokens(ids, special_tokens_mask=torch.isin(ids, self.special))
        return masked.to(device), labels.to(device)


def mask_tokens(input_ids: torch.Tensor, tokenizer, generator: torch.Generator | None = None,
                seed: int | None = None, mlm_probability: float = 0.15, masker: MLMMasker | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM-mask a batch: ``(masked input_ids, labels)`` with labels -100 where not masked.

    The same rule and code as :func:`mlm_collator` (it runs the collator's ``torch_mask_tokens`` with the given
    generator), deterministic given ``generator`` (advanced in place) or ``seed`` (a fresh generator); neither:
    torch's global RNG. Special tokens and padding are never masked. ``input_ids`` is not modified. ``masker``:
    a run's :class:`MLMMasker` (else one is built for this call).
    """
    if generator is not None and seed is not None:
        raise ValueError("pass generator or seed, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return (masker or MLMMasker(tokenizer, mlm_probability))(input_ids, generator)


def mlm_positions_cap(rows: int, width: int, mlm_probability: float = 0.15, multiple: int = 64) -> int:
    """The fixed count of MLM positions of a static-shape batch of ``rows`` x ``width`` tokens: the mean masked
    count plus 6 standard deviations (binomial), rounded up to ``multiple``, at most ``rows * width``. A batch
    with more masked tokens (odds below 1e-9) rounds its own count up to ``multiple``: a rare extra shape."""
    n, p = rows * width, mlm_probability
    cap = n * p + 6 * math.sqrt(n * p * (1 - p))
    return min(n, -(-int(math.ceil(cap)) // multiple) * multiple)


def mlm_batch(ids: torch.Tensor, tokenizer, generator: torch.Generator, mlm_probability: float = 0.15,
              masker: MLMMasker | None = None, positions_to: int = 0) -> dict[str, torch.Tensor]:
    """A CPU batch for an MLM step: masked ``input_ids`` plus the flat ``positions`` and ``targets`` of the
    masked tokens (the standard 15 % / 80-10-10 rule, drawn from ``generator``). ``positions_to`` > 0 (static
    shapes): positions padded to that count (or the next multiple of 64 above the masked count) with position 0
    and target -100, which the loss ignores (the same mean)."""
    masked, labels = mask_tokens(ids, tokenizer, generator=generator, mlm_probability=mlm_probability,
                                 masker=masker)
    positions, targets = mlm_targets(labels)
    if positions_to > 0:
        count = positions_to if len(positions) <= positions_to else -(-len(positions) // 64) * 64
        pad = count - len(positions)
        positions = torch.cat([positions, positions.new_zeros(pad)])
        targets = torch.cat([targets, targets.new_full((pad,), -100)])
    return {"input_ids": masked, "positions": positions, "targets": targets}


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator determined by (seed, step): per-step randomness (MLM masking) that resumes exactly."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def pretraining_batches(blocks, batch_size: int, seed: int, start_step: int = 0, tokenizer=None,
                        mlm_probability: float = 0.15, static_positions: bool = False
                        ) -> Iterator[dict[str, torch.Tensor]]:
    """The CPU batches of TAMT, IMP and MLM-head fitting: block slices (:func:`iterate_batches`), MLM-masked with
    the step's own generator when a ``tokenizer`` is given (``{"input_ids"}`` alone otherwise).

    Padded KD paragraphs (a :class:`~sparsebert.text.kd_data.PaddedSequences` or dict of tensors) give batches with the same
    keys plus the data's own: ``attention_mask`` (Long [B, L], 1 = real token) and, for the reference's A/B pairs,
    ``token_type_ids`` (Long [B, L]); MLM masking never touches padding. ``static_positions``: the masked positions
    of every batch padded to one count (:func:`mlm_positions_cap`), so the MLM loss has a static shape."""
    masker = MLMMasker(tokenizer, mlm_probability) if tokenizer is not None else None
    for step, ids in iterate_batches(blocks, batch_size, seed, start_step):
        extra = {}
        if isinstance(ids, dict):
            extra = {k: v for k, v in ids.items() if k != "input_ids"}
            ids = ids["input_ids"]
        if tokenizer is None:
            yield {"input_ids": ids, **extra}
        else:
            cap = mlm_positions_cap(*ids.shape, mlm_probability) if static_positions else 0
            yield {**mlm_batch(ids, tokenizer, step_generator(seed, step), mlm_probability, masker, cap), **extra}

