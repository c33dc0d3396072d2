"""The federated loop: rounds, client-state stores, checkpoints, callbacks, reporting."""

from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import load_checkpoint
from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult
from lit_fed.loop.rounds import RoundStage, SynchronousRounds
from lit_fed.loop.runner import ClientRunner, SequentialRunner
from lit_fed.loop.settings import FederationSettings
from lit_fed.loop.state_store import ClientStateStore, DiskStateStore, InMemoryStateStore

__all__ = [
    "ClientRunner",
    "ClientStateStore",
    "DiskStateStore",
    "FederatedLoop",
    "FederatedResult",
    "FederationSettings",
    "InMemoryStateStore",
    "LoopCallback",
    "RoundStage",
    "SequentialRunner",
    "SynchronousRounds",
    "load_checkpoint",
]

from lit_fed.loop.asynchronous import (  # noqa: E402
    Asynchronous,
    AsynchronousRounds,
    ClientSpeeds,
    Constant,
    Exponential,
    Latency,
    LogNormal,
    Uniform,
)
from lit_fed.loop.attacks import (  # noqa: E402
    Attack,
    ByzantineAttack,
    GaussianNoise,
    LabelFlip,
    Scale,
    SignFlip,
    byzantine_clients,
)

__all__ += [
    "Asynchronous",
    "AsynchronousRounds",
    "Attack",
    "ByzantineAttack",
    "ClientSpeeds",
    "Constant",
    "Exponential",
    "GaussianNoise",
    "LabelFlip",
    "Latency",
    "LogNormal",
    "Scale",
    "SignFlip",
    "Uniform",
    "byzantine_clients",
]
