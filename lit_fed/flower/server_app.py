"""A Flower ``ServerApp`` running a lit_fed loop, with the clients' work sent to Flower nodes as Flower messages.

The loop keeps everything server-side: its strategy, screening, aggregation, server steps, evaluation, logging and
checkpoints.

:class:`FlowerRunner` is the loop's :class:`~lit_fed.loop.runner.ClientRunner` on a Flower ``Grid``: the
strategy's ``configure_train`` messages (after the loop callbacks' ``server_message``) go out as ``train`` messages,
the nodes' replies come back as typed ``ClientUpdate`` objects in the same order the in-process loop would produce
them, and aggregation and the server steps run on them unchanged. Personalized evaluation is an ``evaluate``
message per client carrying the model the strategy's ``configure_evaluate`` describes, whose reply is the client's
mergeable metric states, so pooled accuracy is exact; a method's client tasks are ``query.task`` messages (any
payload, through :mod:`lit_fed.client.codec`). Every instruction names the version of the client's node-kept
personal state it uses (the loop stage's ``state_bound``). Before the first round every node is told where the run
starts (``query.begin``), so a fresh run starts without personal state and a resumed one forgets what was written
after its checkpoint — on every node, wherever it runs. In asynchronous mode a dispatched client's train message is
pushed at once (:meth:`FlowerRunner.submit`) and its reply pulled at the client's virtual arrival
(:meth:`FlowerRunner.collect`), so the clients in flight train concurrently on their nodes.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage
from lit_fed.client.tasks import ClientTask
from lit_fed.flower.client_app import BEGIN, TASK
from lit_fed.flower.records import (
    NodeBookkeeping,
    message_to_recorddict,
    payload_to_recorddict,
    recorddict_to_evaluation,
    recorddict_to_payload,
    recorddict_to_update,
)
from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult
from lit_fed.loop.runner import ClientRunner
from lit_fed.metrics.evaluation import ClientEvaluation

LoopFactory = Callable[[Context], FederatedLoop]
"""Builds the server's loop from the ServerApp's Flower context."""


class FlowerRunner(ClientRunner):
    """Sends a round's client work to the Flower nodes hosting the clients and collects their replies.

    Args:
        grid: The ServerApp's Flower grid.
        timeout: Seconds to wait for a round's replies (``None``: no limit); a missing reply is an error.
        connect_timeout: Seconds to wait for every client's node to connect before the first round.
    """

    def __init__(self, grid: Grid, *, timeout: float | None = None, connect_timeout: float = 120.0) -> None:
        self.grid = grid
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.nodes: dict[int, int] = {}
        self._kept_bounds: collections.deque[dict[int, int]] = collections.deque(maxlen=1)

    # -- the versions of node-kept personal state ----------------------------------------------------------------
    @staticmethod
    def bounds(loop: FederatedLoop) -> dict[int, int]:
        """Every client's state bound now (:meth:`~lit_fed.loop.rounds.RoundStage.state_bound`)."""
        return {cid: loop.stage.state_bound(cid) for cid in range(loop.num_clients)}

    def keep_from(self, loop: FederatedLoop, client_id: int) -> int:
        """The lowest state bound a resume from a kept round checkpoint would use for ``client_id``.

        A node keeps ``client_id``'s versions from it on and the newest one below it, and may delete older ones.
        Without a kept checkpoint (none written yet, or checkpointing off) this is the current bound.
        """
        return self._kept_bounds[0][client_id] if self._kept_bounds else loop.stage.state_bound(client_id)

    @override
    def on_checkpoint(self, loop: FederatedLoop) -> None:
        self._kept_bounds.append(self.bounds(loop))

    # -- nodes ---------------------------------------------------------------------------------------------
    def connect(self, num_clients: int) -> dict[int, int]:
        """Maps every client id to the node hosting it (asks each connected node; waits for missing ones)."""
        deadline = time.monotonic() + self.connect_timeout
        known: set[int] = set()
        while True:
            new = [node for node in self.grid.get_node_ids() if node not in known]
            if new:
                queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
                for reply in self._exchange(queries, "query"):
                    client_id = int(reply.content.config_records["lit_fed"]["client_id"])  # type: ignore[arg-type]
                    node = reply.metadata.src_node_id
                    if client_id in self.nodes and self.nodes[client_id] != node:
                        raise ValueError(f"nodes {self.nodes[client_id]} and {node} both host client {client_id}")
                    self.nodes[client_id] = node
                known.update(new)
            missing = sorted(set(range(num_clients)) - set(self.nodes))
            if not missing:
                return self.nodes
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"after {self.connect_timeout:.0f} s no Flower node hosts clients {missing[:10]} "
                    f"({len(known)} nodes connected, {num_clients} clients expected)"
                )
            time.sleep(0.5)

    def _check(self, reply: Message, what: str) -> Message:
        """The reply, unless it is a Flower error reply: then a ``RuntimeError`` naming the client and the reason."""
        if reply.has_error():
            node = reply.metadata.src_node_id
            by_node = {node: cid for cid, node in self.nodes.items()}
            who = f"client {by_node[node]}" if node in by_node else f"node {node}"
            raise RuntimeError(f"Flower {what} on {who} failed: {reply.error.reason}")
        return reply

    def _exchange(self, messages: Sequence[Message], what: str) -> list[Message]:
        replies = [self._check(reply, what) for reply in self.grid.send_and_receive(messages, timeout=self.timeout)]
        by_node = {node: cid for cid, node in self.nodes.items()}
        if len(replies) != len(messages):
            answered = {reply.metadata.src_node_id for reply in replies}
            silent = [by_node.get(m.metadata.dst_node_id) for m in messages if m.metadata.dst_node_id not in answered]
            raise TimeoutError(
                f"Flower {what}: {len(replies)} of {len(messages)} replies within {self.timeout} s; no reply for "
                f"clients {silent[:10]}"
            )
        return replies

    def round_trip(self, contents: Sequence[tuple[int, RecordDict]], message_type: str, round: int) -> list[RecordDict]:
        """Sends each ``(client id, content)`` to the client's node; returns the replies' contents in that order.

        Raises:
            RuntimeError: a node's ClientApp failed (its error reply names the client and the reason).
            TimeoutError: replies missing after ``timeout`` seconds.
        """
        if not self.nodes:
            raise RuntimeError("FlowerRunner: no node is connected; the loop calls begin() before its first round")
        messages = [
            Message(content, dst_node_id=self.nodes[cid], message_type=message_type, group_id=str(round))
            for cid, content in contents
        ]
        by_node = {reply.metadata.src_node_id: reply.content for reply in self._exchange(messages, message_type)}
        return [by_node[message.metadata.dst_node_id] for message in messages]

    # -- the runner ----------------------------------------------------------------------------------------
    @override
    def begin(self, loop: FederatedLoop, start_round: int) -> None:
        """Connects every client's node and tells each which of its client's state versions the run writes anew."""
        if not self.nodes:
            self.connect(loop.num_clients)
        bounds = self.bounds(loop)
        self._kept_bounds = collections.deque(maxlen=max(1, loop.settings.keep_checkpoints))
        if start_round > 0:  # the checkpoint resumed from is the oldest a later resume of this run can rely on
            self._kept_bounds.append(bounds)
        contents = [(cid, RecordDict({"lit_fed": ConfigRecord({"keep_before": bounds[cid]})})) for cid in bounds]
        self.round_trip(contents, BEGIN, start_round)

    def train_content(self, loop: FederatedLoop, message: ServerMessage, state_version: int, round: int) -> RecordDict:
        """A prepared message as a train instruction, with how the node files the client's state."""
        keep_from = self.keep_from(loop, message.client_id)
        return message_to_recorddict(message, NodeBookkeeping(state_version, round, keep_from))

    @override
    def train(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientUpdate]:
        prepared = [loop.prepare_message(message) for message in messages]
        contents = [(m.client_id, self.train_content(loop, m, m.round, loop.round)) for m in prepared]
        replies = self.round_trip(contents, MessageType.TRAIN, loop.round)
        return [loop.receive_update(recorddict_to_update(reply)) for reply in replies]

    @override
    def submit(self, loop: FederatedLoop, message: ServerMessage, *, state_version: int, round: int) -> Any:
        """Pushes the train message to the client's node, which starts training at once; returns the message id."""
        content = self.train_content(loop, message, state_version, round)
        outgoing = Message(
            content, dst_node_id=self.nodes[message.client_id], message_type=MessageType.TRAIN, group_id=str(round)
        )
        (message_id,) = self.grid.push_messages([outgoing])
        return message.client_id, message_id

    @override
    def collect(self, loop: FederatedLoop, handle: Any) -> ClientUpdate:
        """Waits for the pushed message's reply (up to ``timeout`` seconds); returns the received update."""
        client_id, message_id = handle
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            replies = list(self.grid.pull_messages([message_id]))
            if replies:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Flower train: no reply for client {client_id} within {self.timeout} s")
            time.sleep(0.05)
        (reply,) = replies
        return recorddict_to_update(self._check(reply, MessageType.TRAIN).content)

    def _reading(self, loop: FederatedLoop, client_id: int) -> NodeBookkeeping:
        """The bookkeeping of an instruction that reads the client's current personal state."""
        return NodeBookkeeping(loop.stage.state_bound(client_id), loop.round)

    @override
    def evaluate(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientEvaluation]:
        contents = [(m.client_id, message_to_recorddict(m, self._reading(loop, m.client_id))) for m in messages]
        return [recorddict_to_evaluation(r) for r in self.round_trip(contents, MessageType.EVALUATE, loop.round)]

    @override
    def run_tasks(self, loop: FederatedLoop, tasks: Sequence[ClientTask]) -> list[Payload | None]:
        contents = [(t.client_id, payload_to_recorddict(t, self._reading(loop, t.client_id))) for t in tasks]
        return [recorddict_to_payload(r) for r in self.round_trip(contents, TASK, loop.round)]


