"""Round-level callbacks of the FederatedLoop, after Lightning's ``Callback``: every hook does nothing by default.

Besides round start/end, two hooks intercept a client's round: :meth:`LoopCallback.client_dataloader` may
replace the data a client trains on (label-flipping attacks) and :meth:`LoopCallback.client_update` may
replace what it uploads (model-poisoning attacks, upload compression); :meth:`LoopCallback.server_message`
may replace what the server sends (download compression).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from lit_fed.client.payloads import ClientUpdate, ServerMessage

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop


class LoopCallback:
    """Override the hooks you need."""

    def on_round_start(self, loop: FederatedLoop, round: int) -> None:
        """Before clients are sampled for ``round``."""

    def server_message(self, loop: FederatedLoop, message: ServerMessage) -> ServerMessage:
        """What the server sends to ``message.client_id`` (download compression). Default: unchanged."""
        return message

    def client_dataloader(self, loop: FederatedLoop, client_id: int, round: int, dataloader: DataLoader) -> Any:
        """The training data of ``client_id`` in ``round``. Default: unchanged."""
        return dataloader

    def client_update(self, loop: FederatedLoop, update: ClientUpdate, message: ServerMessage) -> ClientUpdate:
        """What ``update.client_id`` uploads after training on ``message``. Default: unchanged."""
        return update

    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        """After aggregation and evaluation of ``round``, before its checkpoint; may add entries to ``metrics``."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the round (e.g. per-client residuals). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
