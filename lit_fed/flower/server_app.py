"""A Flower ``ServerApp`` running a lit_fed loop, with the clients' work sent to Flower nodes as Flower messages.

The loop keeps everything server-side: its strategy, screening, server-side training, evaluation, logging and
checkpoints.

:class:`FlowerRunner` is the loop's :class:`~lit_fed.loop.runner.ClientRunner` on a Flower ``Grid``: the
strategy's ``configure_train`` messages (after the loop callbacks' ``server_message``) go out as ``train`` messages,
the nodes' replies come back as typed ``ClientUpdate`` objects in the same order the in-process loop would produce
them, and ``aggregate_train``/``server_train`` run on them unchanged. Personalized evaluation is an ``evaluate``
message per client, whose reply is the client's mergeable metric states, so pooled accuracy is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.flower.records import (
    evaluate_instruction,
    message_to_recorddict,
    recorddict_to_evaluation,
    recorddict_to_update,
)
from lit_fed.loop.async_loop import AsyncFederatedLoop
from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult
from lit_fed.loop.runner import ClientEvaluation, ClientRunner
from lit_fed.server.strategy import Strategy

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

    def _exchange(self, messages: Sequence[Message], what: str) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        by_node = {node: cid for cid, node in self.nodes.items()}
        for reply in replies:
            if reply.has_error():
                node = reply.metadata.src_node_id
                who = f"client {by_node[node]}" if node in by_node else f"node {node}"
                raise RuntimeError(f"Flower {what} on {who} failed: {reply.error.reason}")
        if len(replies) != len(messages):
            raise TimeoutError(f"Flower {what}: {len(replies)} of {len(messages)} replies within {self.timeout} s")
        return replies

    def _send(self, contents: Iterable[tuple[int, RecordDict]], message_type: str, round: int) -> list[Message]:
        messages = [
            Message(content, dst_node_id=self.nodes[cid], message_type=message_type, group_id=str(round))
            for cid, content in contents
        ]
        return self._exchange(messages, message_type)

    # -- the runner ----------------------------------------------------------------------------------------
    @override
    def train(self, loop: FederatedLoop, messages: Sequence[ServerMessage]) -> list[ClientUpdate]:
        if not self.nodes:
            self.connect(loop.num_clients)
        prepared = [loop.prepare_message(message) for message in messages]
        replies = self._send(((m.client_id, message_to_recorddict(m)) for m in prepared), MessageType.TRAIN, loop.round)
        updates = {update.client_id: update for update in (recorddict_to_update(r.content) for r in replies)}
        return [loop.receive_update(updates[message.client_id]) for message in prepared]

    @override
    def evaluate(self, loop: FederatedLoop, client_ids: Sequence[int]) -> list[ClientEvaluation]:
        if not self.nodes:
            self.connect(loop.num_clients)
        contents = ((cid, evaluate_instruction(loop.round, cid, loop.global_state)) for cid in client_ids)
        replies = self._send(contents, MessageType.EVALUATE, loop.round)
        evaluations = {e.client_id: e for e in (recorddict_to_evaluation(r.content) for r in replies)}
        return [evaluations[cid] for cid in client_ids]


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
        timeout: Seconds to wait for a round's replies (``None``: no limit).
        connect_timeout: Seconds to wait for every client's node before the first round.
        on_result: Receives the finished run's :class:`FederatedResult` (in-process simulation).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        loop = factory(context)
        if isinstance(loop, AsyncFederatedLoop):
            raise ValueError("the Flower backends run synchronous rounds; asynchronous mode is sequential-only")
        if type(loop.strategy).bind is not Strategy.bind:
            raise ValueError(
                f"{type(loop.strategy).__name__} binds to the loop's client-state store (hypernetwork methods), which "
                "lives on the Flower nodes; run it with the sequential backend"
            )
        loop.runner = FlowerRunner(grid, timeout=timeout, connect_timeout=connect_timeout)
        resume = context.run_config.get("resume-from") or resume_from
        result = loop.run(resume_from=str(resume) if resume else None)
        if on_result is not None:
            on_result(result)

    return app
