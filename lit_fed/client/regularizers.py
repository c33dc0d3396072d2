"""Loss terms that depend on the client's parameters and on what the server sent this round.

A :class:`Regularizer` is told the round's :class:`~lit_fed.client.payloads.ServerMessage` at round start and
returns a scalar each training step; the client adds it to the task loss. The same objects serve lit_fed's
own client modules and user LightningModules federated with :func:`~lit_fed.client.module.federate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.payloads import ServerMessage

if TYPE_CHECKING:
    from lit_fed.client.module import FederationMixin


class Regularizer(ABC):
    """A parameter-dependent loss term added to the client's task loss.

    Attributes:
        name: Key under which the term is reported (``train/<name>``).
    """

    name: str = "regularizer"

    def on_round_start(self, client: FederationMixin, message: ServerMessage) -> None:  # noqa: B027
        """Called after the client loaded the round's global state. Default: nothing."""

    @abstractmethod
    def __call__(self, client: FederationMixin) -> Tensor:
        """Returns the scalar loss term for the client's current parameters."""


class ProximalTerm(Regularizer):
    """FedProx's proximal term ``μ/2 ‖w − w_g‖²`` over the shared trainable parameters (Li et al. 2020, Eq. 2).

    The term is computed in float32 whatever the autocast precision, so its gradient ``μ (w − w_g)`` is exact
    under ``16-mixed``/``bf16-mixed``; with a grad scaler it is scaled and unscaled with the task loss, and a
    skipped AMP step skips it too.

    Args:
        mu: The proximal coefficient μ (the paper uses 0.001, 0.01, 0.1, 1).
    """

    name = "proximal"

    def __init__(self, mu: float = 0.01) -> None:
        if mu < 0:
            raise ValueError(f"ProximalTerm: mu must be >= 0, got {mu}")
        self.mu = mu
        self._params: list[nn.Parameter] = []
        self._anchors: list[Tensor] = []

    @override
    def on_round_start(self, client: FederationMixin, message: ServerMessage) -> None:
        named = dict(client.named_parameters())
        self._params, self._anchors = [], []
        for key in client.shared_keys():
            param = named.get(key)
            if param is not None and param.requires_grad:
                self._params.append(param)
                self._anchors.append(message.state[key].detach().to(torch.float32).clone())

    @override
    def __call__(self, client: FederationMixin) -> Tensor:
        if not self._params:
            raise RuntimeError("ProximalTerm used before the client received a global state")
        device = self._params[0].device
        if self._anchors[0].device != device:
            self._anchors = [anchor.to(device) for anchor in self._anchors]
        total = torch.zeros((), device=device, dtype=torch.float32)
        for param, anchor in zip(self._params, self._anchors, strict=True):
            total = total + (param.float() - anchor).pow(2).sum()
        return 0.5 * self.mu * total

    def __repr__(self) -> str:
        return f"ProximalTerm(mu={self.mu})"
