"""lit_fed: personalized federated learning with PyTorch Lightning.

Each client is a LightningModule; a :class:`FederatedLoop` drives Lightning Trainers across rounds and a
server :class:`Strategy` aggregates the clients' typed updates.
"""

from lit_fed.client import (
    BatchNorm,
    ClientUpdate,
    Complement,
    FederatedClient,
    FederationMixin,
    Head,
    LocalSchedule,
    Modules,
    ParameterSplit,
    Phase,
    ProximalTerm,
    Regex,
    ServerMessage,
    federate,
)
from lit_fed.loop import DiskStateStore, FederatedLoop, FederatedResult, InMemoryStateStore
from lit_fed.server import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, Strategy
from lit_fed.trainer import FederatedTrainer

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "ClientUpdate",
    "Complement",
    "LocalSchedule",
    "Phase",
    "DiskStateStore",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "FederatedClient",
    "FederatedLoop",
    "FederatedResult",
    "FederatedTrainer",
    "FederationMixin",
    "Head",
    "InMemoryStateStore",
    "Modules",
    "ParameterSplit",
    "ProximalTerm",
    "Regex",
    "ServerMessage",
    "Strategy",
    "federate",
]
