"""Whole-batch tensor datasets and their data loaders: the fast path for many tiny client loaders.

A client loader yields hundreds of batches of ~10 samples per round, so per-sample ``__getitem__`` calls and
collation dominate. Here the sampler yields a *list of positions* per batch (``BatchSampler``), the
dataset answers with one fancy-indexing operation on pre-normalized ``float32`` tensors, and the
``DataLoader`` runs with ``batch_size=None`` so nothing is collated. Normalizing once at setup measured
~25% cheaper per batch of 10 than converting ``uint8`` per batch (≈21 µs vs ≈27 µs on Fashion-MNIST, one CPU
thread), at the cost of keeping the images as ``float32``.

Augmentation (random crop with 4-pixel padding and horizontal flip, the standard CIFAR recipe of He et al.
2016) is applied per batch on tensors, drawing from the loader's own generator so it stays deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float], chunk_size: int = 8192) -> Tensor:
    """``(images / 255 − mean) / std`` for ``uint8`` images, ``(images − mean) / std`` for float, as float32.

    Args:
        images: ``(N, C, H, W)`` images.
        mean: Per-channel mean on the ``[0, 1]`` scale.
        std: Per-channel standard deviation on the ``[0, 1]`` scale.
        chunk_size: Images converted at a time (bounds the temporary memory).
    """
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    out = torch.empty(images.shape, dtype=torch.float32)
    for start in range(0, images.shape[0], chunk_size):
        chunk = images[start : start + chunk_size].to(torch.float32)
        out[start : start + chunk_size] = (chunk / scale - mean_t) * inv_std
    return out


def random_crop_flip(
    images: Tensor, generator: torch.Generator, padding: int = 4, fill: Tensor | None = None
) -> Tensor:
    """Random crop after padding, then a random horizontal flip, independently per image, in one gather.

    Args:
        images: ``(B, C, H, W)`` float images.
        generator: Source of the crop offsets and flip decisions.
        padding: Pixels of padding on every side (crop offsets lie in ``[0, 2 · padding]``).
        fill: ``(C,)`` padding value per channel (e.g. the normalized value of black); zero by default.

    Returns:
        ``(B, C, H, W)`` augmented images.
    """
    batch, channels, height, width = images.shape
    if batch == 0:
        return images
    padded = images.new_zeros((batch, channels, height + 2 * padding, width + 2 * padding))
    if fill is not None:
        padded += fill.to(images.dtype).view(1, channels, 1, 1)
    padded[:, :, padding : padding + height, padding : padding + width] = images
    offset_y = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = offset_y[:, None] + torch.arange(height)
    columns = torch.arange(width).expand(batch, width)
    columns = torch.where(flip[:, None], width - 1 - columns, columns) + offset_x[:, None]
    return padded[
        torch.arange(batch)[:, None, None, None],
        torch.arange(channels)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


class TensorBatchDataset(Dataset):
    """Map-style dataset over in-memory tensors whose ``__getitem__`` takes a whole batch of positions.

    Args:
        images: ``(N, C, H, W)`` float32 images (already normalized).
        labels: ``(N,)`` int64 labels.
        augment_generator: If given, every batch is augmented by :func:`random_crop_flip` drawing from it.
        fill: Per-channel padding value for the augmentation.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        augment_generator: torch.Generator | None = None,
        fill: Tensor | None = None,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
        self.images = images
        self.labels = labels
        self.augment_generator = augment_generator
        self.fill = fill

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, positions: Sequence[int] | Tensor | int) -> tuple[Tensor, Tensor]:
        """Returns ``(images, labels)`` at ``positions`` (a list of ints gives a batch)."""
        index = torch.as_tensor(positions, dtype=torch.int64)
        images = self.images[index]
        if self.augment_generator is not None and images.ndim == 4:
            images = random_crop_flip(images, self.augment_generator, fill=self.fill)
        return images, self.labels[index]


class ShuffledBatches(Sampler[list[int]]):
    """``BatchSampler(RandomSampler(range(n), generator=generator), batch_size, drop_last)``, whoever iterates it.

    ``RandomSampler`` draws a second, unused permutation from its generator when it is exhausted, i.e. only when
    the consumer asks for a batch past the last one: a plain ``for`` loop does, Lightning (which stops after
    ``len(loader)`` batches) does not when the last batch is full or dropped. The next epoch's order then depended on
    the consumer. Here that draw is made just before the last batch is yielded, always; the order is the plain
    loop's, and Lightning's whenever the last batch is partial and kept.

    Args:
        length: Number of samples ``n``.
        batch_size: Positions per batch.
        generator: Source of each epoch's permutation.
        drop_last: Drop the last batch when it is partial.
    """

    def __init__(self, length: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.length = int(length)
        self.batch_size = int(batch_size)
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return self.length // self.batch_size
        return -(-self.length // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.length == 0:
            return
        order = torch.randperm(self.length, generator=self.generator).tolist()
        size, batches = self.batch_size, len(self)
        for i in range(batches - 1):
            yield order[i * size : (i + 1) * size]
        torch.randperm(self.length, generator=self.generator)  # RandomSampler's draw at exhaustion
        if batches:
            yield order[(batches - 1) * size : batches * size]


def shuffled_loader(
    dataset: TensorBatchDataset, batch_size: int, generator: torch.Generator, drop_last: bool = False
) -> DataLoader:
    """Batches of ``batch_size`` random positions: a fresh permutation from ``generator`` each epoch.

    The order does not depend on whether the consumer asks past the last batch (see :class:`ShuffledBatches`).
    """
    return DataLoader(dataset, batch_size=None, sampler=ShuffledBatches(len(dataset), batch_size, generator, drop_last))


def sequential_loader(dataset: TensorBatchDataset, batch_size: int) -> DataLoader:
    """Consecutive batches of ``batch_size`` positions in order (for evaluation)."""
    sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=sampler)
