"""The federated loop: rounds, client-state stores, checkpoints, callbacks, reporting."""

from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import load_checkpoint
from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult
from lit_fed.loop.state_store import ClientStateStore, DiskStateStore, InMemoryStateStore

__all__ = [
    "ClientStateStore",
    "DiskStateStore",
    "FederatedLoop",
    "FederatedResult",
    "InMemoryStateStore",
    "LoopCallback",
    "load_checkpoint",
]

from lit_fed.loop.async_loop import (  # noqa: E402
    AsyncFederatedLoop,
    Asynchronous,
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
    "AsyncFederatedLoop",
    "Asynchronous",
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
