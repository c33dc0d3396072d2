"""A Flower ``ClientApp`` that runs a lit_fed client module unchanged.

Each Flower node hosts one lit_fed client (its ``partition-id`` node-config value is the client id). The node
builds its :class:`~lit_fed.loop.federated_loop.FederatedLoop` once per process (client module, datamodule,
per-client Trainer settings, loop callbacks — the same objects the in-process loop uses) and answers
(:data:`NODE_ANSWERS`, one plain function per Flower message type, usable without Flower's transport):

* ``train``: restore the client's personal state and its callbacks' client-side state (see
  :mod:`lit_fed.flower.node_state`), then the loop's own
  :meth:`~lit_fed.loop.federated_loop.FederatedLoop.train_client` — ``receive_global``, one Lightning
  ``Trainer.fit`` on the client's data, ``build_update``, the callbacks' ``client_update`` — save both states,
  reply with the :class:`~lit_fed.client.payloads.ClientUpdate`;
* ``evaluate``: the loop's :meth:`~lit_fed.loop.federated_loop.FederatedLoop.evaluate_clients` on the client's
  test split with its personal state and the personal overlay the server sent (hypernetwork-generated tensors),
  replying with mergeable metric states;
* ``query.feature_statistics``: the loop's
  :meth:`~lit_fed.loop.federated_loop.FederatedLoop.client_feature_statistics` (CCVR's client step);
* ``query.begin``: a run starts: forget the client's state versions the run will write again (all of them for a
  fresh run; those after the checkpoint for a resumed one);
* ``query``: which client this node hosts (without building the loop).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from lit_fed.client.payloads import ClientUpdate, StateDict
from lit_fed.flower.node_state import ContextState, DirectoryState, NodeState
from lit_fed.flower.records import (
    evaluation_to_recorddict,
    read_bookkeeping,
    recorddict_to_message,
    recorddict_to_model_instruction,
    update_to_recorddict,
)
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.state_store import InMemoryStateStore

LoopFactory = Callable[[Context], FederatedLoop]
"""Builds the node's loop from the node's Flower context (called once per process)."""

PARTITION_ID = "partition-id"
STATE_DIR = "state-dir"
FEATURE_STATISTICS = f"{MessageType.QUERY}.feature_statistics"
"""Message type asking a node for its client's per-class feature statistics (CCVR)."""
BEGIN = f"{MessageType.QUERY}.begin"
"""Message type telling a node that a run starts (``lit_fed`` config record: ``keep_before``, the client's first
state version the run will write)."""
CALLBACK_PREFIX = "lit_fed.callback."
"""Key prefix of the loop callbacks' client-side state in a node's saved state (``lit_fed.callback.<index>.<key>``)."""

_NODE_LOOPS: dict[str, FederatedLoop] = {}


@dataclass
class Node:
    """One Flower node's side of a run: the loop that trains its client, its state store, the client it hosts."""

    loop: FederatedLoop
    store: NodeState
    client_id: int

    def check(self, client_id: int) -> None:
        """Refuses a message meant for another client."""
        if client_id != self.client_id:
            raise ValueError(f"message for client {client_id} reached the node hosting client {self.client_id}")

    def restore(self, before_round: int) -> None:
        """Loads the newest saved state of a round ``< before_round`` into the loop.

        The personal state goes into a fresh client-state store, the callbacks' client-side state into them.
        """
        saved = self.store.load(self.client_id, before_round) or {}
        personal = {k: v for k, v in saved.items() if not k.startswith(CALLBACK_PREFIX)}
        self.loop.state_store = InMemoryStateStore()
        if personal:
            self.loop.state_store.put(self.client_id, personal, before_round - 1)
        for index, callback in enumerate(self.loop.callbacks):
            prefix = f"{CALLBACK_PREFIX}{index}."
            kept = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
            callback.load_client_state(self.client_id, kept, before_round)

    def save(self, version: int, keep_from: int | None = None) -> None:
        """Saves the client's personal state and its callbacks' client-side state as ``version``."""
        state: StateDict = dict(self.loop.state_store.get(self.client_id) or {})
        for index, callback in enumerate(self.loop.callbacks):
            state.update({f"{CALLBACK_PREFIX}{index}.{k}": v for k, v in callback.client_state(self.client_id).items()})
        if state:
            self.store.save(self.client_id, version, state, keep_from=keep_from)


def answer_train(node: Node, content: RecordDict) -> RecordDict:
    """Trains the hosted client on a train instruction; replies with its update."""
    message, bookkeeping = recorddict_to_message(content), read_bookkeeping(content)
    node.check(message.client_id)
    node.restore(bookkeeping.state_version)
    node.loop.round = bookkeeping.round  # round-dependent client-side hooks (a compressor's schedule) read it
    update = node.loop.train_client(message)
    node.save(bookkeeping.state_version, bookkeeping.keep_from)
    return update_to_recorddict(update)


