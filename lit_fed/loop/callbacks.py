"""Round-level callbacks of the FederatedLoop, after Lightning's ``Callback``: every hook does nothing by default.

Server-side hooks (run where the loop runs): :meth:`LoopCallback.on_run_start`, :meth:`~LoopCallback.on_round_start`,
:meth:`~LoopCallback.server_message` (may replace what the server sends: download compression),
:meth:`~LoopCallback.update_received` (sees each update as it reaches the server), :meth:`~LoopCallback.on_round_end`
(may add to the round's metrics), :meth:`~LoopCallback.on_run_end`, :meth:`~LoopCallback.teardown` and the
checkpointed :meth:`~LoopCallback.state_dict`.

Client-side hooks (run where the client trains: in this process for the sequential backend, on the client's node
under Flower; they receive the :class:`~lit_fed.client.worker.ClientWorker`): :meth:`~LoopCallback.client_dataloader`
may replace the data a client trains on (label-flipping attacks) and :meth:`~LoopCallback.client_update` what it
uploads (model poisoning, upload compression). A callback that keeps per-client state on the client side (error
feedback residuals) exposes it through :meth:`~LoopCallback.client_state` / :meth:`~LoopCallback.load_client_state`,
so that a Flower node keeps it with the client's personal state.

Checkpointed state is matched to callbacks by :attr:`LoopCallback.state_key` (the class name by default, as
Lightning's ``Callback.state_key``), not by position, so adding a stateless callback does not break a resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict

if TYPE_CHECKING:
    from lit_fed.client.worker import ClientWorker
    from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult


class LoopCallback:
    """Override the hooks you need."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in round checkpoints and on Flower nodes (unique among a run's)."""
        return type(self).__qualname__

    def on_run_start(self, loop: FederatedLoop, start_round: int) -> None:
        """Before the first round to run (``start_round > 0`` for a resumed run)."""

    def on_round_start(self, loop: FederatedLoop, round: int) -> None:
        """Before clients are sampled for ``round``."""

    def server_message(self, loop: FederatedLoop, message: ServerMessage) -> ServerMessage:
        """What the server sends to ``message.client_id`` (download compression). Default: unchanged."""
        return message

    def client_dataloader(self, worker: ClientWorker, client_id: int, round: int, dataloader: Any) -> Any:
        """The training data of ``client_id`` in ``round``, where the client trains. Default: unchanged."""
        return dataloader

    def client_update(self, worker: ClientWorker, update: ClientUpdate, message: ServerMessage) -> ClientUpdate:
        """What ``update.client_id`` uploads after training on ``message``, where it trains. Default: unchanged."""
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
        """After the server steps and evaluation of ``round``, before its checkpoint; may add to ``metrics``."""

    def on_run_end(self, loop: FederatedLoop, result: FederatedResult) -> None:
        """After the last round; may add files to ``result.artifacts``."""

    def teardown(self, loop: FederatedLoop) -> None:
        """When the run stops, finished or not (release displays, files)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the round (e.g. per-client residuals). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
