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

from lit_fed.losses.contrastive import MOONContrastiveLoss, moon_contrastive
from lit_fed.losses.distillation import (
    NotTrueDistillationLoss,
    SelfDistillationLoss,
    fedlsd_loss,
    fedntd_loss,
    not_true_kl,
    not_true_logits,
    self_distillation_kl,
)
from lit_fed.losses.lipschitz import (
    LipschitzAlignmentLoss,
    lipschitz_constant,
    lipschitz_mse,
    scale_to_reference,
    spectral_norm_power_iteration,
    transmitting_matrix,
)

__all__ = [
    "LipschitzAlignmentLoss",
    "MOONContrastiveLoss",
    "NotTrueDistillationLoss",
    "SelfDistillationLoss",
    "fedlsd_loss",
    "fedntd_loss",
    "lipschitz_constant",
    "lipschitz_mse",
    "moon_contrastive",
    "not_true_kl",
    "not_true_logits",
    "scale_to_reference",
    "self_distillation_kl",
    "spectral_norm_power_iteration",
    "transmitting_matrix",
]
