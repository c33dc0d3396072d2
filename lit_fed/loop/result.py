"""What a finished run returns, and the round's mean of the clients' own metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_fed.client.payloads import ClientUpdate, StateDict


@dataclass
class FederatedResult:
    """What a finished run returns.

    Attributes:
        history: One dict of scalar metrics per round.
        summary: Last and best of each accuracy metric.
        global_state: The final global state.
        run_dir: Where logs, plots and checkpoints were written.
        last_checkpoint: Path of the last round checkpoint (``None`` if checkpointing was off).
        artifacts: Files the run wrote (plots, CSVs), by name.
    """

    history: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    global_state: StateDict
    run_dir: Path
    last_checkpoint: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)


def mean_client_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """The mean over clients of every scalar metric the updates report (``train_loss``, fidelity metrics, ...)."""
    values: dict[str, list[float]] = {}
    for update in updates:
        for key, value in update.metrics.items():
            values.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in values.items()}
