"""Client side: the client module and its hooks, payloads, parameter split, regularizers."""

from lit_fed.client.module import FederatedClient, FederationMixin, StepOutput, federate
from lit_fed.client.payloads import ClientUpdate, FeatureStatistics, ServerMessage, StateDict
from lit_fed.client.regularizers import ProximalTerm, Regularizer
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.client.split import BatchNorm, Complement, Head, Modules, ParameterSelector, ParameterSplit, Regex

__all__ = [
    "BatchNorm",
    "Complement",
    "LocalSchedule",
    "Phase",
    "ClientUpdate",
    "FeatureStatistics",
    "FederatedClient",
    "FederationMixin",
    "Head",
    "Modules",
    "ParameterSelector",
    "ParameterSplit",
    "ProximalTerm",
    "Regex",
    "Regularizer",
    "ServerMessage",
    "StateDict",
    "StepOutput",
    "federate",
]
