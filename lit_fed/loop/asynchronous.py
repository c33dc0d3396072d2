"""Asynchronous federated training: clients finish at different times and their updates apply as they arrive.

:class:`AsynchronousRounds` is the loop's collect-and-apply stage in asynchronous mode (``trainer.asynchronous``;
:class:`~lit_fed.loop.rounds.SynchronousRounds` otherwise): everything after it in a round — server steps,
evaluation, callbacks, logging, checkpoints — is the synchronous code. It simulates ``concurrency`` clients
training at once (an event-driven simulation on a virtual clock):

1. A client is *dispatched* from the global model version current at its start (``x_start``, version ``v_s``)
   with a latency drawn from a :class:`Latency` distribution on the stream ``(seed, "latency", client, v_s)``.
   Clients are sampled uniformly among those not in flight, on the stream ``(seed, "async_sampling", j)`` for the
   ``j``-th dispatch.
2. Events are processed in order of arrival time (ties: dispatch order). The arriving client trains from
   ``x_start`` (its personal state cannot have changed meanwhile: a client is never in flight twice), and its
   update is applied alone by the strategy's declared rule
   (:meth:`~lit_fed.server.strategy.Strategy.staleness_update`; FedAvg: ``x ← x + s(τ) · (x_k − x_start)``), with
   ``τ`` the number of server updates applied since its start and the staleness discount
   ``s(τ) = (1 + τ)^(−a)``, ``a = 1`` by default: ``s(τ) = 1/(1+τ)`` (the polynomial family of FedAsync, Xie et
   al. 2019, "Asynchronous Federated Optimization", §5.2).
3. The finished client's slot is refilled at once by a newly sampled client starting from the current model.

A *round* is ``concurrency`` arrivals (= applied updates, unless some are rejected as non-finite), so evaluation,
logging and checkpoints keep their per-round meaning. Each round reports ``staleness_mean``, ``staleness_max``
and its ``staleness_histogram`` (``{τ: count}``, kept in the history); the run's cumulative histogram is written to
``<run_dir>/staleness.csv``. In this mode a message's (and its update's) ``round`` is the model version the client
started from, so its data order and fit seed come from ``(seed, "train"/"fit", version, client)``.

Resume is exact: the in-flight clients (their server message = start model, start version, arrival time), the
version counter, the virtual clock and the dispatch counter are part of every round checkpoint.

The strategy's aggregator is not used here (each update arrives alone); Byzantine-robust aggregation is a
synchronous-mode feature. Clients still in flight when the run ends were dispatched (their downloads are
counted in the last round) but never report.

Where clients train: each dispatch is handed to the loop's runner (:meth:`~lit_fed.loop.runner.ClientRunner.submit`)
and its update taken at arrival (:meth:`~lit_fed.loop.runner.ClientRunner.collect`). In this process the client
trains at arrival; under Flower it starts training on its node at dispatch, so the in-flight clients really train
at the same time — with the same result, since a client's update depends only on its message and its own state.
Client-side hooks see the round the client was dispatched in.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.loop.rounds import CollectedRound, RoundStage
from lit_fed.server.aggregation import WeightedMean
from lit_fed.utils.seeding import numpy_rng

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult

log = logging.getLogger("lit_fed")


# -- latency distributions -----------------------------------------------------------------------------
class Latency(ABC):
    """How long a client takes to train and report, in virtual time units."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, client_id: int) -> float:
        """One latency (> 0) of ``client_id``, drawn from ``rng``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _positive(name: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value}")


class Constant(Latency):
    """Every client always takes ``value`` (no latency variation)."""

    def __init__(self, value: float = 1.0) -> None:
        _positive("Constant", value=value)
        self.value = value

    @override
    def sample(self, rng: np.random.Generator, client_id: int) -> float:
        return float(self.value)


class Exponential(Latency):
    """Exponential latencies with the given ``mean``."""

    def __init__(self, mean: float = 1.0) -> None:
        _positive("Exponential", mean=mean)
        self.mean = mean

    @override
    def sample(self, rng: np.random.Generator, client_id: int) -> float:
        return float(rng.exponential(self.mean))


class LogNormal(Latency):
    """``exp(N(mu, sigma²))`` latencies (heavy-tailed stragglers)."""

    def __init__(self, mu: float = 0.0, sigma: float = 1.0) -> None:
        _positive("LogNormal", sigma=sigma)
        self.mu = mu
        self.sigma = sigma

    @override
    def sample(self, rng: np.random.Generator, client_id: int) -> float:
        return float(rng.lognormal(self.mu, self.sigma))


class Uniform(Latency):
    """Latencies uniform in ``[low, high)``."""

    def __init__(self, low: float = 0.5, high: float = 1.5) -> None:
        _positive("Uniform", low=low)
        if not high > low:
            raise ValueError(f"Uniform: need high > low, got low={low}, high={high}")
        self.low = low
        self.high = high

    @override
    def sample(self, rng: np.random.Generator, client_id: int) -> float:
        return float(rng.uniform(self.low, self.high))


class ClientSpeeds(Latency):
    """A fixed latency per client (heterogeneous devices, no randomness): client ``k`` takes ``latencies[k]``."""

    def __init__(self, latencies: Sequence[float]) -> None:
        self.latencies = [float(v) for v in latencies]
        if not self.latencies:
            raise ValueError("ClientSpeeds: give one latency per client")
        _positive("ClientSpeeds", **{f"latencies[{i}]": v for i, v in enumerate(self.latencies)})

    @override
    def sample(self, rng: np.random.Generator, client_id: int) -> float:
        if not 0 <= client_id < len(self.latencies):
            raise ValueError(f"ClientSpeeds: no latency for client {client_id} ({len(self.latencies)} given)")
        return self.latencies[client_id]


# -- configuration ---------------------------------------------------------------------------------------
class Asynchronous:
    """Settings of the asynchronous mode (``FederatedTrainer(asynchronous=...)``, YAML ``trainer.asynchronous``).

    Args:
        concurrency: Clients training at once (≤ the number of clients); also the number of arrivals per round.
        latency: Per-dispatch latency distribution (``Exponential(1.0)`` by default).
        staleness_exponent: ``a`` in ``s(τ) = (1 + τ)^(−a)``; 1 gives ``1/(1+τ)`` [design], 0 no discount.
    """

    def __init__(self, concurrency: int = 4, latency: Latency | None = None, staleness_exponent: float = 1.0) -> None:
        if concurrency < 1:
            raise ValueError(f"Asynchronous: concurrency must be >= 1, got {concurrency}")
        if staleness_exponent < 0:
            raise ValueError(f"Asynchronous: staleness_exponent must be >= 0, got {staleness_exponent}")
        self.concurrency = concurrency
        self.latency = latency if latency is not None else Exponential(1.0)
        self.staleness_exponent = staleness_exponent

    def staleness_weight(self, staleness: int) -> float:
        """``s(τ) = (1 + τ)^(−a)``."""
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if self.staleness_exponent == 1.0:
            return 1.0 / (1.0 + staleness)
        return float((1.0 + staleness) ** (-self.staleness_exponent))

    def __repr__(self) -> str:
        return (
            f"Asynchronous(concurrency={self.concurrency}, latency={self.latency!r}, "
            f"staleness_exponent={self.staleness_exponent})"
        )


@dataclass
class InFlight:
    """A dispatched client that has not reported yet.

    Attributes:
        client_id: The client.
        start_version: The global model version it started from.
        start_time: Virtual time of its dispatch.
        arrival_time: Virtual time its update arrives.
        seq: Dispatch index (breaks arrival-time ties; the version of the personal state a Flower node keeps).
        message: What it received (its ``state`` is ``x_start``).
        dispatch_round: The round it was dispatched in (what its client-side hooks see as ``loop.round``).
        handle: The runner's handle of its training (not checkpointed: a resumed run submits it again).
    """

    client_id: int
    start_version: int
    start_time: float
    arrival_time: float
    seq: int
    message: ServerMessage
    dispatch_round: int = 0
    handle: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only, so checkpoints load with ``torch.load(weights_only=True)``."""
        message = self.message
        return {
            "client_id": self.client_id,
            "start_version": self.start_version,
            "start_time": self.start_time,
            "arrival_time": self.arrival_time,
            "seq": self.seq,
            "dispatch_round": self.dispatch_round,
            "message": {
                "round": message.round,
                "client_id": message.client_id,
                "state": message.state,
                "extras": message.extras,
                "config": message.config,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InFlight:
        """Inverse of :meth:`to_dict`."""
        return cls(
            client_id=int(data["client_id"]),
            start_version=int(data["start_version"]),
            start_time=float(data["start_time"]),
            arrival_time=float(data["arrival_time"]),
            seq=int(data["seq"]),
            message=ServerMessage(**data["message"]),
            dispatch_round=int(data.get("dispatch_round", 0)),
        )


class AsynchronousRounds(RoundStage):
    """The asynchronous collect-and-apply stage (see the module docstring).

    Args:
        asynchronous: Concurrency, latency distribution and staleness discount.

    Raises:
        ValueError: at setup, ``client_fraction`` other than 1, dropout, or more concurrency than clients.
        TypeError: at setup, a strategy that declares no asynchronous rule.
    """

    def __init__(self, asynchronous: Asynchronous) -> None:
        self.asynchronous = asynchronous
        self._reset()

    def _reset(self) -> None:
        self.version = 0
        self.clock = 0.0
        self.dispatched = 0
        self.in_flight: list[InFlight] = []
        self.staleness_counts: dict[int, int] = {}
        self.dispatched_at_version: set[int] = set()  # clients started from the current version

    @override
    def setup(self, loop: FederatedLoop) -> None:
        super().setup(loop)
        settings, strategy = loop.settings, loop.strategy
        if settings.client_fraction != 1.0:
            raise ValueError(
                f"asynchronous mode: client_fraction must be 1.0 (got {settings.client_fraction}); "
                "asynchronous.concurrency sets how many clients train at once"
            )
        if settings.client_dropout != 0.0:
            raise ValueError(
                f"asynchronous mode does not simulate dropout; client_dropout is {settings.client_dropout}"
            )
        if not strategy.supports_asynchronous:
            raise TypeError(
                f"asynchronous mode: {type(strategy).__name__} declares no rule for one stale update "
                "(supports_asynchronous is false: its aggregation is defined per round)"
            )
        aggregator = getattr(strategy, "aggregator", None)
        if aggregator is not None and not isinstance(aggregator, WeightedMean):
            log.warning(
                "asynchronous mode applies every update alone as it arrives: the aggregator %r is not used", aggregator
            )
        if self.asynchronous.concurrency > loop.num_clients:
            raise ValueError(
                f"asynchronous mode: concurrency {self.asynchronous.concurrency} exceeds the {loop.num_clients} clients"
            )
        self._reset()

    # -- checkpoints -----------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "clock": self.clock,
            "dispatched": self.dispatched,
            "in_flight": [job.to_dict() for job in self.in_flight],
            "staleness_counts": dict(self.staleness_counts),
            "dispatched_at_version": sorted(self.dispatched_at_version),
            "concurrency": self.asynchronous.concurrency,
            **self.screening_state(),
        }

    @override
    def load_state_dict(self, state: dict[str, Any], completed_round: int) -> None:
        if int(state.get("concurrency", self.asynchronous.concurrency)) != self.asynchronous.concurrency:
            raise ValueError(
                f"the checkpoint was written with asynchronous concurrency {state['concurrency']}, this run has "
                f"{self.asynchronous.concurrency}"
            )
        self.version = int(state["version"])
        self.clock = float(state["clock"])
        self.dispatched = int(state["dispatched"])
        self.in_flight = [InFlight.from_dict(job) for job in state["in_flight"]]
        self.staleness_counts = {int(k): int(v) for k, v in state["staleness_counts"].items()}
        self.dispatched_at_version = {int(c) for c in state["dispatched_at_version"]}
        self.load_screening_state(state)

    # -- the event queue -----------------------------------------------------------------------------------
    def dispatch(self, loop: FederatedLoop) -> InFlight:
        """Starts a newly sampled idle client from the current model at the current virtual time.

        A client already started from the current version (possible only after a rejected update) is not started
        from it again while another idle client is available, so ``(client, version)`` — the key of its data and
        fit streams and of its stored personal state — stays unique.
        """
        seed = loop.settings.seed
        busy = {job.client_id for job in self.in_flight}
        idle = [c for c in range(loop.num_clients) if c not in busy]
        fresh = [c for c in idle if c not in self.dispatched_at_version]
        idle = fresh or idle
        rng = numpy_rng(seed, "async_sampling", self.dispatched)
        cid = idle[int(rng.integers(len(idle)))]
        (message,) = loop.strategy.configure_train(self.version, [cid], loop.global_state)
        latency = self.asynchronous.latency.sample(numpy_rng(seed, "latency", cid, self.version), cid)
        if not (latency > 0 and math.isfinite(latency)):
            raise ValueError(f"latency of client {cid} at version {self.version} must be finite and > 0, got {latency}")
        message = loop.prepare_message(message)
        job = InFlight(cid, self.version, self.clock, self.clock + latency, self.dispatched, message, loop.round)
        self.dispatched += 1
        self.dispatched_at_version.add(cid)
        self.in_flight.append(job)
        self.submit(loop, job)
        return job

    def submit(self, loop: FederatedLoop, job: InFlight) -> None:
        """Hands the job to the runner (on Flower, the client starts training now, concurrently with the others)."""
        job.handle = loop.runner.submit(loop, job.message, state_version=job.seq, round=job.dispatch_round)

    @override
    def state_bound(self, client_id: int) -> int:
        """A client in flight counts its versions before its dispatch; any other client, every version so far."""
        for job in self.in_flight:
            if job.client_id == client_id:
                return job.seq
        return self.dispatched

    def _fill(self, loop: FederatedLoop) -> None:
        while len(self.in_flight) < self.asynchronous.concurrency:
            self.dispatch(loop)

    def next_arrival(self) -> InFlight:
        """Removes and returns the in-flight client that reports first."""
        job = min(self.in_flight, key=lambda j: (j.arrival_time, j.seq))
        self.in_flight.remove(job)
        return job

    def apply_update(self, loop: FederatedLoop, job: InFlight, update: ClientUpdate) -> int:
        """Applies one accepted update with its staleness discount; returns its staleness τ."""
        staleness = self.version - job.start_version
        weight = self.asynchronous.staleness_weight(staleness)
        loop.global_state = loop.strategy.staleness_update(loop.global_state, update, job.message.state, weight)
        self.version += 1
        self.dispatched_at_version = set()
        self.staleness_counts[staleness] = self.staleness_counts.get(staleness, 0) + 1
        return staleness

    # -- one round = `concurrency` arrivals -----------------------------------------------------------------
    @override
    def collect(self, loop: FederatedLoop, round: int) -> CollectedRound:
        for job in self.in_flight:
            if job.handle is None:  # restored from a checkpoint: submitted again
                self.submit(loop, job)
        self._fill(loop)
        accepted: list[ClientUpdate] = []
        staleness: list[int] = []
        arrivals = rejected = exploded = 0
        while arrivals < self.asynchronous.concurrency:
            job = self.next_arrival()
            self.clock = job.arrival_time
            update = loop.receive_update(loop.runner.collect(loop, job.handle))
            with loop.timer.measure("aggregate"):
                ok, nonfinite, exploded_now = self.screen([update], job.message.state)
                rejected += nonfinite + exploded_now
                exploded += exploded_now
                if ok:
                    staleness.append(self.apply_update(loop, job, update))
                    accepted.append(update)
            arrivals += 1
            self._fill(loop)  # the freed slot restarts from the current model
        histogram: dict[int, int] = {}
        for tau in staleness:
            histogram[tau] = histogram.get(tau, 0) + 1
        metrics: dict[str, Any] = {
            "clients": arrivals,
            "dropped": 0,
            "rejected": rejected,
            "rejected_exploded": exploded,
            "applied": len(accepted),
            "version": self.version,
            "virtual_time": self.clock,
            "staleness_mean": float(np.mean(staleness)) if staleness else float("nan"),
            "staleness_max": max(staleness) if staleness else 0,
            "staleness_histogram": dict(sorted(histogram.items())),
        }
        return CollectedRound(loop.global_state, accepted, metrics)

    @override
    def finish(self, loop: FederatedLoop, result: FederatedResult) -> None:
        path = loop.settings.run_dir / "staleness.csv"
        lines = ["staleness,count"] + [f"{tau},{n}" for tau, n in sorted(self.staleness_counts.items())]
        path.write_text("\n".join(lines) + "\n")
        result.artifacts["staleness"] = path
