"""Top-k sparsification ("gradient dropping"): send only the largest-magnitude entries as (indices, values).

Aji & Heafield, "Sparse Communication for Distributed Gradient Descent" (EMNLP 2017), §3: drop the fraction
``R`` of entries with the smallest absolute value; the threshold is the ``R``-th percentile of ``|g|``,
estimated on a random sample of the entries (0.1 % in the paper) instead of a full sort. Here the sampled
threshold is checked against the kept count and replaced by an exact top-k when it keeps far too many or too
few entries [design]. The error-feedback residual ``r ← g ⊙ ¬mask`` is kept
by the wrappers (:class:`~lit_fed.compression.wrappers.ErrorFeedback`), not here: a compressor is stateless.

DGC (Lin, Han, Mao, Wang and Dally, "Deep Gradient Compression", ICLR 2018), §3.3 "warm-up training": the
sparsity rises exponentially over the first rounds, 75 % → 93.75 % → 98.4375 % → 99.6 % → target
(density ``0.25^(t+1)``), see :func:`warmup_sparsity`. DGC's momentum correction and momentum factor masking
are in :class:`~lit_fed.compression.wrappers.ErrorFeedback`.

Wire format of a sparse tensor: ``idx`` (flat positions, the smallest signed integer type that holds them),
``val`` (the kept values, in the tensor's dtype) and ``shape`` (int32 metadata).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.compression.base import CompressedPayload, Compressor, shape_tensor, split_record_key


def warmup_sparsity(round: int, target: float, warmup_rounds: int, start: float = 0.75) -> float:
    """DGC's sparsity warm-up (Lin et al. 2018, §3.3): exponentially rising sparsity over the first rounds.

    In round ``t < warmup_rounds`` the density (kept fraction) is ``(1 − start)^(t+1)``, never below the
    target density; afterwards the sparsity is ``target``. With ``start = 0.75``, ``target = 0.999`` and 4
    warm-up rounds: 75 %, 93.75 %, 98.4375 %, 99.609 %, then 99.9 %.

    Args:
        round: The round index (0-based).
        target: The target sparsity, in ``[0, 1)``.
        warmup_rounds: Number of warm-up rounds (0: the target from the start).
        start: The sparsity of the first round.
    """
    if round >= warmup_rounds:
        return target
    return min(target, 1.0 - (1.0 - start) ** (round + 1))


def index_dtype(numel: int) -> torch.dtype:
    """The smallest signed integer dtype that holds the positions ``0 … numel − 1`` (int8/int16/int32/int64)."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if numel - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def kept_count(numel: int, density: float) -> int:
    """Entries kept out of ``numel`` at ``density``: ``ceil(density · numel)``, at least 1."""
    return max(1, min(numel, math.ceil(density * numel - 1e-9)))


def sampled_threshold(
    magnitudes: Tensor,
    density: float,
    sample_fraction: float = 0.01,
    min_sample: int = 1000,
    generator: torch.Generator | None = None,
    min_sample_kept: int = 100,
) -> Tensor:
    """The ``(1 − density)``-quantile of ``magnitudes`` estimated on a random sample (Aji & Heafield 2017, §3).

    Draws ``m = min(n, max(ceil(sample_fraction · n), min_sample, ceil(min_sample_kept / density)))`` positions
    uniformly with replacement and returns the ``ceil(density · m)``-th largest sampled value; keeping
    ``|g| >= threshold`` then keeps about ``density · n`` entries, with a relative standard deviation of about
    ``sqrt((1 − density) / (density · m))`` — at most ~10 % with the default ``min_sample_kept = 100``.

    Args:
        magnitudes: Flat ``|g|``.
        density: Target kept fraction, in ``(0, 1]``.
        sample_fraction: Fraction of the entries sampled (the paper uses 0.1 %).
        min_sample: Smallest sample size.
        generator: Source of the sampled positions.
        min_sample_kept: Smallest expected number of sampled entries above the threshold (bounds the
            estimate's variance at high sparsity).

    Returns:
        A 0-dim tensor (same dtype and device as ``magnitudes``).
    """
    numel = magnitudes.numel()
    size = min(numel, max(math.ceil(sample_fraction * numel), min_sample, math.ceil(min_sample_kept / density)))
    positions = torch.randint(numel, (size,), generator=generator, device="cpu").to(magnitudes.device)
    sample = magnitudes[positions]
    keep = kept_count(size, density)
    return torch.kthvalue(sample, size - keep + 1).values


