"""Logit-distillation losses: not-true distillation (FedNTD) and self-distillation from the global model (FedLSD).

Every function takes ``(student_logits, teacher_logits, ...)`` in that order, treats the teacher as a constant
(its logits are detached: the teacher never receives a gradient) and computes in float32 whatever the input
precision, so it is safe under ``16-mixed``/``bf16-mixed`` autocast. The KL divergences use ``batchmean``
reduction (sum over classes, mean over samples), as ``torch.nn.KLDivLoss(reduction="batchmean")`` in the
authors' code.

* :func:`not_true_logits` / :func:`not_true_kl` / :func:`fedntd_loss` / :class:`NotTrueDistillationLoss` —
  Lee et al., "Preservation of the Global Knowledge by Not-True Distillation in Federated Learning"
  (NeurIPS 2022), Eq. 5–6.
* :func:`self_distillation_kl` / :func:`fedlsd_loss` / :class:`SelfDistillationLoss` — the FedLSD objective of
  the same authors' earlier version, "Preservation of the Global Knowledge by Not-True Self Knowledge
  Distillation in Federated Learning" (arXiv:2106.03097v1, 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

__all__ = [
    "NotTrueDistillationLoss",
    "SelfDistillationLoss",
    "fedlsd_loss",
    "fedntd_loss",
    "not_true_kl",
    "not_true_logits",
    "self_distillation_kl",
]


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must both be (B, C); got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )


def _check_tau(tau: float) -> None:
    if tau <= 0:
        raise ValueError(f"the temperature tau must be > 0, got {tau}")


def _kl_batchmean(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``KL(softmax(t/τ) ‖ softmax(s/τ))`` summed over classes, averaged over samples, in float32."""
    student_log_probs = F.log_softmax(student_logits.float() / tau, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def not_true_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Drops each sample's true-class column: ``(B, C)`` → ``(B, C − 1)``, the other classes in their order.

    FedNTD's ``refine_as_not_true`` (Lee et al. 2022, the ``z̃`` of Eq. 5).

    Args:
        logits: ``(B, C)`` class scores.
        target: ``(B,)`` integer labels in ``[0, C)``.

    Raises:
        ValueError: shapes disagree or there are fewer than two classes.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, C) and target (B,); got {tuple(logits.shape)} and {tuple(target.shape)}")
    batch, num_classes = logits.shape
    if num_classes < 2:
        raise ValueError(f"not-true logits need at least 2 classes, got {num_classes}")
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep.scatter_(1, target.long().view(-1, 1), False)
    return logits[keep].view(batch, num_classes - 1)


def not_true_kl(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, tau: float = 1.0) -> Tensor:
    """``KL(softmax(z̃_t/τ) ‖ softmax(z̃_s/τ))`` over the not-true classes (batchmean), without the ``τ²`` factor.

    Lee et al. 2022, Eq. 5: the true class is removed from both distributions *before* the softmax, so the
    true-class logit of either model has no effect on the value nor on the gradient.

    Args:
        student_logits: ``(B, C)`` logits of the model being trained.
        teacher_logits: ``(B, C)`` logits of the teacher (detached here).
        target: ``(B,)`` true labels.
        tau: Softmax temperature ``τ > 0``.
    """
    _check_logits(student_logits, teacher_logits)
    _check_tau(tau)
    return _kl_batchmean(not_true_logits(student_logits, target), not_true_logits(teacher_logits, target), tau)


def fedntd_loss(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, tau: float = 1.0, beta: float = 1.0
) -> Tensor:
    """FedNTD's local objective ``CE(z_s, y) + β τ² KL(softmax(z̃_t/τ) ‖ softmax(z̃_s/τ))`` (Lee et al. 2022, Eq. 6).

    [code], plus the ``τ²`` gradient-scale factor of Hinton et al. (the official criterion omits it; it is 1 at
    the default τ 1).
    """
    ce = F.cross_entropy(student_logits.float(), target)
    return ce + beta * tau**2 * not_true_kl(student_logits, teacher_logits, target, tau)


def self_distillation_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """``KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`` over all classes (batchmean): FedLSD's distillation term.

    Args:
        student_logits: ``(B, C)`` logits of the model being trained.
        teacher_logits: ``(B, C)`` logits of the teacher (detached here).
        tau: Softmax temperature ``τ > 0``.
    """
    _check_logits(student_logits, teacher_logits)
    _check_tau(tau)
    return _kl_batchmean(student_logits, teacher_logits, tau)


def fedlsd_loss(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, tau: float = 1.0, beta: float = 0.3
) -> Tensor:
    """FedLSD's local objective ``(1 − β)·CE(z_s, y) + β·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))``.

    Lee et al. 2021 (arXiv:2106.03097v1) [paper].
    """
    ce = F.cross_entropy(student_logits.float(), target)
    return (1.0 - beta) * ce + beta * self_distillation_kl(student_logits, teacher_logits, tau)


class NotTrueDistillationLoss(nn.Module):
    """:func:`fedntd_loss` as a module: ``loss(student_logits, teacher_logits, target)``.

    Args:
        tau: Softmax temperature (FedNTD default 1).
        beta: Weight of the not-true term (FedNTD default 1).
    """

    def __init__(self, tau: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        _check_tau(tau)
        self.tau = tau
        self.beta = beta

    @override
    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return fedntd_loss(student_logits, teacher_logits, target, self.tau, self.beta)


class SelfDistillationLoss(nn.Module):
    """:func:`fedlsd_loss` as a module: ``loss(student_logits, teacher_logits, target)``.

    Args:
        tau: Softmax temperature.
        beta: Weight of the distillation term; CE is weighted ``1 − β``.
    """

    def __init__(self, tau: float = 1.0, beta: float = 0.3) -> None:
        super().__init__()
        _check_tau(tau)
        self.tau = tau
        self.beta = beta

    @override
    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return fedlsd_loss(student_logits, teacher_logits, target, self.tau, self.beta)
