"""Client runners: where a round's client work (local training, personalized evaluation) is executed.

The :class:`~lit_fed.loop.federated_loop.FederatedLoop` owns the round — sampling, the strategy, screening,
aggregation, server-side training, global evaluation, logging, checkpoints — and hands the per-client work to
a :class:`ClientRunner`. :class:`SequentialRunner` (the default) trains and evaluates the clients one after another
in this process by calling the loop's own :meth:`~lit_fed.loop.federated_loop.FederatedLoop.train_client` and
:meth:`~lit_fed.loop.federated_loop.FederatedLoop.evaluate_clients`; the Flower runner
(:class:`lit_fed.flower.server_app.FlowerRunner`) sends the same typed payloads to Flower nodes, whose ClientApp
calls those same methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop


@dataclass
class ClientEvaluation:
    """One client's personalized evaluation on its own test split, as mergeable metric states.

    Attributes:
        client_id: The evaluated client.
        accuracy: Its micro accuracy (``correct / total``) metric.
        class_stats: Its per-class ``[tp, fp, tn, fn, support]`` counts (for shot-group accuracy).
    """

    client_id: int
    accuracy: MulticlassAccuracy
    class_stats: MulticlassStatScores


class ClientRunner(ABC):
    """Executes the client side of a round for a :class:`~lit_fed.loop.federated_loop.FederatedLoop`."""

    @abstractmethod
    def train(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientUpdate]:
        """Trains one client per message; returns their updates in the order of ``messages``.

        Implementations pass each message through :meth:`FederatedLoop.prepare_message` before it leaves the
        server and each update through :meth:`FederatedLoop.receive_update` when it arrives (callbacks, bytes).
        """

    @abstractmethod
    def evaluate(self, loop: FederatedLoop, client_ids: Sequence[int]) -> list[ClientEvaluation]:
        """Evaluates each client's personalized model on its test split (after ``loop.round``).

        Each client's model is :meth:`FederatedLoop.load_client`'s, including the strategy's
        :meth:`~lit_fed.server.strategy.Strategy.personal_overlay` for it.
        """

    @abstractmethod
    def feature_statistics(self, loop: FederatedLoop, client_ids: Sequence[int], round: int) -> list[ClientUpdate]:
        """Each client's per-class feature statistics (:meth:`FederatedLoop.client_feature_statistics`; CCVR)."""

    def submit(self, loop: FederatedLoop, message: ServerMessage, *, state_version: int, round: int) -> Any:
        """Starts training ``message``'s client now (asynchronous mode); returns a handle for :meth:`collect`.

        ``message`` was already prepared (callbacks, bytes). The client keeps its new personal state under
        ``state_version`` (the dispatch index; its previous state is its newest of a lower version) and its
        client-side hooks see ``loop.round == round``, the round it was dispatched in. Default: nothing happens
        until :meth:`collect` (the client trains when its update is due, in this process).
        """
        return message, round

    def collect(self, loop: FederatedLoop, handle: Any) -> ClientUpdate:
        """The update of a submitted client, received (:meth:`FederatedLoop.receive_update`); waits for it.

        Default: trains the client now, with ``loop.round`` set to the round it was dispatched in meanwhile.
        """
        message, round = handle
        current, loop.round = loop.round, round
        try:
            update = loop.train_client(message)
        finally:
            loop.round = current
        return loop.receive_update(update)

    def begin(self, loop: FederatedLoop, start_round: int) -> None:  # noqa: B027
        """Called once before a run's first round, with that round.

        ``0`` for a fresh run; the first round still to run for a resumed one (where clients keep state, what they
        wrote at or after it is forgotten). Default: nothing.
        """

    def close(self) -> None:  # noqa: B027
        """Releases what the runner holds at the end of a run. Default: nothing."""


class SequentialRunner(ClientRunner):
    """Trains and evaluates the clients one after another in this process (the default)."""

    @override
    def train(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientUpdate]:
        updates = []
        for message in messages:
            prepared = loop.prepare_message(message)
            updates.append(loop.receive_update(loop.train_client(prepared)))
        return updates

    @override
    def evaluate(self, loop: FederatedLoop, client_ids: Sequence[int]) -> list[ClientEvaluation]:
        return loop.evaluate_clients(client_ids)

    @override
    def feature_statistics(self, loop: FederatedLoop, client_ids: Sequence[int], round: int) -> list[ClientUpdate]:
        return loop.client_feature_statistics(client_ids, round)
