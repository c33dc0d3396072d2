"""Metrics: global/personalized accuracy, communication, distillation fidelity."""

from lit_fed.metrics.communication import CommunicationMeter
from lit_fed.metrics.evaluation import PersonalizedAccuracy, group_accuracy, pool_client_metrics, shot_groups
from lit_fed.metrics.fidelity import (
    DistillationFidelity,
    PredictiveKL,
    TopOneAgreement,
    predictive_kl,
    top1_agreement,
    weight_divergence,
)

__all__ = [
    "CommunicationMeter",
    "DistillationFidelity",
    "PersonalizedAccuracy",
    "PredictiveKL",
    "TopOneAgreement",
    "group_accuracy",
    "pool_client_metrics",
    "predictive_kl",
    "shot_groups",
    "top1_agreement",
    "weight_divergence",
]
