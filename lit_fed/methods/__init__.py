"""Personalized-FL methods: one module per paper (client hooks, and a server strategy when they pair).

Names are imported on first use (PEP 562), so a config naming ``lit_fed.methods.DittoClient`` loads only Ditto's
module, and one method's heavy dependencies never slow down another's.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "FrozenModule": "lit_fed.client.teacher",
    "GlobalTeacherClient": "lit_fed.client.teacher",
    "CCVR": "lit_fed.methods.ccvr",
    "FeatureStatisticsTask": "lit_fed.methods.ccvr",
    "calibrate_classifier": "lit_fed.methods.ccvr",
    "classifier_parameters": "lit_fed.methods.ccvr",
    "feature_statistics": "lit_fed.methods.ccvr",
    "pool_feature_statistics": "lit_fed.methods.ccvr",
    "sample_virtual_features": "lit_fed.methods.ccvr",
    "DittoClient": "lit_fed.methods.ditto",
    "FedAlignClient": "lit_fed.methods.fedalign",
    "FedBABUClient": "lit_fed.methods.fedbabu",
    "EnsembleDistillation": "lit_fed.methods.feddf",
    "FedDF": "lit_fed.methods.feddf",
    "HeldOut": "lit_fed.methods.feddf",
    "KeepBestState": "lit_fed.methods.feddf",
    "distillation_kl": "lit_fed.methods.feddf",
    "ensemble_logits": "lit_fed.methods.feddf",
    "AmplitudeMix": "lit_fed.methods.feddg",
    "FedDGClient": "lit_fed.methods.feddg",
    "FedDGStrategy": "lit_fed.methods.feddg",
    "amplitude_interpolate": "lit_fed.methods.feddg",
    "FedGen": "lit_fed.methods.fedgen",
    "FedGenClient": "lit_fed.methods.fedgen",
    "Generator": "lit_fed.methods.fedgen",
    "diversity_loss": "lit_fed.methods.fedgen",
    "fedgen_schedule": "lit_fed.methods.fedgen",
    "label_weights": "lit_fed.methods.fedgen",
    "teacher_loss": "lit_fed.methods.fedgen",
    "FedKDClient": "lit_fed.methods.fedkd",
    "fedkd_compression": "lit_fed.methods.fedkd",
    "fedkd_loss": "lit_fed.methods.fedkd",
    "FedLoGeClient": "lit_fed.methods.fedloge",
    "build_sse_classifier": "lit_fed.methods.fedloge",
    "global_realign": "lit_fed.methods.fedloge",
    "norm_transfer": "lit_fed.methods.fedloge",
    "FedLSDClient": "lit_fed.methods.fedlsd",
    "FedNTDClient": "lit_fed.methods.fedntd",
    "FedTP": "lit_fed.methods.fedtp",
    "FedTPClient": "lit_fed.methods.fedtp",
    "QKV": "lit_fed.methods.fedtp",
    "attention_modules": "lit_fed.methods.fedtp",
    "FedETFClient": "lit_fed.methods.lt_baselines",
    "FedRoDClient": "lit_fed.methods.lt_baselines",
    "balanced_softmax_loss": "lit_fed.methods.lt_baselines",
    "MOONClient": "lit_fed.methods.moon",
    "PartialPFL": "lit_fed.methods.partial",
    "fedalt_schedule": "lit_fed.methods.partial",
    "fedsim_schedule": "lit_fed.methods.partial",
    "ffgg_schedule": "lit_fed.methods.partial",
    "partial_schedule": "lit_fed.methods.partial",
    "PerFedAvgClient": "lit_fed.methods.perfedavg",
    "Hypernetwork": "lit_fed.methods.pfedhn",
    "HypernetworkClient": "lit_fed.methods.pfedhn",
    "HypernetworkStrategy": "lit_fed.methods.pfedhn",
    "PFedHN": "lit_fed.methods.pfedhn",
    "PFedHNClient": "lit_fed.methods.pfedhn",
    "bind_hypernetwork": "lit_fed.methods.pfedhn",
    "hypernetwork_gradients": "lit_fed.methods.pfedhn",
    "PromptTuningClient": "lit_fed.methods.prompt_tuning",
    "CrossModelAttention": "lit_fed.methods.pse",
    "PSEClient": "lit_fed.methods.pse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
