"""Preprocessing choices of the federated datamodules: normalization, per-client train fractions, ``drop_last``.

Normalization maps an image ``x`` (``uint8`` divided by 255, floating point as is) to ``(x − mean) / std`` per
channel, once at setup (:func:`~lit_fed.data.batching.normalize_images`). The statistics are:

* ``"dataset"`` (default): the source's per-channel mean and standard deviation of its training pool
  (:attr:`~lit_fed.data.datasets.ArrayDataset.mean` / ``std``);
* ``"fixed"``: the given ``mean`` and ``std`` (e.g. ``[0.5]`` / ``[0.5]``, which maps ``[0, 1]`` to ``[−1, 1]``);
* ``"none"``: mean 0 and std 1 — ``uint8`` images are only scaled to ``[0, 1]``, float images are left unchanged
  (e.g. data that were normalized before they were saved).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "NORMALIZATIONS",
    "Normalization",
    "check_normalization",
    "check_train_fraction",
    "client_train_fraction",
    "normalization_stats",
]

Normalization = Literal["dataset", "fixed", "none"]
NORMALIZATIONS: tuple[str, ...] = ("dataset", "fixed", "none")
"""The accepted values of the datamodules' ``normalization`` argument."""


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_normalization(
    normalization: str, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Validates the normalization arguments.

    Returns:
        ``(mean, std)`` as tuples for ``"fixed"``, else ``None``.

    Raises:
        ValueError: An unknown ``normalization``; ``"fixed"`` without ``mean`` and ``std`` of equal, non-zero
            length with finite entries and ``std > 0``; ``mean``/``std`` given with another normalization.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got normalization={normalization!r}")
    if normalization != "fixed":
        if mean is not None or std is not None:
            raise ValueError(
                f"mean and std are used only with normalization='fixed', got normalization={normalization!r} "
                f"with mean={mean!r}, std={std!r}"
            )
        return None
    if mean is None or std is None:
        raise ValueError(f"normalization='fixed' needs both mean and std, got mean={mean!r}, std={std!r}")
    mean_t, std_t = tuple(mean), tuple(std)
    if not mean_t or len(mean_t) != len(std_t):
        raise ValueError(f"mean and std need one entry per channel, got mean={mean!r}, std={std!r}")
    if not all(_finite(m) for m in mean_t) or not all(_finite(s) and s > 0 for s in std_t):
        raise ValueError(f"mean must be finite and std finite and > 0, got mean={mean!r}, std={std!r}")
    return tuple(float(m) for m in mean_t), tuple(float(s) for s in std_t)


def normalization_stats(
    normalization: str,
    fixed: tuple[tuple[float, ...], tuple[float, ...]] | None,
    dataset_mean: Sequence[float],
    dataset_std: Sequence[float],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel ``(mean, std)`` to normalize with (see the module docstring).

    Args:
        normalization: One of :data:`NORMALIZATIONS`.
        fixed: The checked ``(mean, std)`` of ``"fixed"`` (from :func:`check_normalization`).
        dataset_mean: The source's per-channel mean (``"dataset"``).
        dataset_std: The source's per-channel standard deviation.

    Raises:
        ValueError: The fixed statistics have a different number of channels than the images.
    """
    channels = len(dataset_mean)
    if normalization == "dataset":
        return tuple(dataset_mean), tuple(dataset_std)
    if normalization == "none":
        return (0.0,) * channels, (1.0,) * channels
    assert fixed is not None
    if len(fixed[0]) != channels:
        raise ValueError(
            f"normalization='fixed': mean and std have {len(fixed[0])} entries but the images have {channels} "
            f"channel(s)"
        )
    return fixed


def check_train_fraction(train_fraction: float | Sequence[float], num_clients: int | None) -> float | tuple[float, ...]:
    """Validates ``train_fraction``: one fraction for every client, or one per client.

    Args:
        train_fraction: ``0 < f < 1``, or a sequence of such fractions.
        num_clients: The number of clients a sequence must match (``None``: not known yet, checked later).

    Returns:
        The fraction as a ``float``, or the fractions as a tuple of floats.

    Raises:
        ValueError: A fraction outside ``(0, 1)`` or a sequence of the wrong length.
    """
    if isinstance(train_fraction, numbers.Real) and not isinstance(train_fraction, bool):
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got train_fraction={train_fraction!r}")
        return float(train_fraction)
    if isinstance(train_fraction, (str, bytes)) or not isinstance(train_fraction, Sequence):
        raise ValueError(f"train_fraction must be a number or one number per client, got {train_fraction!r}")
    fractions = tuple(train_fraction)
    for client, value in enumerate(fractions):
        if not (_finite(value) and 0 < value < 1):
            raise ValueError(f"train_fraction[{client}] must be in (0, 1), got {value!r}")
    if num_clients is not None and len(fractions) != num_clients:
        raise ValueError(f"train_fraction has {len(fractions)} entries for {num_clients} clients; give one per client")
    return tuple(float(value) for value in fractions)


def client_train_fraction(train_fraction: float | tuple[float, ...], client_id: int) -> float:
    """The train fraction of ``client_id`` (the same for every client when ``train_fraction`` is one number)."""
    return train_fraction if isinstance(train_fraction, float) else train_fraction[client_id]
