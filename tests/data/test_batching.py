"""Shuffled batches: the order of a plain PyTorch loop, whoever iterates them."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from lit_fed.data.batching import ShuffledBatches


def epochs(sampler, count: int, *, stop_at_len: bool) -> list[list[list[int]]]:
    """``count`` epochs of ``sampler``: each iterated to exhaustion (a ``for`` loop) or for ``len`` batches only."""
    out = []
    for _ in range(count):
        iterator = iter(sampler)
        out.append(list(itertools.islice(iterator, len(sampler))) if stop_at_len else list(iterator))
    return out


@pytest.mark.parametrize(
    ("length", "batch_size", "drop_last"),
    [(30, 10, False), (33, 10, False), (33, 10, True), (30, 10, True), (7, 10, False), (7, 10, True)],
)
def test_equals_torchs_batch_sampler_in_a_plain_loop_and_ignores_the_consumer(length, batch_size, drop_last):
    def torch_sampler():
        generator = torch.Generator().manual_seed(5)
        return BatchSampler(RandomSampler(range(length), generator=generator), batch_size, drop_last)

    def ours():
        return ShuffledBatches(length, batch_size, torch.Generator().manual_seed(5), drop_last)

    expected = epochs(torch_sampler(), 3, stop_at_len=False)
    assert len(ours()) == len(torch_sampler())
    assert epochs(ours(), 3, stop_at_len=False) == expected
    # a consumer that stops after len() batches (Lightning) gets the same epochs; with torch's own sampler the
    # second epoch changes when the last batch is full or dropped
    assert epochs(ours(), 3, stop_at_len=True) == expected
    if (length % batch_size == 0 or drop_last) and len(ours()) > 0:
        assert epochs(torch_sampler(), 3, stop_at_len=True) != expected  # what ShuffledBatches is for


def test_empty_and_bad_arguments():
    assert list(ShuffledBatches(0, 4, torch.Generator())) == [] and len(ShuffledBatches(0, 4, torch.Generator())) == 0
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(5, 0, torch.Generator())
