"""FedAvg: the sample-weighted mean of the clients' states (McMahan et al. 2017, Alg. 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import override

from lit_fed.client.module import FederationMixin
from lit_fed.client.payloads import ClientUpdate, StateDict
from lit_fed.server.aggregation import Aggregator, WeightedMean, sample_weights, staleness_step
from lit_fed.server.strategy import ServerContext, ServerStep, Strategy


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017, Alg. 1): ``w ← Σ_k p_k w_k``, ``p_k = n_k / Σ_S n_j``.

    In asynchronous mode each update is applied alone with its staleness discount, ``x ← x + s(τ) (x_k − x_start)``
    (Xie et al. 2019, Eq. 2 with mixing weight 1).

    Args:
        aggregator: The rule combining client states; a robust rule may replace the weighted mean.
        weighted: Weight by sample count (``p_k``); if false, every client weighs the same.
        steps: Server steps after aggregation (e.g. ensemble distillation, classifier calibration).
    """

    supports_asynchronous: ClassVar[bool] = True

    def __init__(
        self, aggregator: Aggregator | None = None, weighted: bool = True, steps: Sequence[ServerStep] = ()
    ) -> None:
        super().__init__(steps)
        self.aggregator = aggregator if aggregator is not None else WeightedMean()
        self.weighted = weighted

    @override
    def bind(self, context: ServerContext) -> None:
        """Refuses a client module that shares nothing (every key personal: nothing to aggregate)."""
        template = context.client_template
        if isinstance(template, FederationMixin) and not template.shared_keys():
            raise ValueError(
                f"{type(self).__name__}: the client {type(template).__name__} shares no parameters (every key is "
                "personal), so there is nothing to aggregate"
            )

    def weights(self, updates: Sequence[ClientUpdate]) -> Any:
        """Normalized aggregation weights of the updates."""
        return sample_weights([u.num_samples if self.weighted else 1 for u in updates])

    @override
    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """Sample-weighted aggregate of the clients' states; keys absent from updates keep their value."""
        merged = self.aggregator([u.state for u in updates], self.weights(updates), reference=global_state)
        return {**global_state, **merged}

    @override
    def staleness_update(
        self, global_state: StateDict, update: ClientUpdate, start_state: StateDict, staleness_weight: float
    ) -> StateDict:
        """``x + s(τ) · (x_k − x_start)``."""
        return staleness_step(global_state, update.state, start_state, staleness_weight)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(aggregator={self.aggregator!r}, weighted={self.weighted})"
