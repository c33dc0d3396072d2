"""lit_fed: personalized federated learning with PyTorch Lightning.

Each client is a LightningModule; a :class:`FederatedLoop` drives Lightning Trainers across rounds and a
server :class:`Strategy` aggregates the clients' typed updates.
"""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "BatchNorm": "lit_fed.client",
    "ClientUpdate": "lit_fed.client",
    "Complement": "lit_fed.client",
    "FederatedClient": "lit_fed.client",
    "FederationMixin": "lit_fed.client",
    "Head": "lit_fed.client",
    "LocalSchedule": "lit_fed.client",
    "Modules": "lit_fed.client",
    "ParameterSplit": "lit_fed.client",
    "Phase": "lit_fed.client",
    "ProximalTerm": "lit_fed.client",
    "Regex": "lit_fed.client",
    "ServerMessage": "lit_fed.client",
    "federate": "lit_fed.client",
    "DiskStateStore": "lit_fed.loop",
    "FederatedLoop": "lit_fed.loop",
    "FederatedResult": "lit_fed.loop",
    "InMemoryStateStore": "lit_fed.loop",
    "FedAdagrad": "lit_fed.server",
    "FedAdam": "lit_fed.server",
    "FedAvg": "lit_fed.server",
    "FedAvgM": "lit_fed.server",
    "FedYogi": "lit_fed.server",
    "Strategy": "lit_fed.server",
    "FederatedTrainer": "lit_fed.trainer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
