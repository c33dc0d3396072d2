"""Round-level callbacks of the FederatedLoop, after Lightning's ``Callback``: every hook does nothing by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop


class LoopCallback:
    """Override the hooks you need."""

    def on_round_start(self, loop: FederatedLoop, round: int) -> None:
        """Before clients are sampled for ``round``."""

    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        """After aggregation and evaluation of ``round``, before its checkpoint."""
