"""Aggregation rules: how a list of client states becomes one state.

:class:`WeightedMean` is FedAvg's rule (McMahan et al. 2017, Alg. 1): ``w ← Σ_k p_k w_k`` with
``p_k = n_k / Σ_j n_j``, over floating-point tensors. Integer tensors (BatchNorm's ``num_batches_tracked``)
are not averaged: they are taken from the update with the most samples. Robust rules (median, trimmed mean,
Krum, centered clipping) implement the same :class:`Aggregator` interface and drop in anywhere a mean is used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.client.payloads import StateDict


def sample_weights(num_samples: Sequence[int]) -> Tensor:
    """``p_k = n_k / Σ n_j`` as a float64 tensor.

    Raises:
        ValueError: no updates, or the total sample count is not positive.
    """
    counts = torch.as_tensor(list(num_samples), dtype=torch.float64)
    if counts.numel() == 0:
        raise ValueError("cannot aggregate zero client updates")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"client sample counts must be non-negative with a positive total, got {counts.tolist()}")
    return counts / counts.sum()


class Aggregator(ABC):
    """Combines client states into one state, key by key."""

    @abstractmethod
    def __call__(self, states: Sequence[StateDict], weights: Tensor, reference: StateDict | None = None) -> StateDict:
        """Aggregates ``states`` (all with the same keys) given normalized ``weights``.

        Args:
            states: The clients' states (same keys, shapes, dtypes).
            weights: Normalized aggregation weights, one per state.
            reference: The state the updates started from (the global state), for rules that work on
                ``state - reference`` (centered clipping, Krum's distances are unaffected by it).
        """


def _integer_passthrough(states: Sequence[StateDict], weights: Tensor, key: str) -> Tensor:
    return states[int(torch.argmax(weights))][key].clone()


class WeightedMean(Aggregator):
    """Sample-weighted mean of floating-point tensors (FedAvg); integer tensors pass through unaveraged."""

    @override
    def __call__(self, states: Sequence[StateDict], weights: Tensor, reference: StateDict | None = None) -> StateDict:
        out: StateDict = {}
        for key, first in states[0].items():
            if not torch.is_floating_point(first):
                out[key] = _integer_passthrough(states, weights, key)
                continue
            stacked = torch.stack([s[key].to(torch.float64) for s in states])
            w = weights.to(torch.float64).view(-1, *([1] * first.dim()))
            out[key] = (stacked * w).sum(0).to(first.dtype)
        return out

    def __repr__(self) -> str:
        return "WeightedMean()"


def staleness_step(
    global_state: StateDict,
    update_state: StateDict,
    start_state: StateDict,
    weight: float,
) -> StateDict:
    """``x + weight · (x_k − x_start)`` on floating-point keys (float64 arithmetic); integer keys from the update.

    The server step of one client update against the state it started from: FedAvg's asynchronous rule with a
    staleness discount (``weight = s(τ)``; Xie et al. 2019, "Asynchronous Federated Optimization", Eq. 2), and a
    server learning rate's step on an aggregate (``start_state = x``). Keys of ``global_state`` absent from the
    update keep their value.
    """
    out = dict(global_state)
    for key, value in update_state.items():
        if torch.is_floating_point(value):
            x = global_state[key].to(torch.float64)
            delta = value.to(torch.float64) - start_state[key].to(torch.float64)
            out[key] = (x + weight * delta).to(global_state[key].dtype)
        else:
            out[key] = value.clone()
    return out
