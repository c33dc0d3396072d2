"""Where a round's wall time goes: seconds spent training, on the server, evaluating and checkpointing.

Every round's history entry (hence ``metrics.csv``) holds :data:`TIMING_KEYS`:

* ``train_seconds`` — the clients' work: the round stage's collect step less its server part (sequential
  training, or waiting on Flower nodes);
* ``aggregate_seconds`` — the server's work: screening and applying the updates (aggregation) and the server
  steps;
* ``evaluate_seconds`` — the round's global and personalized evaluation (0 in a round that does not evaluate);
* ``checkpoint_seconds`` — writing the round checkpoint (0 in a round without one).

``round_seconds`` (training, server work and evaluation, without the checkpoint) stays as before. Timing is
wall-clock and differs from run to run; comparisons of histories leave every ``*_seconds`` key out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

TIMING_KEYS = ("train_seconds", "aggregate_seconds", "evaluate_seconds", "checkpoint_seconds")
"""The per-phase seconds of a round's history entry, in round order."""


class RoundTimer:
    """Accumulates wall-clock seconds per named phase of the current round.

    A round stage marks its server part with ``with loop.timer.measure("aggregate"): ...``; the loop reads and
    clears the totals once per round (:meth:`take`).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        """Adds the wall time of the ``with`` block to ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def take(self, phase: str) -> float:
        """The seconds accumulated in ``phase`` since the last :meth:`take` of it (then reset to 0)."""
        return self.seconds.pop(phase, 0.0)


def mean_round_timing(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean seconds per round of each of :data:`TIMING_KEYS` present in ``history`` (keys without ``_seconds``)."""
    means: dict[str, float] = {}
    for key in TIMING_KEYS:
        values = [float(h[key]) for h in history if key in h]
        if values:
            means[key.removesuffix("_seconds")] = sum(values) / len(values)
    return means
