"""Typed payloads exchanged between the server and a client.

What the server sends (:class:`ServerMessage`) and what a client returns after training (:class:`ClientUpdate`)
are dataclasses, not dictionaries of magic strings. They hold only what every method has — the state, the sample
count, scalar metrics — plus an ``extras`` mapping of tensors whose keys a method owns (its module defines them),
so the byte accounting in :mod:`lit_fed.client.serialization` and the Flower records know exactly what travels
without knowing any method.

Anything else a method asks of its clients is a :class:`~lit_fed.client.tasks.ClientTask` answered with a
:class:`Payload`; every payload class (these two included) is a dataclass registered by subclassing
:class:`Payload`, so :mod:`lit_fed.client.codec` can send it through any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
"""A flat mapping of parameter/buffer names (the client module's ``state_dict`` keys) to tensors."""


class Payload:
    """Base of the dataclasses that travel between the server and clients (messages, updates, task answers).

    Subclasses are registered under ``"<module>:<qualname>"`` (:meth:`registered`), the name the codec writes on the
    wire; only registered classes are rebuilt from received bytes. Fields may be tensors, state dicts, scalars,
    strings, ``None``, lists, tuples, string- or int-keyed dicts and other payloads.
    """

    registry: ClassVar[dict[str, type[Payload]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Payload.registry[f"{cls.__module__}:{cls.__qualname__}"] = cls

    @classmethod
    def wire_name(cls) -> str:
        """The name this class travels under."""
        return f"{cls.__module__}:{cls.__qualname__}"

    @staticmethod
    def registered(name: str) -> type[Payload] | None:
        """The payload class registered under ``name``, if its module has been imported."""
        return Payload.registry.get(name)


@dataclass
class ServerMessage(Payload):
    """What the server sends to one client: a training instruction, or the model to evaluate.

    Attributes:
        round: The round index (0-based; asynchronous mode: the global model version the client starts from).
        client_id: The receiving client.
        state: Shared tensors the client loads (keys of the client module's state dict).
        extras: Method-owned tensors (keys defined by the method's module), e.g. personal tensors the server
            generated for this client, or a server-trained model the client distils from. Counted as downloaded.
        config: Plain, JSON-like settings for the client (e.g. a request flag or a schedule value).
        wire_nbytes: Bytes actually sent when a wrapper compressed the message (its serialized size); ``None``:
            the message travels as-is and its size is that of its wire encoding.
    """

    round: int
    client_id: int
    state: StateDict
    extras: dict[str, Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    wire_nbytes: int | None = None


@dataclass
class ClientUpdate(Payload):
    """What a client returns after local training.

    Attributes:
        client_id: The sending client.
        round: The round the update was trained in (may lag the server's round in asynchronous mode).
        state: The trained shared tensors, on CPU, with the same keys and shapes as the message's state.
        num_samples: Number of local training samples (the aggregation weight ``n_k``).
        metrics: Scalar training metrics (e.g. mean training loss).
        extras: Method-owned tensors (keys defined by the method's module), e.g. trained tensors the server
            generated or per-class label counts. Counted as uploaded and screened for non-finite values.
        wire_nbytes: Bytes actually sent when a wrapper compressed the update (its serialized size); ``None``:
            the update travels as-is and its size is that of its wire encoding.
    """

    client_id: int
    round: int
    state: StateDict
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
    wire_nbytes: int | None = None

    def delta(self, reference: StateDict) -> StateDict:
        """Returns ``state - reference`` for the floating-point keys (the model update ``w_k - w_g``)."""
        return {key: value - reference[key] for key, value in self.state.items() if torch.is_floating_point(value)}
