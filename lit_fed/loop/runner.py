"""Client runners: the transport between the loop's round and the clients' :class:`~lit_fed.client.worker.ClientWorker`.

The :class:`~lit_fed.loop.federated_loop.FederatedLoop` owns the round; a :class:`ClientRunner` only delivers the
round's client work and brings back the answers: training messages → updates, evaluation messages → metric states,
method tasks → their answers. :class:`SequentialRunner` (the default) hands them to one worker in this process;
the Flower runner (:class:`lit_fed.flower.server_app.FlowerRunner`) sends the same typed payloads to Flower nodes,
whose ClientApp hands them to the node's worker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage
from lit_fed.metrics.evaluation import ClientEvaluation

if TYPE_CHECKING:
    from lit_fed.client.tasks import ClientTask
    from lit_fed.client.worker import ClientWorker
    from lit_fed.loop.federated_loop import FederatedLoop


class ClientRunner(ABC):
    """Delivers a round's client work for a :class:`~lit_fed.loop.federated_loop.FederatedLoop`."""

    @abstractmethod
    def train(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientUpdate]:
        """Trains one client per message; returns their updates in the order of ``messages``.

        Implementations pass each message through :meth:`FederatedLoop.prepare_message` before it leaves the
        server and each update through :meth:`FederatedLoop.receive_update` when it arrives (callbacks, bytes).
        """

    @abstractmethod
    def evaluate(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientEvaluation]:
        """Evaluates each message's client model on the client's test split."""

    @abstractmethod
    def run_tasks(self, loop: FederatedLoop, tasks: Sequence[ClientTask]) -> list[Payload | None]:
        """Each task's answer, computed where its client lives, in the order of ``tasks``."""

    @abstractmethod
    def submit(self, loop: FederatedLoop, message: ServerMessage, *, state_version: int, round: int) -> Any:
        """Starts training a prepared message's client (asynchronous mode); returns a handle for :meth:`collect`.

        The client keeps its new personal state under ``state_version`` (the dispatch index; its previous state is
        its newest of a lower version) and its client-side hooks see ``round``, the round it was dispatched in.
        """

    @abstractmethod
    def collect(self, loop: FederatedLoop, handle: Any) -> ClientUpdate:
        """The update of a submitted client (not yet received by the loop); waits for it."""

    def begin(self, loop: FederatedLoop, start_round: int) -> None:  # noqa: B027
        """Called once before a run's first round, with that round (``0`` for a fresh run). Default: nothing."""

    def on_checkpoint(self, loop: FederatedLoop) -> None:  # noqa: B027
        """Called after each round checkpoint is written. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """What the runner keeps of the clients for a round checkpoint (their state, where it is in process)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restores :meth:`state_dict`."""

    def close(self) -> None:  # noqa: B027
        """Releases what the runner holds at the end of a run. Default: nothing."""


class SequentialRunner(ClientRunner):
    """Trains and evaluates the clients one after another in this process, with one worker (the default).

    Args:
        worker: The client worker; its client-state store is checkpointed with every round.
    """

    def __init__(self, worker: ClientWorker) -> None:
        self.worker = worker

    @override
    def train(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientUpdate]:
        updates = []
        for message in messages:  # one at a time: a prepared message may hold its own copy of the state
            updates.append(loop.receive_update(self.worker.fit(loop.prepare_message(message), round=loop.round)))
        return updates

    @override
    def submit(self, loop: FederatedLoop, message: ServerMessage, *, state_version: int, round: int) -> Any:
        """Nothing happens until :meth:`collect`: the client trains in this process when its update is due."""
        return message, round

    @override
    def collect(self, loop: FederatedLoop, handle: Any) -> ClientUpdate:
        message, round = handle
        return self.worker.fit(message, round=round)

    @override
    def evaluate(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientEvaluation]:
        return self.worker.evaluate(messages)

    @override
    def run_tasks(self, loop: FederatedLoop, tasks: Sequence[ClientTask]) -> list[Payload | None]:
        return [self.worker.run(task) for task in tasks]

    @override
    def begin(self, loop: FederatedLoop, start_round: int) -> None:
        self.worker.setup()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"store": self.worker.store.state_dict(), "initial_personal": self.worker.initial_personal}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the store; a checkpoint whose clients kept their state elsewhere (Flower nodes) holds none."""
        self.worker.setup()
        if "store" in state:
            self.worker.store.load_state_dict(state["store"])
            self.worker.initial_personal = state["initial_personal"]
