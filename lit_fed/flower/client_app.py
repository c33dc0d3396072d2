"""A Flower ``ClientApp`` that runs a lit_fed client module unchanged.

Each Flower node hosts one lit_fed client (its ``partition-id`` node-config value is the client id). The node
builds its :class:`~lit_fed.loop.federated_loop.FederatedLoop` once per process (client module, datamodule,
per-client Trainer settings, loop callbacks — the same objects the in-process loop uses) and answers:

* ``train``: restore the client's personal state (see :mod:`lit_fed.flower.node_state`), then the loop's own
  :meth:`~lit_fed.loop.federated_loop.FederatedLoop.train_client` — ``receive_global``, one Lightning
  ``Trainer.fit`` on the client's data, ``build_update`` — save the new personal state, reply with the
  :class:`~lit_fed.client.payloads.ClientUpdate`;
* ``evaluate``: the loop's :meth:`~lit_fed.loop.federated_loop.FederatedLoop.evaluate_clients` on the client's
  test split with its personal state, replying with mergeable metric states;
* ``query``: which client this node hosts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from lit_fed.flower.node_state import ContextState, DirectoryState, NodeState
from lit_fed.flower.records import (
    evaluation_to_recorddict,
    read_evaluate_instruction,
    recorddict_to_message,
    update_to_recorddict,
)
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.state_store import InMemoryStateStore

LoopFactory = Callable[[Context], FederatedLoop]
"""Builds the node's loop from the node's Flower context (called once per process)."""

PARTITION_ID = "partition-id"
STATE_DIR = "state-dir"

_NODE_LOOPS: dict[str, FederatedLoop] = {}


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


def _check_client(context: Context, client_id: int) -> None:
    hosted = hosted_client(context)
    if hosted != client_id:
        raise ValueError(f"message for client {client_id} reached the node hosting client {hosted}")


def _restore(loop: FederatedLoop, store: NodeState, client_id: int, before_round: int) -> None:
    loop.state_store = InMemoryStateStore()
    personal = store.load(client_id, before_round)
    if personal is not None:
        loop.state_store.put(client_id, personal, before_round - 1)


def make_client_app(factory: LoopFactory, *, state_dir: str | os.PathLike[str] | None = None) -> ClientApp:
    """A ``ClientApp`` training and evaluating the lit_fed client that ``factory``'s loop describes.

    Args:
        factory: Builds the node's :class:`FederatedLoop` (client module, datamodule, per-client Trainer settings,
            ``local_epochs``/``local_steps``, seed, callbacks) from the node's context; called once per process.
            Its strategy, loggers and checkpoints are unused on the node.
        state_dir: A local client-state directory for personal state (the node config's ``state-dir`` overrides
            it); ``None``: Flower's context state.

    Returns:
        The ClientApp, with ``train``, ``evaluate`` and ``query`` handlers.
    """
    key = uuid.uuid4().hex
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        loop = node_loop(key, factory, context)
        message = recorddict_to_message(msg.content)
        _check_client(context, message.client_id)
        store = node_state(context, state_dir)
        _restore(loop, store, message.client_id, message.round)
        update = loop.train_client(message)
        personal = loop.state_store.get(message.client_id)
        if personal is not None:
            store.save(message.client_id, message.round, personal)
        return Message(update_to_recorddict(update), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        loop = node_loop(key, factory, context)
        rnd, client_id, global_state = read_evaluate_instruction(msg.content)
        _check_client(context, client_id)
        _restore(loop, node_state(context, state_dir), client_id, rnd + 1)
        loop.global_state, loop.round = global_state, rnd
        (evaluation,) = loop.evaluate_clients([client_id])
        return Message(evaluation_to_recorddict(evaluation), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"lit_fed": ConfigRecord({"client_id": hosted_client(context)})}), reply_to=msg)

    return app