def _load_model(node: Node, content: RecordDict) -> tuple[int, StateDict]:
    instruction = recorddict_to_model_instruction(content)
    node.check(instruction.client_id)
    node.restore(instruction.state_before)
    node.loop.global_state, node.loop.round = instruction.global_state, instruction.round
    return instruction.round, instruction.overlay


def answer_evaluate(node: Node, content: RecordDict) -> RecordDict:
    """Evaluates the hosted client's personalized model on its test split; replies with the metric states."""
    _, overlay = _load_model(node, content)
    (evaluation,) = node.loop.evaluate_clients([node.client_id], overlays={node.client_id: overlay})
    return evaluation_to_recorddict(evaluation)


def answer_feature_statistics(node: Node, content: RecordDict) -> RecordDict:
    """The hosted client's per-class feature statistics (an update without statistics if it has no data)."""
    round, overlay = _load_model(node, content)
    updates = node.loop.client_feature_statistics([node.client_id], round, overlays={node.client_id: overlay})
    update = updates[0] if updates else ClientUpdate(client_id=node.client_id, round=round, state={}, num_samples=0)
    return update_to_recorddict(update)


def answer_begin(node: Node, content: RecordDict) -> RecordDict:
    """Forgets the hosted client's saved state versions ``>= keep_before`` (written after where the run starts)."""
    keep_before = int(content.config_records["lit_fed"]["keep_before"])  # type: ignore[arg-type]
    node.store.discard_from(node.client_id, keep_before)
    return RecordDict({"lit_fed": ConfigRecord({"client_id": node.client_id})})


NODE_ANSWERS: dict[str, Callable[[Node, RecordDict], RecordDict]] = {
    MessageType.TRAIN: answer_train,
    MessageType.EVALUATE: answer_evaluate,
    FEATURE_STATISTICS: answer_feature_statistics,
    BEGIN: answer_begin,
}
"""The node's answer to each lit_fed message type: ``(node, content) -> reply content``."""


def node_loop(key: str, factory: LoopFactory, context: Context) -> FederatedLoop:
    """The node's loop, built by ``factory`` and set up on first use in this process, then reused."""
    loop = _NODE_LOOPS.get(key)
    if loop is None:
        loop = factory(context)
        loop.setup()
        _NODE_LOOPS[key] = loop
    return loop


def hosted_client(context: Context) -> int:
    """The client id a node hosts: its ``partition-id`` node-config value."""
    if PARTITION_ID not in context.node_config:
        raise KeyError(
            f"this Flower node has no '{PARTITION_ID}' in its node config: start it with "
            f"--node-config '{PARTITION_ID}=<client id>'"
        )
    return int(context.node_config[PARTITION_ID])


def node_state(context: Context, state_dir: str | os.PathLike[str] | None) -> NodeState:
    """The node's personal-state store: the ``state-dir`` node-config value, else ``state_dir``, else the context."""
    directory = context.node_config.get(STATE_DIR, state_dir)
    return ContextState(context) if directory in (None, "") else DirectoryState(Path(str(directory)))


def make_client_app(factory: LoopFactory, *, state_dir: str | os.PathLike[str] | None = None) -> ClientApp:
    """A ``ClientApp`` training and evaluating the lit_fed client that ``factory``'s loop describes.

    Args:
        factory: Builds the node's :class:`FederatedLoop` (client module, datamodule, per-client Trainer settings,
            ``local_epochs``/``local_steps``, seed, callbacks) from the node's context; called once per process.
            Its strategy, loggers and checkpoints are unused on the node.
        state_dir: A local client-state directory for personal state (the node config's ``state-dir`` overrides
            it); ``None``: Flower's context state.

    Returns:
        The ClientApp, with a handler for every message type in :data:`NODE_ANSWERS` and ``query``.
    """
    key = uuid.uuid4().hex
    app = ClientApp()

    def register(message_type: str, answer: Callable[[Node, RecordDict], RecordDict]) -> None:
        category, _, action = message_type.partition(".")
        decorator = getattr(app, category)(action) if action else getattr(app, category)()

        @decorator
        def handle(msg: Message, context: Context) -> Message:
            node = Node(node_loop(key, factory, context), node_state(context, state_dir), hosted_client(context))
            return Message(answer(node, msg.content), reply_to=msg)

    for message_type, answer in NODE_ANSWERS.items():
        register(message_type, answer)

    @app.query()
    def query(msg: Message, context: Context) -> Message:  # answered without building the loop: connecting is quick
        return Message(RecordDict({"lit_fed": ConfigRecord({"client_id": hosted_client(context)})}), reply_to=msg)

    return app
