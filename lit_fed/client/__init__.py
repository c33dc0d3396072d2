"""Client side: the client module and its hooks, payloads, parameter split, regularizers."""

from lit_fed.client.module import FederatedClient, FederationMixin, StepOutput, federate
from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage, StateDict
from lit_fed.client.regularizers import ProximalTerm, Regularizer
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.client.split import BatchNorm, Complement, Head, Modules, ParameterSelector, ParameterSplit, Regex
from lit_fed.client.tasks import ClientTask

__all__ = [
    "BatchNorm",
    "ClientTask",
    "Complement",
    "LocalSchedule",
    "Phase",
    "ClientUpdate",
    "FederatedClient",
    "FederationMixin",
    "Head",
    "Modules",
    "ParameterSelector",
    "ParameterSplit",
    "Payload",
    "ProximalTerm",
    "Regex",
    "Regularizer",
    "ServerMessage",
    "StateDict",
    "StepOutput",
    "federate",
]
