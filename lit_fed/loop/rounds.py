"""How a round's client updates reach the global state: the loop's collect-and-apply stage.

:class:`SynchronousRounds` (the default): sample the round's clients → the strategy configures their messages →
the runner trains them → screen the updates → the strategy aggregates them. The asynchronous stage
(:class:`~lit_fed.loop.asynchronous.AsynchronousRounds`) replaces exactly this part, so everything after it in a
round — server steps, evaluation, callbacks, logging, checkpoints — is the same code in both modes.

A stage marks its server part (configuring, screening, aggregating) with ``loop.timer.measure("aggregate")``;
the rest of :meth:`RoundStage.collect` counts as the clients' training time (:mod:`lit_fed.loop.timing`).

A stage also says which versions of a client's personal state count (:meth:`RoundStage.state_bound`), which a
backend that keeps personal state where the clients live (Flower nodes) uses to file and pick it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, StateDict
from lit_fed.server.sampling import ClientSampler
from lit_fed.server.validation import ExplosionScreen, screen_updates

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult

log = logging.getLogger("lit_fed")


@dataclass
class CollectedRound:
    """What a round's collect-and-apply stage produced.

    Attributes:
        global_state: The global state after the accepted updates were applied (before server steps).
        accepted: The updates that passed screening, as the server steps see them.
        metrics: The stage's round metrics (``clients``, ``dropped``, ``rejected``, ...).
    """

    global_state: StateDict
    accepted: list[ClientUpdate]
    metrics: dict[str, Any] = field(default_factory=dict)


class RoundStage(ABC):
    """The collect-and-apply stage of a round.

    Its :meth:`screen` checks arriving updates: structure (an error), non-finite values and exploded changes
    (rejected and counted).
    """

    explosions: ExplosionScreen | None = None

    def setup(self, loop: FederatedLoop) -> None:
        """Called by the loop's ``setup()`` (the data is built, ``loop.num_clients`` is set)."""
        self.explosions = ExplosionScreen(loop.settings.max_update_ratio)

    def screen(self, updates: list[ClientUpdate], global_state: StateDict) -> tuple[list[ClientUpdate], int, int]:
        """The accepted updates, and how many were rejected as non-finite and as exploded (each logged)."""
        accepted, nonfinite = screen_updates(updates, global_state)
        exploded: list[Any] = []
        if self.explosions is not None:
            accepted, exploded = self.explosions.screen(accepted, global_state)
        for _, reason in [*nonfinite, *exploded]:
            log.warning(reason)
        return accepted, len(nonfinite), len(exploded)

    def screening_state(self) -> dict[str, Any]:
        """The screen's remembered changes (part of :meth:`state_dict`)."""
        return {} if self.explosions is None else {"explosions": self.explosions.state_dict()}

    def load_screening_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`screening_state`."""
        if self.explosions is not None:
            self.explosions.load_state_dict(state.get("explosions", {}))

    @abstractmethod
    def collect(self, loop: FederatedLoop, round: int) -> CollectedRound:
        """Runs the clients of ``round`` and applies their updates to ``loop.global_state``."""

    @abstractmethod
    def state_bound(self, client_id: int) -> int:
        """The versions of ``client_id``'s personal state that count now are those below this."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the round. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any], completed_round: int) -> None:  # noqa: B027
        """Restores :meth:`state_dict` from the checkpoint written after ``completed_round``."""

    def finish(self, loop: FederatedLoop, result: FederatedResult) -> None:  # noqa: B027
        """After the last round: may add files to ``result.artifacts``."""


class SynchronousRounds(RoundStage):
    """Every round, a seeded sample of clients trains from the same global state; their updates are aggregated.

    A client's personal state is versioned by the round it trained in.
    """

    def __init__(self) -> None:
        self.trained_rounds = 0
        self.sampler: ClientSampler | None = None

    @override
    def setup(self, loop: FederatedLoop) -> None:
        super().setup(loop)
        settings = loop.settings
        self.sampler = ClientSampler(loop.num_clients, settings.client_fraction, settings.seed, settings.client_dropout)
        self.trained_rounds = 0

    @override
    def collect(self, loop: FederatedLoop, round: int) -> CollectedRound:
        assert self.sampler is not None, "SynchronousRounds.setup() was not called"
        participants = self.sampler.sample(round)
        with loop.timer.measure("aggregate"):
            messages = loop.strategy.configure_train(round, participants.reporting, loop.global_state)
        for cid in participants.dropped:
            log.info("round %d: client %d dropped out (did not report)", round, cid)
        updates = loop.runner.train(loop, messages)
        self.trained_rounds = round + 1
        with loop.timer.measure("aggregate"):
            accepted, nonfinite, exploded = self.screen(updates, loop.global_state)
            state = loop.global_state
            if accepted:
                state = loop.strategy.aggregate_train(round, accepted, state)
            else:
                log.warning("round %d: no client update was accepted; the global state is unchanged", round)
        metrics = {
            "clients": len(participants.sampled),
            "dropped": len(participants.dropped),
            "rejected": nonfinite + exploded,
            "rejected_exploded": exploded,
        }
        return CollectedRound(state, accepted, metrics)

    @override
    def state_bound(self, client_id: int) -> int:
        return self.trained_rounds

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.screening_state()

    @override
    def load_state_dict(self, state: dict[str, Any], completed_round: int) -> None:
        self.trained_rounds = completed_round + 1
        self.load_screening_state(state)
