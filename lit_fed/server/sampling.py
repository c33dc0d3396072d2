"""Client sampling: a seeded, pre-determined stream of participants per round, with optional dropout.

The clients of round ``t`` are a pure function of ``(seed, t)``, so the stream is fixed before the run
starts and a resumed run samples exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lit_fed.utils.seeding import numpy_rng


@dataclass(frozen=True)
class RoundParticipants:
    """Who was asked to train in a round, and who of them failed to report (simulated dropout)."""

    sampled: list[int]
    dropped: list[int]

    @property
    def reporting(self) -> list[int]:
        """Sampled clients that report back."""
        dropped = set(self.dropped)
        return [c for c in self.sampled if c not in dropped]


class ClientSampler:
    """Samples ``max(1, round(fraction · N))`` clients per round without replacement.

    Args:
        num_clients: N, the registered clients.
        fraction: Share of clients sampled per round, in (0, 1].
        seed: Run seed; round ``t`` uses the stream ``(seed, "sampling", t)``.
        dropout: Probability that a sampled client fails to report (skipped and logged), in [0, 1).
    """

    def __init__(self, num_clients: int, fraction: float = 1.0, seed: int = 0, dropout: float = 0.0) -> None:
        if num_clients < 1:
            raise ValueError(f"ClientSampler: num_clients must be >= 1, got {num_clients}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"client fraction must be in (0, 1], got {fraction}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"client dropout must be in [0, 1), got {dropout}")
        self.num_clients = num_clients
        self.fraction = fraction
        self.seed = seed
        self.dropout = dropout

    @property
    def clients_per_round(self) -> int:
        """How many clients each round samples."""
        return max(1, min(self.num_clients, int(math.floor(self.fraction * self.num_clients + 0.5))))

    def sample(self, round: int) -> RoundParticipants:
        """The participants of ``round`` (sorted client ids) and the ones that drop out."""
        rng = numpy_rng(self.seed, "sampling", round)
        k = self.clients_per_round
        sampled = (
            sorted(range(self.num_clients))
            if k == self.num_clients
            else sorted(int(c) for c in rng.choice(self.num_clients, size=k, replace=False))
        )
        dropped: list[int] = []
        if self.dropout > 0:
            drop_rng = numpy_rng(self.seed, "dropout", round)
            dropped = [c for c, u in zip(sampled, drop_rng.random(len(sampled)), strict=True) if u < self.dropout]
        return RoundParticipants(sampled=sampled, dropped=dropped)
