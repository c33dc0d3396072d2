"""Metrics: global/personalized accuracy, communication, distillation fidelity."""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CommunicationMeter": "lit_fed.metrics.communication",
    "PersonalizedAccuracy": "lit_fed.metrics.evaluation",
    "group_accuracy": "lit_fed.metrics.evaluation",
    "pool_client_metrics": "lit_fed.metrics.evaluation",
    "shot_groups": "lit_fed.metrics.evaluation",
    "DistillationFidelity": "lit_fed.metrics.fidelity",
    "PredictiveKL": "lit_fed.metrics.fidelity",
    "TopOneAgreement": "lit_fed.metrics.fidelity",
    "predictive_kl": "lit_fed.metrics.fidelity",
    "top1_agreement": "lit_fed.metrics.fidelity",
    "weight_divergence": "lit_fed.metrics.fidelity",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
