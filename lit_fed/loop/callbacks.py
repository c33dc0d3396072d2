"""Round-level callbacks of the FederatedLoop, after Lightning's ``Callback``: every hook does nothing by default.

Besides round start/end, two hooks intercept a client's round: :meth:`LoopCallback.client_dataloader` may
replace the data a client trains on (label-flipping attacks) and :meth:`LoopCallback.client_update` may
replace what it uploads (model-poisoning attacks, upload compression); :meth:`LoopCallback.server_message`
may replace what the server sends (download compression), and :meth:`LoopCallback.update_received` sees each
update as it reaches the server.

Where the hooks run: ``server_message``, ``update_received``, round start/end and ``state_dict`` on the server;
``client_dataloader`` and ``client_update`` where the client trains (in this process for the sequential backend,
on the client's node under Flower). A callback that keeps per-client state on the client side (error-feedback
residuals) exposes it through :meth:`LoopCallback.client_state` / :meth:`LoopCallback.load_client_state`, so that
a Flower node keeps it with the client's personal state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict

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

    def update_received(self, loop: FederatedLoop, update: ClientUpdate) -> None:
        """On the server, when ``update`` arrives (after the client-side hooks), before screening and aggregation."""

    def client_state(self, client_id: int) -> StateDict:
        """What this callback keeps for ``client_id`` on the client side (e.g. its upload residual). Default: none.

        Under Flower the node saves it with the client's personal state after each fit and gives it back through
        :meth:`load_client_state` before the next one, whichever process trains the client.
        """
        return {}

    def load_client_state(self, client_id: int, state: StateDict, round: int) -> None:
        """Restores :meth:`client_state` before ``client_id`` trains in ``round`` (``{}``: nothing kept yet)."""

    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        """After aggregation and evaluation of ``round``, before its checkpoint; may add entries to ``metrics``."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the round (e.g. per-client residuals). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
