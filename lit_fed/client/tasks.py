"""Method-defined client tasks: what a method asks of its clients besides training and evaluation.

A task is a :class:`~lit_fed.client.payloads.Payload` dataclass sent to one client; the client answers it with
:meth:`ClientTask.run` on its :class:`~lit_fed.client.worker.ClientWorker` (where the client lives: in this process,
or on its Flower node) and returns another payload, or ``None``. A server step sends tasks through
``ServerContext.run_tasks`` — one channel for every backend, as Flower's ``configure_*``/``aggregate_*`` pairs are
one channel per message type — so a method that needs a new client answer defines its task and answer classes in
its own module and touches nothing else::

    @dataclass
    class CountLabels(ClientTask):
        def run(self, worker):
            return LabelHistogram(worker.data.client_label_counts(self.client_id))

    histograms = context.run_tasks([CountLabels(client_id=c, round=context.round) for c in clients])

Both the task and its answer travel through :mod:`lit_fed.client.codec`, so their fields are tensors, scalars,
strings, ``None``, containers of those, or other payloads (e.g. the :class:`~lit_fed.client.payloads.ServerMessage`
that describes the client's model, which :meth:`ClientWorker.evaluation_model` loads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lit_fed.client.payloads import Payload

if TYPE_CHECKING:
    from lit_fed.client.worker import ClientWorker


@dataclass
class ClientTask(Payload, ABC):
    """A request to one client, answered where the client lives.

    Attributes:
        client_id: The client asked.
        round: The round the task belongs to (its answer may depend on the round's data order).
    """

    client_id: int
    round: int

    @abstractmethod
    def run(self, worker: ClientWorker) -> Payload | None:
        """Answers the task on the client's worker (its module, data and stored personal state)."""
