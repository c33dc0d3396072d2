"""Server-optimizer strategies: FedAvgM (Hsu et al. 2019) and FedAdagrad/FedAdam/FedYogi (Reddi et al. 2021).

Each applies a server update to the FedAvg aggregate through the pseudo-gradient
``Δ_t = Σ_k p_k (w_k − w_g)`` (floating-point tensors; integer buffers take the aggregate's value):

* FedAvgM: ``v ← β v + (w_g − Σ p_k w_k)``; ``w ← w_g − η v`` (β 0.9, η 1).
* FedOpt (Reddi et al. 2021, Alg. 2): ``m ← β1 m + (1 − β1) Δ``; Adagrad ``v ← v + Δ²``; Adam
  ``v ← β2 v + (1 − β2) Δ²``; Yogi ``v ← v − (1 − β2) Δ² sign(v − Δ²)``; ``w ← w + η m / (√v + τ)``;
  ``v₀ = τ²`` (β1 0.9, β2 0.99, τ 1e-3).

The moments are strategy state: they are checkpointed with every round and restored on resume.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, StateDict
from lit_fed.server.aggregation import Aggregator
from lit_fed.server.fedavg import FedAvg


def _float_keys(state: StateDict) -> list[str]:
    return [k for k, v in state.items() if torch.is_floating_point(v)]


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019, "Measuring the effects of non-identical data...").

    Args:
        server_lr: η.
        momentum: β.
        aggregator: The rule producing ``Σ p_k w_k`` (weighted mean by default).
    """

    supports_asynchronous: ClassVar[bool] = False  # the momentum is defined per round of aggregated updates

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, aggregator: Aggregator | None = None) -> None:
        super().__init__(aggregator)
        if server_lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"FedAvgM: need server_lr > 0 and 0 <= momentum < 1, got {server_lr}, {momentum}")
        self.server_lr = server_lr
        self.momentum = momentum
        self.velocity: dict[str, Tensor] = {}

    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """``v ← βv + (w_g − mean)``, ``w ← w_g − ηv``."""
        mean = super().aggregate_train(round, updates, global_state)
        out = dict(mean)
        for key in _float_keys(global_state):
            delta = global_state[key].double() - mean[key].double()
            v = self.velocity.get(key)
            v = delta if v is None else self.momentum * v + delta
            self.velocity[key] = v
            out[key] = (global_state[key].double() - self.server_lr * v).to(global_state[key].dtype)
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"velocity": {k: v.clone() for k, v in self.velocity.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = {k: v.clone() for k, v in state.get("velocity", {}).items()}


class FedOpt(FedAvg):
    """Adaptive server optimizers on the pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization").

    Subclasses define the second-moment update :meth:`update_second_moment`.

    Args:
        server_lr: η.
        beta1: β1, first-moment decay.
        beta2: β2, second-moment decay (Adam, Yogi).
        tau: τ, adaptivity; ``v₀ = τ²``.
        aggregator: The rule producing ``Σ p_k w_k``.
    """

    supports_asynchronous: ClassVar[bool] = False  # the moments are defined per round of aggregated updates

    def __init__(
        self,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        aggregator: Aggregator | None = None,
    ) -> None:
        super().__init__(aggregator)
        if server_lr <= 0 or tau <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
            raise ValueError(
                f"{type(self).__name__}: need server_lr > 0, tau > 0, beta1/beta2 in [0, 1); got "
                f"server_lr={server_lr}, tau={tau}, beta1={beta1}, beta2={beta2}"
            )
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.m: dict[str, Tensor] = {}
        self.v: dict[str, Tensor] = {}

    @abstractmethod
    def update_second_moment(self, v: Tensor, delta: Tensor) -> Tensor:
        """Returns the new second moment from the previous ``v`` and the pseudo-gradient ``Δ``."""

    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """``w ← w + η m / (√v + τ)`` with the moments updated from ``Δ = mean − w_g``."""
        mean = super().aggregate_train(round, updates, global_state)
        out = dict(mean)
        for key in _float_keys(global_state):
            w = global_state[key].double()
            delta = mean[key].double() - w
            m = self.m.get(key, torch.zeros_like(delta))
            v = self.v.get(key, torch.full_like(delta, self.tau**2))
            m = self.beta1 * m + (1 - self.beta1) * delta
            v = self.update_second_moment(v, delta)
            self.m[key], self.v[key] = m, v
            out[key] = (w + self.server_lr * m / (v.sqrt() + self.tau)).to(global_state[key].dtype)
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "m": {k: t.clone() for k, t in self.m.items()},
            "v": {k: t.clone() for k, t in self.v.items()},
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = {k: t.clone() for k, t in state.get("m", {}).items()}
        self.v = {k: t.clone() for k, t in state.get("v", {}).items()}


class FedAdagrad(FedOpt):
    """FedAdagrad: ``v ← v + Δ²``. Default η 1e-1 (Adagrad's accumulated ``v`` only grows)."""

    def __init__(
        self,
        server_lr: float = 1e-1,
        beta1: float = 0.9,
        tau: float = 1e-3,
        aggregator: Aggregator | None = None,
    ) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=0.0, tau=tau, aggregator=aggregator)

    @override
    def update_second_moment(self, v: Tensor, delta: Tensor) -> Tensor:
        return v + delta.pow(2)


class FedAdam(FedOpt):
    """FedAdam: ``v ← β2 v + (1 − β2) Δ²``."""

    @override
    def update_second_moment(self, v: Tensor, delta: Tensor) -> Tensor:
        return self.beta2 * v + (1 - self.beta2) * delta.pow(2)


class FedYogi(FedOpt):
    """FedYogi: ``v ← v − (1 − β2) Δ² sign(v − Δ²)``."""

    @override
    def update_second_moment(self, v: Tensor, delta: Tensor) -> Tensor:
        d2 = delta.pow(2)
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)
