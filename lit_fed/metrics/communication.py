"""Communication accounting: bytes sent down (server → client) and up (client → server).

Sizes are those of the wire format in :mod:`lit_fed.client.serialization` — what is actually serialized —
per client and per round.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.client.serialization import message_nbytes, update_nbytes


class CommunicationMeter:
    """Counts bytes per round and per client, and in total."""

    def __init__(self) -> None:
        self.round_down = 0
        self.round_up = 0
        self.total_down = 0
        self.total_up = 0
        self.per_client_down: dict[int, int] = defaultdict(int)
        self.per_client_up: dict[int, int] = defaultdict(int)

    def start_round(self) -> None:
        """Resets the per-round counters."""
        self.round_down = 0
        self.round_up = 0

    def download(self, message: ServerMessage) -> int:
        """Counts a server message; returns its size."""
        size = message_nbytes(message)
        self.round_down += size
        self.total_down += size
        self.per_client_down[message.client_id] += size
        return size

    def upload(self, update: ClientUpdate) -> int:
        """Counts a client update; returns its size."""
        return self.upload_nbytes(update.client_id, update_nbytes(update))

    def upload_nbytes(self, client_id: int, size: int) -> int:
        """Counts ``size`` bytes sent by ``client_id`` (e.g. its answer to a method's task); returns ``size``."""
        self.round_up += size
        self.total_up += size
        self.per_client_up[client_id] += size
        return size

    def round_metrics(self) -> dict[str, float]:
        """Megabytes (10⁶ bytes) of the current round and cumulative."""
        return {
            "mb_down": self.round_down / 1e6,
            "mb_up": self.round_up / 1e6,
            "mb_down_total": self.total_down / 1e6,
            "mb_up_total": self.total_up / 1e6,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "total_down": self.total_down,
            "total_up": self.total_up,
            "per_client_down": dict(self.per_client_down),
            "per_client_up": dict(self.per_client_up),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_down = int(state["total_down"])
        self.total_up = int(state["total_up"])
        self.per_client_down = defaultdict(int, {int(k): int(v) for k, v in state["per_client_down"].items()})
        self.per_client_up = defaultdict(int, {int(k): int(v) for k, v in state["per_client_up"].items()})
