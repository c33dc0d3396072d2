"""Personalized-FL methods: one module per paper (client hooks, and a server strategy when they pair)."""

from lit_fed.methods.partial import (
    PartialPFL,
    fedalt_schedule,
    fedsim_schedule,
    ffgg_schedule,
    partial_schedule,
)

__all__ = ["PartialPFL", "fedalt_schedule", "fedsim_schedule", "ffgg_schedule", "partial_schedule"]

from lit_fed.client.teacher import FrozenModule, GlobalTeacherClient  # noqa: E402
from lit_fed.methods.fedalign import FedAlignClient  # noqa: E402
from lit_fed.methods.fedlsd import FedLSDClient  # noqa: E402
from lit_fed.methods.fedntd import FedNTDClient  # noqa: E402
from lit_fed.methods.moon import MOONClient  # noqa: E402

__all__ += ["FedAlignClient", "FedLSDClient", "FedNTDClient", "FrozenModule", "GlobalTeacherClient", "MOONClient"]

from lit_fed.methods.ditto import DittoClient  # noqa: E402
from lit_fed.methods.fedbabu import FedBABUClient  # noqa: E402
from lit_fed.methods.perfedavg import PerFedAvgClient  # noqa: E402

__all__ += ["DittoClient", "FedBABUClient", "PerFedAvgClient"]

from lit_fed.methods.pse import CrossModelAttention, PSEClient  # noqa: E402

__all__ += ["CrossModelAttention", "PSEClient"]

from lit_fed.methods.feddg import AmplitudeMix, FedDGClient, FedDGStrategy, amplitude_interpolate  # noqa: E402

__all__ += ["AmplitudeMix", "FedDGClient", "FedDGStrategy", "amplitude_interpolate"]
