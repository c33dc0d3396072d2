"""The server strategy interface (after Flower's ``configure_train``/``aggregate_train`` split).

A round asks the strategy three things:

1. :meth:`Strategy.configure_train` — what each sampled client receives (a typed ``ServerMessage``);
2. :meth:`Strategy.aggregate_train` — how the clients' ``ClientUpdate`` objects become the next global state;
3. :meth:`Strategy.server_train` — optional server-side training after aggregation (ensemble distillation,
   generator or hypernetwork updates, classifier calibration), given a :class:`ServerContext`.

Strategy state (server-optimizer moments, hypernetworks) round-trips through ``state_dict``/``load_state_dict``
so round checkpoints resume exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.server.aggregation import Aggregator, WeightedMean, sample_weights


@dataclass
class ServerContext:
    """What server-side training may use besides the updates.

    Attributes:
        round: The current round.
        client_template: The client module (for architecture: build a model with the global state).
        datamodule: The federated datamodule (server data, global test set).
        trainer_kwargs: The per-client Trainer settings, for a server-side Lightning fit.
        logger: Callable ``(metrics: dict) -> None``: scalars for this round; the loop adds them to the round's
            metrics (its history, loggers and summary).
    """

    round: int
    client_template: Any = None
    datamodule: Any = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    logger: Any = None


class Strategy(ABC):
    """Base server strategy: configure a round, aggregate its updates, optionally train on the server."""

    def bind(self, loop: Any) -> None:  # noqa: B027
        """Called at the end of the loop's ``setup()``, before a checkpoint is restored or a round runs.

        A strategy whose server state depends on the run (a hypernetwork sized by the client's generated tensors
        and the number of clients) builds it here, so that training, resuming and evaluating a saved checkpoint
        (``lit-fed validate/test --ckpt_path``) all see the same server. Must be idempotent. Default: nothing.

        Args:
            loop: The :class:`~lit_fed.loop.federated_loop.FederatedLoop` (its ``client``, ``datamodule``,
                ``num_clients``, ``seed`` and ``state_store`` are set).
        """

    def initialize(self, global_state: StateDict) -> None:  # noqa: B027
        """Called once with the initial global state, before round 0. Default: nothing."""

    def personal_overlay(self, client_id: int) -> StateDict:
        """Tensors the server contributes to ``client_id``'s personalized model, over its stored personal state.

        The loop evaluates client ``c`` (and CCVR embeds its data) with ``global state + stored personal state +
        personal_overlay(c)``. A hypernetwork strategy returns ``h(v_c; φ)`` for the current ``φ``, so every client,
        trained or not, is evaluated with its generated weights. Under Flower the overlay travels with the evaluate
        message, since the personal state lives on the node. Default: nothing (``{}``).
        """
        return {}

    def configure_train(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        """One message per sampled client. Default: every client receives the global state."""
        return [ServerMessage(round=round, client_id=cid, state=global_state) for cid in client_ids]

    @abstractmethod
    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """Returns the next global state from the round's (validated) updates."""

    def server_train(
        self, global_state: StateDict, updates: Sequence[ClientUpdate], context: ServerContext
    ) -> StateDict:
        """Server-side training after aggregation (FedDF, FedGen, CCVR, hypernetworks). Default: identity."""
        return global_state

    def state_dict(self) -> dict[str, Any]:
        """Strategy state to checkpoint. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restores :meth:`state_dict`."""


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017, Alg. 1): ``w ← Σ_k p_k w_k``, ``p_k = n_k / Σ_S n_j``.

    Args:
        aggregator: The rule combining client states; a robust rule may replace the weighted mean.
        weighted: Weight by sample count (``p_k``); if false, every client weighs the same.
    """

    def __init__(self, aggregator: Aggregator | None = None, weighted: bool = True) -> None:
        self.aggregator = aggregator if aggregator is not None else WeightedMean()
        self.weighted = weighted

    def weights(self, updates: Sequence[ClientUpdate]) -> Any:
        """Normalized aggregation weights of the updates."""
        return sample_weights([u.num_samples if self.weighted else 1 for u in updates])

    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """Sample-weighted aggregate of the clients' states; keys absent from updates keep their value."""
        merged = self.aggregator([u.state for u in updates], self.weights(updates), reference=global_state)
        return {**global_state, **merged}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(aggregator={self.aggregator!r}, weighted={self.weighted})"
