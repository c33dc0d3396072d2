"""A :class:`~lit_fed.flower.server_app.FlowerRunner` whose nodes answer in this process: no Ray, no network.

For checking (and debugging, breakpoints included) that a method runs under Flower exactly as in one process: the
server loop's client side is pickled and unpickled once (as Ray ships it to the simulation's actors), giving one
node worker that answers every client's messages, as one Ray actor may; each message and reply is serialized to
Flower's protobuf bytes and parsed back, and answered by the ClientApp's own handlers
(:data:`~lit_fed.flower.client_app.NODE_ANSWERS`), with personal state in a node-state directory. Only Flower's
transport (the SuperLink, Ray) is left out::

    loop = FederatedLoop(client, datamodule, strategy, ...)
    loop.runner = InProcessRunner(loop, state_dir="runs/debug/node_states")
    loop.run()  # every round's client work goes through Flower records and the node handlers
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

from flwr.app import MessageType, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.flower.backend import build_worker, worker_spec
from lit_fed.flower.client_app import NODE_ANSWERS, Node
from lit_fed.flower.node_state import DirectoryState
from lit_fed.flower.records import recorddict_to_update
from lit_fed.flower.server_app import FlowerRunner
from lit_fed.loop.federated_loop import FederatedLoop


def over_the_wire(content: RecordDict) -> RecordDict:
    """What the receiving side of a real deployment gets: the protobuf bytes parsed back."""
    proto = ProtoRecordDict()
    proto.ParseFromString(recorddict_to_proto(content).SerializeToString())
    return recorddict_from_proto(proto)


class InProcessRunner(FlowerRunner):
    """Flower's message handling for ``loop``'s clients, in this process.

    In asynchronous mode a submitted client trains at once (as on a Flower node, before the server's virtual clock
    reaches its arrival) and :meth:`collect` returns its reply.

    Args:
        loop: The server loop (its client side is copied for the node, as Ray would).
        state_dir: The node-state directory (personal and callback client-side state, versioned).
        keep: Versions the directory keeps per client when the server does not say which a resume needs.

    Attributes:
        messages: The message type of every message sent, in order.
    """

    def __init__(self, loop: FederatedLoop, state_dir: str | os.PathLike[str], keep: int = 3) -> None:
        super().__init__(grid=None)  # type: ignore[arg-type]
        try:
            shipped = pickle.dumps(worker_spec(loop))
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise TypeError(
                "InProcessRunner: the loop's client side (client module, datamodule, Trainer settings, callbacks) "
                f"must pickle, as Flower's simulation ships it to Ray actors: {error}. Use module-level functions "
                "or functools.partial instead of lambdas (e.g. for optimizer factories)"
            ) from error
        self.node_worker = build_worker(pickle.loads(shipped))
        self.store = DirectoryState(state_dir, keep=keep)
        self.messages: list[str] = []
        self._set_up = False

    @override
    def connect(self, num_clients: int) -> dict[int, int]:
        self.nodes = {cid: 1000 + cid for cid in range(num_clients)}
        return self.nodes

    @override
    def round_trip(self, contents: Sequence[tuple[int, RecordDict]], message_type: str, round: int) -> list[RecordDict]:
        if not self._set_up:
            self.node_worker.setup()
            self._set_up = True
        replies = []
        for cid, content in contents:
            self.messages.append(message_type)
            node = Node(self.node_worker, self.store, cid)
            replies.append(over_the_wire(NODE_ANSWERS[message_type](node, over_the_wire(content))))
        return replies

    @override
    def submit(self, loop: FederatedLoop, message: ServerMessage, *, state_version: int, round: int) -> Any:
        content = self.train_content(loop, message, state_version, round)
        (reply,) = self.round_trip([(message.client_id, content)], MessageType.TRAIN, round)
        return reply

    @override
    def collect(self, loop: FederatedLoop, handle: Any) -> ClientUpdate:
        return recorddict_to_update(handle)
