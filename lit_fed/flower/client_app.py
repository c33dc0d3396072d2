"""A Flower ``ClientApp`` running a lit_fed client module unchanged, through a :class:`ClientWorker`.

Each Flower node hosts one lit_fed client (its ``partition-id`` node-config value is the client id). The node builds
its worker once per process (client module, data, settings, loop callbacks — the same objects the in-process loop
uses) and answers (:data:`NODE_ANSWERS`, one plain function per Flower message type, usable without Flower's
transport):

* ``train``: restore the client's personal state and its callbacks' client-side state (see
  :mod:`lit_fed.flower.node_state`), :meth:`ClientWorker.fit <lit_fed.client.worker.ClientWorker.fit>`, save both
  states, reply with the :class:`~lit_fed.client.payloads.ClientUpdate`;
* ``evaluate``: :meth:`ClientWorker.evaluate <lit_fed.client.worker.ClientWorker.evaluate>` of the model the message
  describes, with the client's personal state, replying with mergeable metric states;
* ``query.task``: a method's :class:`~lit_fed.client.tasks.ClientTask`, answered by
  :meth:`ClientWorker.run <lit_fed.client.worker.ClientWorker.run>` (any payload, through
  :mod:`lit_fed.client.codec`);
* ``query.begin``: a run starts: forget the client's state versions the run will write again (all of them for a
  fresh run; those after the checkpoint for a resumed one);
* ``query``: which client this node hosts (without building the worker).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from lit_fed.client.payloads import StateDict
from lit_fed.client.worker import ClientWorker
from lit_fed.flower.node_state import ContextState, DirectoryState, NodeState
from lit_fed.flower.records import (
    evaluation_to_recorddict,
    payload_to_recorddict,
    read_bookkeeping,
    read_payload_bookkeeping,
    recorddict_to_message,
    recorddict_to_payload,
    update_to_recorddict,
)
from lit_fed.loop.state_store import InMemoryStateStore

WorkerFactory = Callable[[Context], ClientWorker]
"""Builds the node's worker from the node's Flower context (called once per process)."""

PARTITION_ID = "partition-id"
STATE_DIR = "state-dir"
TASK = f"{MessageType.QUERY}.task"
"""Message type of a method's client task (a payload; the reply is the task's answer)."""
BEGIN = f"{MessageType.QUERY}.begin"
"""Message type telling a node that a run starts (``lit_fed`` config record: ``keep_before``, the client's first
state version the run will write)."""
CALLBACK_PREFIX = "lit_fed.callback."
"""Key prefix of the loop callbacks' client-side state in a node's saved state
(``lit_fed.callback.<state_key>.<key>``)."""

_NODE_WORKERS: dict[str, ClientWorker] = {}


@dataclass
class Node:
    """One Flower node's side of a run: the worker that serves its client, its state store, the client it hosts."""

    worker: ClientWorker
    store: NodeState
    client_id: int

    def check(self, client_id: int) -> None:
        """Refuses a message meant for another client."""
        if client_id != self.client_id:
            raise ValueError(f"message for client {client_id} reached the node hosting client {self.client_id}")

    def restore(self, before: int) -> None:
        """Loads the newest saved state of a version ``< before`` into the worker.

        The personal state goes into a fresh client-state store, the callbacks' client-side state into them.
        """
        saved = self.store.load(self.client_id, before) or {}
        personal = {k: v for k, v in saved.items() if not k.startswith(CALLBACK_PREFIX)}
        self.worker.store = InMemoryStateStore()
        if personal:
            self.worker.store.put(self.client_id, personal, before - 1)
        for callback in self.worker.callbacks:
            prefix = f"{CALLBACK_PREFIX}{callback.state_key}."
            kept = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
            callback.load_client_state(self.client_id, kept, before)

    def save(self, version: int, keep_from: int | None = None) -> None:
        """Saves the client's personal state and its callbacks' client-side state as ``version``."""
        state: StateDict = dict(self.worker.store.get(self.client_id) or {})
        for callback in self.worker.callbacks:
            prefix = f"{CALLBACK_PREFIX}{callback.state_key}."
            state.update({f"{prefix}{k}": v for k, v in callback.client_state(self.client_id).items()})
        if state:
            self.store.save(self.client_id, version, state, keep_from=keep_from)


def answer_train(node: Node, content: RecordDict) -> RecordDict:
    """Trains the hosted client on a train instruction; replies with its update."""
    message, bookkeeping = recorddict_to_message(content), read_bookkeeping(content)
    node.check(message.client_id)
    node.restore(bookkeeping.state_version)
    update = node.worker.fit(message, round=bookkeeping.round)
    node.save(bookkeeping.state_version, bookkeeping.keep_from)
    return update_to_recorddict(update)


def answer_evaluate(node: Node, content: RecordDict) -> RecordDict:
    """Evaluates the hosted client's model on its test split; replies with the metric states."""
    message, bookkeeping = recorddict_to_message(content), read_bookkeeping(content)
    node.check(message.client_id)
    node.restore(bookkeeping.state_version)
    (evaluation,) = node.worker.evaluate([message])
    return evaluation_to_recorddict(evaluation)


def answer_task(node: Node, content: RecordDict) -> RecordDict:
    """Answers a method's client task with the hosted client's worker."""
    task, bookkeeping = recorddict_to_payload(content), read_payload_bookkeeping(content)
    node.check(task.client_id)
    node.restore(bookkeeping.state_version)
    return payload_to_recorddict(node.worker.run(task))


def answer_begin(node: Node, content: RecordDict) -> RecordDict:
    """Forgets the hosted client's saved state versions ``>= keep_before`` (written after where the run starts)."""
    keep_before = int(content.config_records["lit_fed"]["keep_before"])  # type: ignore[arg-type]
    node.store.discard_from(node.client_id, keep_before)
    return RecordDict({"lit_fed": ConfigRecord({"client_id": node.client_id})})


NODE_ANSWERS: dict[str, Callable[[Node, RecordDict], RecordDict]] = {
    MessageType.TRAIN: answer_train,
    MessageType.EVALUATE: answer_evaluate,
    TASK: answer_task,
    BEGIN: answer_begin,
}
"""The node's answer to each lit_fed message type: ``(node, content) -> reply content``."""


def node_worker(key: str, factory: WorkerFactory, context: Context) -> ClientWorker:
    """The node's worker, built by ``factory`` and set up on first use in this process, then reused."""
    worker = _NODE_WORKERS.get(key)
    if worker is None:
        worker = factory(context)
        worker.setup()
        _NODE_WORKERS[key] = worker
    return worker


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


def make_client_app(factory: WorkerFactory, *, state_dir: str | os.PathLike[str] | None = None) -> ClientApp:
    """A ``ClientApp`` training, evaluating and answering tasks for the lit_fed client of ``factory``'s worker.

    Args:
        factory: Builds the node's :class:`~lit_fed.client.worker.ClientWorker` (client module, data, settings,
            loop callbacks) from the node's context; called once per process.
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
            node = Node(node_worker(key, factory, context), node_state(context, state_dir), hosted_client(context))
            return Message(answer(node, msg.content), reply_to=msg)

    for message_type, answer in NODE_ANSWERS.items():
        register(message_type, answer)

    @app.query()
    def query(msg: Message, context: Context) -> Message:  # answered without building the worker: connecting is quick
        return Message(RecordDict({"lit_fed": ConfigRecord({"client_id": hosted_client(context)})}), reply_to=msg)

    return app