def seconds(value: object, default: float | None) -> float | None:
    """A timeout from a Flower run-config value: ``None``/``""`` → ``default``; ``<= 0`` → no limit (``None``)."""
    if value is None or value == "":
        return default
    number = float(value)  # type: ignore[arg-type]
    return number if number > 0 else None


def make_server_app(
    factory: LoopFactory,
    *,
    resume_from: str | Path | None = None,
    timeout: float | None = None,
    connect_timeout: float = 120.0,
    on_result: Callable[[FederatedResult], None] | None = None,
) -> ServerApp:
    """A ``ServerApp`` whose main runs ``factory``'s loop with a :class:`FlowerRunner` on the Flower grid.

    Args:
        factory: Builds the loop (client module as the architecture template, datamodule for the global test set,
            strategy, rounds, run directory, loggers, ...) from the ServerApp's context.
        resume_from: A round checkpoint to resume from; the run config's ``resume-from`` value overrides it.
        timeout: Seconds to wait for a round's replies (``None``: no limit); the run config's ``reply-timeout``
            overrides it (``0``: no limit). A node that does not reply in time stops the run with a
            ``TimeoutError`` naming the silent clients; resume from the last round checkpoint.
        connect_timeout: Seconds to wait for every client's node before the first round (run config:
            ``connect-timeout``).
        on_result: Receives the finished run's :class:`FederatedResult` (in-process simulation).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        loop = factory(context)
        config = context.run_config
        loop.runner = FlowerRunner(
            grid,
            timeout=seconds(config.get("reply-timeout"), timeout),
            connect_timeout=seconds(config.get("connect-timeout"), connect_timeout) or connect_timeout,
        )
        resume = config.get("resume-from") or resume_from
        result = loop.run(resume_from=str(resume) if resume else None)
        if on_result is not None:
            on_result(result)

    return app
