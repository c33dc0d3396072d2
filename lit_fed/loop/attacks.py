"""Simulated Byzantine clients: a loop callback that poisons a fixed set of clients' uploads or training data.

:class:`ByzantineAttack` marks ``round(fraction · N)`` clients as attackers — a fixed set, a pure function of
``(seed, N, fraction)`` (:func:`byzantine_clients`) — and applies an attack *kind* to them:

* :class:`SignFlip` — upload ``w_g − (w_k − w_g)`` (the reversed update; e.g. Allen-Zhu et al. 2021, Karimireddy
  et al. 2021's "sign flipping" attack).
* :class:`Scale` — upload ``w_g + s · (w_k − w_g)`` (scaled update; ``s < 0`` is a scaled sign flip, large ``s > 0``
  a model-replacement boost, Bagdasaryan et al. 2020).
* :class:`GaussianNoise` — upload ``w_k + N(0, σ²)`` per coordinate (Blanchard et al. 2017's Gaussian Byzantine
  workers add noise to the model), drawn from the stream ``(seed, "attack", round, client)``.
* :class:`LabelFlip` — train on the labels ``C − 1 − y`` (data poisoning; Fang et al. 2020, Karimireddy et al.
  2021).

``w_g`` is the state the attacker received (its ``ServerMessage``), ``w_k`` what it trained. Only floating-point
tensors are poisoned; integer buffers are uploaded as trained. Honest clients are untouched.

Evaluation under attack: after every evaluated round the callback adds ``personal_acc_honest`` (pooled
``Σ correct / Σ samples`` over the honest clients' own test splits) and ``personal_acc_honest_mean`` to the round
metrics, so a run reports what the honest clients get; ``global_acc`` is the usual global accuracy. The attackers
are logged at the start of the run and listed in every round's metrics (``byzantine_clients``).

The callback holds no state that matters across rounds (the attacker set is recomputed from the seed), so round
checkpoints resume exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.utils.seeding import numpy_rng, torch_generator

if TYPE_CHECKING:
    from lit_fed.client.worker import ClientWorker
    from lit_fed.loop.federated_loop import FederatedLoop

log = logging.getLogger("lit_fed")


def byzantine_clients(seed: int, num_clients: int, fraction: float) -> list[int]:
    """The attackers: ``round(fraction · N)`` distinct clients drawn from the stream ``(seed, "byzantine")``.

    A pure function of its arguments (halves round up). Returns sorted client ids.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)`` or ``num_clients < 1``.
    """
    if num_clients < 1:
        raise ValueError(f"byzantine_clients: num_clients must be >= 1, got {num_clients}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"ByzantineAttack: fraction must be in [0, 1) (some clients must stay honest), got {fraction}")
    return list(_draw_attackers(seed, num_clients, int(math.floor(fraction * num_clients + 0.5))))


@functools.lru_cache(maxsize=64)
def _draw_attackers(seed: int, num_clients: int, count: int) -> tuple[int, ...]:
    if count == 0:
        return ()
    rng = numpy_rng(seed, "byzantine", num_clients)
    return tuple(sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False)))


class Attack:
    """An attack kind: how an attacker's upload or training data is poisoned. Default: neither."""

    def poison_state(self, trained: StateDict, received: StateDict, generator: torch.Generator) -> StateDict:
        """The poisoned upload from the trained state ``w_k`` and the received ``w_g`` (floating-point keys)."""
        return trained

    def poison_batches(self, dataloader: Any, num_classes: int) -> Any:
        """The data the attacker trains on. Default: unchanged."""
        return dataloader

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _map_floats(trained: StateDict, fn: Any) -> StateDict:
    return {key: fn(key, value) if torch.is_floating_point(value) else value for key, value in trained.items()}


def _from_delta(trained: StateDict, received: StateDict, factor: float) -> StateDict:
    """``w_g + factor · (w_k − w_g)`` in float64, cast back."""

    def scaled(key: str, value: Tensor) -> Tensor:
        w_g = received[key].to(torch.float64)
        return (w_g + factor * (value.to(torch.float64) - w_g)).to(value.dtype)

    return _map_floats(trained, scaled)


class SignFlip(Attack):
    """Upload ``w_g − (w_k − w_g)``: the attacker reverses its update."""

    @override
    def poison_state(self, trained: StateDict, received: StateDict, generator: torch.Generator) -> StateDict:
        return _from_delta(trained, received, -1.0)


class Scale(Attack):
    """Upload ``w_g + s · (w_k − w_g)``.

    Args:
        factor: ``s``; negative values flip the sign as well.
    """

    def __init__(self, factor: float = 10.0) -> None:
        self.factor = factor

    @override
    def poison_state(self, trained: StateDict, received: StateDict, generator: torch.Generator) -> StateDict:
        return _from_delta(trained, received, self.factor)


