"""Server side: strategies, aggregation rules, client sampling, update validation."""

from lit_fed.server.aggregation import Aggregator, WeightedMean, sample_weights
from lit_fed.server.fedavg import FedAvg
from lit_fed.server.fedopt import FedAdagrad, FedAdam, FedAvgM, FedOpt, FedYogi
from lit_fed.server.sampling import ClientSampler, RoundParticipants
from lit_fed.server.strategy import ServerContext, ServerStep, Strategy
from lit_fed.server.validation import UpdateMismatchError, screen_updates

__all__ = [
    "Aggregator",
    "ClientSampler",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedYogi",
    "RoundParticipants",
    "ServerContext",
    "ServerStep",
    "Strategy",
    "UpdateMismatchError",
    "WeightedMean",
    "sample_weights",
    "screen_updates",
]

from lit_fed.server.robust import CenteredClipping, CoordinateMedian, Krum, TrimmedMean  # noqa: E402

__all__ += ["CenteredClipping", "CoordinateMedian", "Krum", "TrimmedMean"]
