"""The server strategy interface: configure, aggregate, then an ordered list of server steps.

A round asks the strategy (after Flower's ``configure_*``/``aggregate_*`` pairs):

1. :meth:`Strategy.configure_train` — what each sampled client receives (a typed ``ServerMessage``);
2. :meth:`Strategy.aggregate_train` — how the clients' ``ClientUpdate`` objects become the next global state;
3. its :meth:`Strategy.server_steps`, in order — server-side computations after aggregation
   (:class:`ServerStep`: distillation into the global model, training a server-side model, classifier
   calibration, ...), each given the updates and a :class:`ServerContext`;
4. :meth:`Strategy.configure_evaluate` — the model each client is evaluated with.

A run's pipeline is the strategy's own steps followed by the run's extra steps (``trainer.server_steps`` in a
config), so steps of different methods compose. Strategy state (server-optimizer moments, server-side models) and each
step's state round-trip through ``state_dict``/``load_state_dict`` so round checkpoints resume exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage, StateDict

if TYPE_CHECKING:
    from lit_fed.client.tasks import ClientTask


def _no_tasks(tasks: Sequence[ClientTask]) -> list[Payload | None]:
    raise RuntimeError("this ServerContext has no clients to send tasks to (it was built outside a federated loop)")


def _no_evaluation(global_state: StateDict) -> dict[str, float]:
    raise RuntimeError("this ServerContext cannot evaluate (it was built outside a federated loop)")


@dataclass
class ServerContext:
    """What the strategy and its server steps may use besides the updates.

    Attributes:
        round: The current round (0-based).
        client_template: The server's client module (for the architecture: build a model with a state).
        datamodule: The federated data (server-side data, the global test set, the seed).
        num_clients: Number of registered clients.
        seed: The run seed.
        rounds: The run's number of rounds.
        trainer_kwargs: The per-client Trainer settings, for a server-side Lightning fit.
        eval_device: Where server-side models run.
        initial_personal: The client module's initial personal state (the personal part of the global model).
        log: ``log(metrics)``: scalars the loop adds to this round's metrics (history, loggers, summary).
        run_tasks: ``run_tasks(tasks) -> answers``: sends method-defined
            :class:`~lit_fed.client.tasks.ClientTask` objects to their clients (wherever they live) and returns
            their answers in order; the answers' bytes are counted as uploaded.
        evaluate: ``evaluate(global_state) -> metrics``: the round's evaluation (global and personalized
            accuracy) of a candidate global state.
        model_messages: ``model_messages(client_ids, global_state) -> messages``: what describes each client's
            model for ``global_state`` (the strategy's ``configure_evaluate``), e.g. for a task that embeds the
            client's data with its model.
    """

    round: int = 0
    client_template: Any = None
    datamodule: Any = None
    num_clients: int = 0
    seed: int = 0
    rounds: int = 1
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initial_personal: StateDict = field(default_factory=dict)
    log: Callable[[dict[str, float]], None] = lambda metrics: None  # noqa: E731
    run_tasks: Callable[[Sequence[ClientTask]], list[Payload | None]] = _no_tasks
    evaluate: Callable[[StateDict], dict[str, float]] = _no_evaluation
    model_messages: Callable[[Sequence[int], StateDict], list[ServerMessage]] = lambda ids, state: [
        ServerMessage(round=0, client_id=int(c), state=state) for c in ids
    ]


class ServerStep(ABC):
    """One server-side computation after aggregation, composable with any strategy and any other step.

    A step maps the aggregated global state (and the round's accepted updates) to a new global state, and may
    report metrics (``context.log``) or ask clients for more (``context.run_tasks``). Steps run in order every
    round; stateful steps checkpoint under :attr:`state_key`.
    """

    @property
    def state_key(self) -> str:
        """The key of this step's state in round checkpoints (unique among a run's steps)."""
        return type(self).__qualname__

    def bind(self, context: ServerContext) -> None:  # noqa: B027
        """Called once when the run is set up, before a checkpoint is restored or a round runs. Default: nothing."""

    @abstractmethod
    def run(self, global_state: StateDict, updates: Sequence[ClientUpdate], context: ServerContext) -> StateDict:
        """The next global state, from the aggregated one and the round's accepted updates."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the round. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restores :meth:`state_dict`."""


class Strategy(ABC):
    """Base server strategy: configure a round, aggregate its updates, then run the server steps.

    Args:
        steps: Server steps run after aggregation, in order, after the strategy's own.

    Attributes:
        supports_asynchronous: Whether :meth:`staleness_update` defines this strategy's rule for one stale update
            (asynchronous mode refuses strategies that do not declare one).
    """

    supports_asynchronous: ClassVar[bool] = False
    steps: Sequence[ServerStep] = ()

    def __init__(self, steps: Sequence[ServerStep] = ()) -> None:
        self.steps = list(steps)

    def bind(self, context: ServerContext) -> None:  # noqa: B027
        """Called once when the run is set up, before a checkpoint is restored or a round runs.

        A strategy whose server state depends on the run (sized by the client module and the number of clients)
        builds it here, so that training, resuming and evaluating a saved checkpoint all see the same server.
        Must be idempotent. Default: nothing.
        """

    def initialize(self, global_state: StateDict) -> None:  # noqa: B027
        """Called once with the initial global state, before the first round. Default: nothing."""

    def configure_train(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        """One message per sampled client. Default: every client receives the global state."""
        return [ServerMessage(round=round, client_id=cid, state=global_state) for cid in client_ids]

    @abstractmethod
    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """Returns the next global state from the round's (validated) updates."""

    def server_steps(self) -> list[ServerStep]:
        """The steps run after :meth:`aggregate_train`: the strategy's own ones, then ``steps``."""
        return list(self.steps)

    def configure_evaluate(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        """One message per client describing the model it is evaluated with. Default: the global state."""
        return [ServerMessage(round=round, client_id=cid, state=global_state) for cid in client_ids]

    def staleness_update(
        self, global_state: StateDict, update: ClientUpdate, start_state: StateDict, staleness_weight: float
    ) -> StateDict:
        """The next global state after one (possibly stale) update in asynchronous mode.

        Args:
            global_state: The current global state ``x``.
            update: The arriving client's update (``x_k``).
            start_state: ``x_start``, the global state the client started from.
            staleness_weight: ``s(τ)``, e.g. ``1/(1+τ)``.

        Raises:
            TypeError: the strategy declares no asynchronous rule (:attr:`supports_asynchronous` is false).
        """
        raise TypeError(
            f"asynchronous mode: {type(self).__name__} declares no rule for one stale update (its aggregation is "
            "defined per round); use a strategy that declares supports_asynchronous"
        )

    def state_dict(self) -> dict[str, Any]:
        """Strategy state to checkpoint. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restores :meth:`state_dict`."""
