"""The federated loop: rounds, client-state stores, checkpoints, callbacks, reporting."""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "LoopCallback": "lit_fed.loop.callbacks",
    "load_checkpoint": "lit_fed.loop.checkpoint",
    "FederatedLoop": "lit_fed.loop.federated_loop",
    "FederatedResult": "lit_fed.loop.federated_loop",
    "RoundStage": "lit_fed.loop.rounds",
    "SynchronousRounds": "lit_fed.loop.rounds",
    "ClientRunner": "lit_fed.loop.runner",
    "SequentialRunner": "lit_fed.loop.runner",
    "FederationSettings": "lit_fed.loop.settings",
    "ClientStateStore": "lit_fed.loop.state_store",
    "DiskStateStore": "lit_fed.loop.state_store",
    "InMemoryStateStore": "lit_fed.loop.state_store",
    "Asynchronous": "lit_fed.loop.asynchronous",
    "AsynchronousRounds": "lit_fed.loop.asynchronous",
    "ClientSpeeds": "lit_fed.loop.asynchronous",
    "Constant": "lit_fed.loop.asynchronous",
    "Exponential": "lit_fed.loop.asynchronous",
    "Latency": "lit_fed.loop.asynchronous",
    "LogNormal": "lit_fed.loop.asynchronous",
    "Uniform": "lit_fed.loop.asynchronous",
    "Attack": "lit_fed.loop.attacks",
    "ByzantineAttack": "lit_fed.loop.attacks",
    "GaussianNoise": "lit_fed.loop.attacks",
    "LabelFlip": "lit_fed.loop.attacks",
    "Scale": "lit_fed.loop.attacks",
    "SignFlip": "lit_fed.loop.attacks",
    "byzantine_clients": "lit_fed.loop.attacks",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
