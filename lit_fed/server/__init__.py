"""Server side: strategies, aggregation rules, client sampling, update validation."""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Aggregator": "lit_fed.server.aggregation",
    "WeightedMean": "lit_fed.server.aggregation",
    "sample_weights": "lit_fed.server.aggregation",
    "FedAvg": "lit_fed.server.fedavg",
    "FedAdagrad": "lit_fed.server.fedopt",
    "FedAdam": "lit_fed.server.fedopt",
    "FedAvgM": "lit_fed.server.fedopt",
    "FedOpt": "lit_fed.server.fedopt",
    "FedYogi": "lit_fed.server.fedopt",
    "ClientSampler": "lit_fed.server.sampling",
    "RoundParticipants": "lit_fed.server.sampling",
    "ServerContext": "lit_fed.server.strategy",
    "ServerStep": "lit_fed.server.strategy",
    "Strategy": "lit_fed.server.strategy",
    "UpdateMismatchError": "lit_fed.server.validation",
    "screen_updates": "lit_fed.server.validation",
    "CenteredClipping": "lit_fed.server.robust",
    "CoordinateMedian": "lit_fed.server.robust",
    "Krum": "lit_fed.server.robust",
    "TrimmedMean": "lit_fed.server.robust",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
