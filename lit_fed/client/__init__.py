"""Client side: the client module and its hooks, payloads, parameter split, regularizers."""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FederatedClient": "lit_fed.client.module",
    "FederationMixin": "lit_fed.client.module",
    "StepOutput": "lit_fed.client.module",
    "federate": "lit_fed.client.module",
    "ClientUpdate": "lit_fed.client.payloads",
    "Payload": "lit_fed.client.payloads",
    "ServerMessage": "lit_fed.client.payloads",
    "StateDict": "lit_fed.client.payloads",
    "ProximalTerm": "lit_fed.client.regularizers",
    "Regularizer": "lit_fed.client.regularizers",
    "LocalSchedule": "lit_fed.client.schedule",
    "Phase": "lit_fed.client.schedule",
    "BatchNorm": "lit_fed.client.split",
    "Complement": "lit_fed.client.split",
    "Head": "lit_fed.client.split",
    "Modules": "lit_fed.client.split",
    "ParameterSelector": "lit_fed.client.split",
    "ParameterSplit": "lit_fed.client.split",
    "Regex": "lit_fed.client.split",
    "ClientTask": "lit_fed.client.tasks",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