class TopK(Compressor):
    """Top-k / gradient-dropping sparsifier (Aji & Heafield 2017) with DGC's sparsity warm-up (Lin et al. 2018).

    Per tensor with ``dim() > dense_max_dim``: target count ``k = ceil((1 − sparsity) · n)``; the threshold is
    estimated on a random sample (:func:`sampled_threshold`) and the entries with ``|g| >= threshold`` are
    kept; if that keeps fewer than ``(1 − tolerance) · k`` or more than ``(1 + tolerance) · k`` entries, or the
    tensor is smaller than ``exact_below`` entries, or ``exact`` is set, the exact top-k is used instead
    [design: the fallback and its rule; the paper only samples the threshold]. The kept positions are sent
    sorted, as (``idx``, ``val``, ``shape``).

    Args:
        sparsity: Target fraction of dropped entries ``R`` (0.99 in the paper), in ``[0, 1)``.
        sample_fraction: Fraction of the entries sampled for the threshold (0.1–1 %).
        min_sample: Smallest sample size for the threshold estimate.
        min_sample_kept: The sample holds at least this many expected entries above the threshold (so the
            estimate's relative error stays near ``1 / sqrt(min_sample_kept)``).
        tolerance: Relative deviation of the kept count from ``k`` that triggers the exact fallback.
        exact: Always use the exact top-k (no sampling).
        exact_below: Tensors with fewer entries use the exact top-k (sampling saves nothing there).
        warmup_rounds: DGC warm-up length in rounds (0: none), see :func:`warmup_sparsity`.
        warmup_start: Sparsity of the first warm-up round (DGC: 0.75).
        dense_max_dim: Tensors with ``dim() <= dense_max_dim`` go dense (1: biases, norm parameters).

    Attributes:
        stats: Counters of the threshold paths taken (``"sampled"``, ``"exact"``, ``"fallback"``), for diagnostics.
    """

    scheme = "topk"

    def __init__(
        self,
        sparsity: float = 0.99,
        sample_fraction: float = 0.01,
        min_sample: int = 1000,
        min_sample_kept: int = 100,
        tolerance: float = 0.25,
        exact: bool = False,
        exact_below: int = 10_000,
        warmup_rounds: int = 0,
        warmup_start: float = 0.75,
        dense_max_dim: int = 1,
    ) -> None:
        super().__init__(dense_max_dim)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"TopK: sparsity must be in [0, 1), got {sparsity}")
        if not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"TopK: sample_fraction must be in (0, 1], got {sample_fraction}")
        if min_sample < 1:
            raise ValueError(f"TopK: min_sample must be >= 1, got {min_sample}")
        if tolerance < 0:
            raise ValueError(f"TopK: tolerance must be >= 0, got {tolerance}")
        if warmup_rounds < 0:
            raise ValueError(f"TopK: warmup_rounds must be >= 0, got {warmup_rounds}")
        if not 0.0 <= warmup_start < 1.0:
            raise ValueError(f"TopK: warmup_start must be in [0, 1), got {warmup_start}")
        self.sparsity = float(sparsity)
        self.target_sparsity = float(sparsity)
        self.sample_fraction = float(sample_fraction)
        self.min_sample = int(min_sample)
        self.min_sample_kept = int(min_sample_kept)
        self.tolerance = float(tolerance)
        self.exact = exact
        self.exact_below = int(exact_below)
        self.warmup_rounds = int(warmup_rounds)
        self.warmup_start = float(warmup_start)
        self.stats = {"sampled": 0, "exact": 0, "fallback": 0}

    @property
    def density(self) -> float:
        """Target kept fraction ``1 − sparsity``."""
        return 1.0 - self.sparsity

    @override
    def at_round(self, round: int, total_rounds: int) -> TopK:
        """A copy whose sparsity follows DGC's warm-up (:func:`warmup_sparsity`) in ``round``."""
        scheduled = copy.copy(self)
        scheduled.stats = self.stats  # one set of counters
        scheduled.sparsity = warmup_sparsity(round, self.target_sparsity, self.warmup_rounds, self.warmup_start)
        return scheduled

    def select(self, flat: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sorted flat positions kept for ``flat`` (sampled threshold, exact top-k fallback).

        Args:
            flat: A 1-D floating-point tensor.
            generator: Source of the sampled positions.
        """
        numel = flat.numel()
        k = kept_count(numel, self.density)
        magnitudes = flat.abs()
        if not (self.exact or numel < self.exact_below):
            threshold = sampled_threshold(
                magnitudes, self.density, self.sample_fraction, self.min_sample, generator, self.min_sample_kept
            )
            mask = magnitudes >= threshold
            count = int(mask.sum())
            if (1.0 - self.tolerance) * k <= count <= (1.0 + self.tolerance) * k:
                self.stats["sampled"] += 1
                return mask.nonzero().flatten()
            self.stats["fallback"] += 1
        else:
            self.stats["exact"] += 1
        return torch.topk(magnitudes, k, sorted=False).indices.sort().values

    @override
    def compress_tensor(self, tensor: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """``idx`` (sorted flat positions), ``val`` (the kept values) and ``shape``."""
        flat = tensor.reshape(-1)
        positions = self.select(flat, generator)
        return {
            "idx": positions.to(index_dtype(flat.numel())),
            "val": flat[positions].clone(),
            "shape": shape_tensor(tensor.shape),
        }

    @override
    def decompress_tensor(self, parts: Mapping[str, Tensor]) -> Tensor:
        """Scatters ``val`` at ``idx`` into zeros of ``shape``."""
        shape = [int(d) for d in parts["shape"].tolist()]
        values = parts["val"]
        flat = torch.zeros(math.prod(shape), dtype=values.dtype, device=values.device)
        flat[parts["idx"].long()] = values
        return flat.reshape(shape)

    @override
    def sent_masks(self, payload: CompressedPayload) -> dict[str, Tensor]:
        """Boolean masks of the sent entries: the ``idx`` positions of sparse tensors, all-true for dense ones."""
        masks: dict[str, Tensor] = {}
        for key, value in payload.tensors.items():
            name, scheme, part = split_record_key(key)
            if scheme is None:
                masks[name] = torch.ones(value.shape, dtype=torch.bool, device=value.device)
            elif part == "idx":
                shape = [int(d) for d in payload.tensors[key[: -len("idx")] + "shape"].tolist()]
                mask = torch.zeros(math.prod(shape), dtype=torch.bool, device=value.device)
                mask[value.long()] = True
                masks[name] = mask.reshape(shape)
        return masks

    def __repr__(self) -> str:
        return (
            f"TopK(sparsity={self.target_sparsity}, sample_fraction={self.sample_fraction}, exact={self.exact}, "
            f"warmup_rounds={self.warmup_rounds})"
        )
