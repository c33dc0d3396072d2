"""Functional loss terms of lit_fed's methods — plain functions and ``nn.Module``s usable in any PyTorch project.

* Distillation (:mod:`lit_fed.losses.distillation`): :func:`not_true_kl`, :func:`fedntd_loss`,
  :func:`self_distillation_kl`, :func:`fedlsd_loss` and their modules.
* Contrastive (:mod:`lit_fed.losses.contrastive`): :func:`moon_contrastive`.
* Lipschitz / spectral (:mod:`lit_fed.losses.lipschitz`): :func:`transmitting_matrix`,
  :func:`spectral_norm_power_iteration`, :func:`lipschitz_constant`, :func:`lipschitz_mse`,
  :func:`scale_to_reference`.

Example:
    >>> import torch
    >>> student, teacher, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    >>> loss = fedntd_loss(student, teacher, y, tau=1.0, beta=1.0)
"""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "MOONContrastiveLoss": "lit_fed.losses.contrastive",
    "moon_contrastive": "lit_fed.losses.contrastive",
    "NotTrueDistillationLoss": "lit_fed.losses.distillation",
    "SelfDistillationLoss": "lit_fed.losses.distillation",
    "fedlsd_loss": "lit_fed.losses.distillation",
    "fedntd_loss": "lit_fed.losses.distillation",
    "not_true_kl": "lit_fed.losses.distillation",
    "not_true_logits": "lit_fed.losses.distillation",
    "self_distillation_kl": "lit_fed.losses.distillation",
    "LipschitzAlignmentLoss": "lit_fed.losses.lipschitz",
    "lipschitz_constant": "lit_fed.losses.lipschitz",
    "lipschitz_mse": "lit_fed.losses.lipschitz",
    "scale_to_reference": "lit_fed.losses.lipschitz",
    "spectral_norm_power_iteration": "lit_fed.losses.lipschitz",
    "transmitting_matrix": "lit_fed.losses.lipschitz",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
