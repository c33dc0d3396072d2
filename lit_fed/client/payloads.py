"""Typed payloads exchanged between the server and a client in one round.

What the server sends (:class:`ServerMessage`) and what a client returns (:class:`ClientUpdate`) are
dataclasses, not dictionaries of magic strings: a strategy and its client module are checked to agree on
the fields at construction time, and the byte accounting in :mod:`lit_fed.client.serialization` knows
exactly what travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
"""A flat mapping of parameter/buffer names (the client module's ``state_dict`` keys) to tensors."""


@dataclass
class FeatureStatistics:
    """Per-class feature statistics uploaded by a client (used by CCVR-style calibration).

    Attributes:
        means: ``(C, d)`` per-class feature means.
        covariances: ``(C, d, d)`` per-class unbiased covariances (divisor ``N_c - 1``).
        counts: ``(C,)`` per-class sample counts.
    """

    means: Tensor
    covariances: Tensor
    counts: Tensor

    def __post_init__(self) -> None:
        num_classes = self.counts.shape[0]
        if self.means.shape[0] != num_classes or self.covariances.shape[0] != num_classes:
            raise ValueError(
                f"FeatureStatistics: means {tuple(self.means.shape)}, covariances "
                f"{tuple(self.covariances.shape)} and counts {tuple(self.counts.shape)} disagree on the class count"
            )


@dataclass
class ServerMessage:
    """What the server sends to one sampled client at the start of a round.

    Attributes:
        round: The round index (0-based).
        client_id: The receiving client.
        state: Shared tensors the client loads before training (keys of the client module's state dict).
        extras: Method-specific tensors, e.g. hypernetwork-generated personal parameters (pFedHN, FedTP)
            or a server-trained generator's state (FedGen). Tensor values are counted as downloaded bytes.
        config: Plain, JSON-like per-round settings for the client (e.g. a learning-rate schedule value).
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
class ClientUpdate:
    """What a client returns after local training.

    Attributes:
        client_id: The sending client.
        round: The round the update was trained in (may lag the server's round in asynchronous mode).
        state: The trained shared tensors, on CPU, with the same keys and shapes as the message's state.
        num_samples: Number of local training samples (the FedAvg weight ``n_k``).
        metrics: Scalar training metrics (e.g. mean training loss).
        label_counts: Optional ``(C,)`` per-class training-sample counts (FedGen).
        feature_stats: Optional per-class feature statistics (CCVR).
        extras: Optional method-specific tensors (e.g. trained hypernetwork targets).
        wire_nbytes: Bytes actually sent when a wrapper compressed the update (its serialized size); ``None``:
            the update travels as-is and its size is that of its wire encoding.
    """

    client_id: int
    round: int
    state: StateDict
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    label_counts: Tensor | None = None
    feature_stats: FeatureStatistics | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    wire_nbytes: int | None = None

    def delta(self, reference: StateDict) -> StateDict:
        """Returns ``state - reference`` for the floating-point keys (the model update ``w_k - w_g``)."""
        return {key: value - reference[key] for key, value in self.state.items() if torch.is_floating_point(value)}
