"""Deterministic seed derivation: every random stream is a pure function of the run seed and its context.

Partitions depend on ``(seed, "partition")``, client sampling on ``(seed, "sampling", round)``, a client's
local training on ``(seed, round, client)``. Resuming from a round checkpoint therefore replays the same
streams as an uninterrupted run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """Returns a 63-bit seed derived from ``parts`` (stable across processes and Python versions).

    Args:
        *parts: Integers or strings identifying the stream, e.g. ``(seed, "sampling", round)``.
    """
    digest = hashlib.blake2b(repr(tuple(parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def numpy_rng(*parts: int | str) -> np.random.Generator:
    """A NumPy generator seeded by :func:`derive_seed` of ``parts``."""
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