class GaussianNoise(Attack):
    """Upload ``w_k + ε``, ``ε ~ N(0, σ²)`` independently per coordinate.

    Args:
        std: σ ≥ 0.
    """

    def __init__(self, std: float = 1.0) -> None:
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = std

    @override
    def poison_state(self, trained: StateDict, received: StateDict, generator: torch.Generator) -> StateDict:
        def noisy(key: str, value: Tensor) -> Tensor:
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64) * self.std
            return (value.to(torch.float64) + noise).to(value.dtype)

        return _map_floats(trained, noisy)


class LabelFlippedLoader:
    """Wraps a loader of ``(x, y)`` batches, replacing the labels by ``C − 1 − y``."""

    def __init__(self, dataloader: Any, num_classes: int) -> None:
        self.dataloader = dataloader
        self.num_classes = num_classes

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.dataloader:
            yield x, self.num_classes - 1 - y

    def __len__(self) -> int:
        return len(self.dataloader)


class LabelFlip(Attack):
    """The attacker trains on flipped labels ``C − 1 − y`` and uploads what it trained."""

    @override
    def poison_batches(self, dataloader: Any, num_classes: int) -> Any:
        return LabelFlippedLoader(dataloader, num_classes)


class ByzantineAttack(LoopCallback):
    """Makes a fixed ``fraction`` of the clients Byzantine with one attack ``kind``.

    Use it as a round callback: ``FederatedLoop(..., callbacks=[ByzantineAttack(0.2, SignFlip())])`` or in YAML
    under ``trainer.round_callbacks``.

    Args:
        fraction: Share of the clients that attack, in ``[0, 1)``; ``round(fraction · N)`` attackers.
        kind: The attack (:class:`SignFlip` by default).
        seed: Seed of the attacker set; ``None`` uses the run's seed.
    """

    def __init__(self, fraction: float = 0.2, kind: Attack | None = None, seed: int | None = None) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"ByzantineAttack: fraction must be in [0, 1), got {fraction}")
        self.fraction = fraction
        self.kind = kind if kind is not None else SignFlip()
        self.seed = seed
        self._announced: tuple[int, int] | None = None  # (seed, N) already logged; logging only, not state

    def attackers(self, run: FederatedLoop | ClientWorker) -> list[int]:
        """The attacking clients of the run (sorted); ``run`` is the loop or a client worker of it."""
        seed = run.seed if self.seed is None else self.seed
        return byzantine_clients(seed, run.num_clients, self.fraction)

    def is_attacker(self, run: FederatedLoop | ClientWorker, client_id: int) -> bool:
        """Whether ``client_id`` attacks."""
        return client_id in self.attackers(run)

    @override
    def on_round_start(self, loop: FederatedLoop, round: int) -> None:
        key = (loop.seed if self.seed is None else self.seed, loop.num_clients)
        if self._announced != key:
            self._announced = key
            attackers = self.attackers(loop)
            log.warning("Byzantine attack %r: %d attacking clients %s", self.kind, len(attackers), attackers)
            for logger in loop.loggers:
                logger.log_hyperparams(
                    {"byzantine/kind": repr(self.kind), "byzantine/clients": ",".join(map(str, attackers))}
                )

    @override
    def client_dataloader(self, worker: ClientWorker, client_id: int, round: int, dataloader: Any) -> Any:
        if not self.is_attacker(worker, client_id):
            return dataloader
        return self.kind.poison_batches(dataloader, int(worker.data.num_classes))

    @override
    def client_update(self, worker: ClientWorker, update: ClientUpdate, message: ServerMessage) -> ClientUpdate:
        if not self.is_attacker(worker, update.client_id):
            return update
        seed = worker.seed if self.seed is None else self.seed
        generator = torch_generator(seed, "attack", update.round, update.client_id)
        poisoned = self.kind.poison_state(update.state, message.state, generator)
        return dataclasses.replace(update, state=poisoned)

    @override
    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        attackers = self.attackers(loop)
        extra: dict[str, Any] = {"byzantine_attackers": len(attackers)}
        personalized = loop.evaluation.last_personalized
        if "personal_acc" in metrics and personalized is not None:
            honest = [c for c in sorted(personalized.per_client) if c not in set(attackers)]
            sizes = {c: loop.datamodule.client_num_test_samples(c) for c in honest}
            total = sum(sizes.values())
            if honest and total > 0:
                correct = sum(math.floor(personalized.per_client[c] * sizes[c] + 0.5) for c in honest)
                extra["personal_acc_honest"] = correct / total
                extra["personal_acc_honest_mean"] = sum(personalized.per_client[c] for c in honest) / len(honest)
        metrics.update(extra)
        metrics["byzantine_clients"] = list(attackers)  # listed in the history; loggers take the scalars

    def __repr__(self) -> str:
        return f"ByzantineAttack(fraction={self.fraction}, kind={self.kind!r}, seed={self.seed})"
