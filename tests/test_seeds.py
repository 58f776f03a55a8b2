"""Independent seeds: the data order of each (seed, epoch) pair is drawn from a hash of the pair, so no two seeds
share an epoch's order (``seed + epoch`` gave epoch 1 of seed 1 the order of epoch 0 of seed 2)."""

from __future__ import annotations

import itertools

import torch

from sparsebert.text.batching import epoch_permutation, iterate_batches
from sparsebert.transfer.task_tensors import epoch_batches

PAIRS = list(itertools.product(range(10), range(10)))  # seeds 0-9 x epochs 0-9


def test_no_two_seed_epoch_pairs_share_an_epoch_order():
    orders = {pair: tuple(epoch_permutation(64, *pair).tolist()) for pair in PAIRS}
    assert len(set(orders.values())) == len(PAIRS)


def test_no_two_seed_epoch_pairs_share_a_bucketed_fine_tuning_epoch():
    lengths = torch.randint(5, 60, (96,), generator=torch.Generator().manual_seed(0))
    for buckets in (1, 3):  # plain shuffled batches, and length buckets with their shuffled batch order
        epochs = {pair: tuple(tuple(b.tolist()) for b in epoch_batches(lengths, 8, *pair, buckets=buckets))
                  for pair in PAIRS}
        assert len(set(epochs.values())) == len(PAIRS)
    assert sorted(torch.cat(epoch_batches(lengths, 8, 3, 4, buckets=3)).tolist()) == list(range(96))  # every row once


def test_pretraining_epochs_of_different_seeds_differ_and_resume_exactly():
    blocks = torch.arange(40 * 4).view(40, 4)
    run = lambda seed, start: [b[:, 0].tolist() for _, b in itertools.islice(iterate_batches(blocks, 8, seed, start), 10)]  # noqa: E731
    seed1, seed2 = run(1, 0), run(2, 0)
    assert seed1[5:10] != seed2[0:5]  # epoch 1 of seed 1 is not epoch 0 of seed 2 (5 steps per epoch)
    assert run(1, 5)[:5] == seed1[5:10]  # a run started at step 5 sees the batches of steps 5.. (exact resume)
