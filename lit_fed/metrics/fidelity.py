"""Knowledge-distillation fidelity and weight divergence: diagnostics for distillation-based methods.

**Fidelity** (Stanton et al., "Does Knowledge Distillation Really Work?", NeurIPS 2021, Sec. 3): how closely a
student matches its teacher, on the inputs at hand —

* *top-1 agreement* ``(1/n) Σ_i 1[argmax_j p_s(x_i)_j = argmax_j p_t(x_i)_j]`` (higher is better);
* *average predictive KL* ``(1/n) Σ_i KL(p_t(x_i) ‖ p_s(x_i))`` with ``p = softmax(z)`` at temperature 1
  (lower is better).

Both exist as functions (:func:`top1_agreement`, :func:`predictive_kl`) and as torchmetrics ``Metric``s
(:class:`TopOneAgreement`, :class:`PredictiveKL`) whose sum states pool exactly over batches and, through
``merge_state``, over clients. :class:`DistillationFidelity` bundles the two for a client module: call it on each
batch's ``(student_logits, teacher_logits)``, read :meth:`DistillationFidelity.compute` (a ``dict`` keyed by
:data:`AGREEMENT_KEY` / :data:`KL_KEY`) into ``ClientUpdate.metrics``; the ``FederatedLoop`` averages every update
metric over the round's clients (``mean_client_metrics``), so the keys appear in the round metrics as they are.

Every function and metric takes ``(student_logits, teacher_logits)`` in that order and computes in float32.

**Weight divergence** (Zhao et al., "Federated Learning with Non-IID Data", 2018, Sec. 3.2):
``‖w_FL − w_central‖ / ‖w_central‖`` over the floating-point tensors of two state dicts (:func:`weight_divergence`).

Example — a server-side distillation (FedDF-style) logging fidelity of the fused student to the ensemble::

    fidelity = DistillationFidelity()
    for x in server_loader:
        fidelity(student(x), ensemble_logits(x))    # accumulates; returns this batch's values
    metrics.update(fidelity.compute())               # {"fidelity_agreement": ..., "fidelity_kl": ...}
    fidelity.reset()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from typing_extensions import override

__all__ = [
    "AGREEMENT_KEY",
    "KL_KEY",
    "DistillationFidelity",
    "PredictiveKL",
    "TopOneAgreement",
    "predictive_kl",
    "top1_agreement",
    "weight_divergence",
]

AGREEMENT_KEY = "fidelity_agreement"
"""Metric name of the teacher–student top-1 agreement in ``ClientUpdate.metrics`` and the round metrics."""
KL_KEY = "fidelity_kl"
"""Metric name of the average predictive KL(teacher ‖ student) in ``ClientUpdate.metrics`` and the round metrics."""


def _check(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"fidelity: student and teacher logits must both be (N, C); got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )


def _agreements(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``(N,)`` 1.0 where the top-1 classes agree."""
    return (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()


def _kls(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``(N,)`` per-sample ``KL(softmax(t) ‖ softmax(s))``."""
    teacher_log = F.log_softmax(teacher_logits.detach().float(), dim=1)
    student_log = F.log_softmax(student_logits.detach().float(), dim=1)
    return (teacher_log.exp() * (teacher_log - student_log)).sum(dim=1)


def top1_agreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Fraction of samples whose student and teacher top-1 classes agree (Stanton et al. 2021), a scalar in [0, 1].

    Args:
        student_logits: ``(N, C)`` student class scores (logits or probabilities: only the argmax matters).
        teacher_logits: ``(N, C)`` teacher class scores.
    """
    _check(student_logits, teacher_logits)
    return _agreements(student_logits, teacher_logits).mean()


def predictive_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Average predictive ``KL(softmax(z_t) ‖ softmax(z_s))`` over samples (Stanton et al. 2021), a scalar ≥ 0.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
    """
    _check(student_logits, teacher_logits)
    return _kls(student_logits, teacher_logits).mean()


class _PooledMean(Metric):
    """Sum of per-sample values and sample count; ``compute`` is their ratio (exact pooling, mergeable)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _values(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        raise NotImplementedError

    @override
    def update(self, student_logits: Tensor, teacher_logits: Tensor) -> None:
        """Accumulates a batch of ``(student_logits, teacher_logits)``, both ``(N, C)``."""
        _check(student_logits, teacher_logits)
        values = self._values(student_logits.detach(), teacher_logits.detach())
        self.total += values.sum()
        self.count += values.numel()

    @override
    def compute(self) -> Tensor:
        """The pooled mean over every sample seen (NaN before any sample)."""
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float32, device=self.total.device)
        return (self.total / self.count).float()


class TopOneAgreement(_PooledMean):
    """Teacher–student top-1 agreement, pooled over samples (Stanton et al. 2021). ``update(student, teacher)``."""

    higher_is_better = True
    full_state_update = False

    @override
    def _values(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return _agreements(student_logits, teacher_logits)


class PredictiveKL(_PooledMean):
    """Average predictive ``KL(p_teacher ‖ p_student)``, pooled over samples (Stanton et al. 2021).

    ``update(student_logits, teacher_logits)``.
    """

    higher_is_better = False
    full_state_update = False

    @override
    def _values(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return _kls(student_logits, teacher_logits)


class DistillationFidelity(nn.Module):
    """Both fidelity metrics for one student/teacher pair, keyed as they appear in update and round metrics.

    Calling the module on a batch accumulates it and returns that batch's values (``{AGREEMENT_KEY: ...,
    KL_KEY: ...}`` as tensors); :meth:`compute` returns the pooled values as floats (an empty dict before any
    update); :meth:`reset` starts over. The metric states are not part of ``state_dict`` (nothing is uploaded).

    Args:
        prefix: Prepended to both keys (e.g. ``"server_"`` for a server-side distillation).
    """

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix
        self.agreement = TopOneAgreement()
        self.kl = PredictiveKL()

    @property
    def keys(self) -> tuple[str, str]:
        """The two metric names, ``(agreement, kl)``."""
        return f"{self.prefix}{AGREEMENT_KEY}", f"{self.prefix}{KL_KEY}"

    @override
    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        """Accumulates the batch and returns its own agreement and KL."""
        self.agreement.update(student_logits, teacher_logits)
        self.kl.update(student_logits, teacher_logits)
        agreement_key, kl_key = self.keys
        return {
            agreement_key: top1_agreement(student_logits.detach(), teacher_logits.detach()),
            kl_key: predictive_kl(student_logits.detach(), teacher_logits.detach()),
        }

    def update(self, student_logits: Tensor, teacher_logits: Tensor) -> None:
        """Accumulates a batch without returning its values."""
        self(student_logits, teacher_logits)

    def compute(self) -> dict[str, float]:
        """Pooled agreement and KL over every sample since the last :meth:`reset`; ``{}`` if none."""
        if int(self.agreement.count) == 0:
            return {}
        agreement_key, kl_key = self.keys
        return {
            agreement_key: float(self.agreement.compute()),
            kl_key: float(self.kl.compute()),
        }

    def reset(self) -> None:
        """Clears both metrics."""
        self.agreement.reset()
        self.kl.reset()


def _floating_state(source: Mapping[str, Tensor] | nn.Module) -> Mapping[str, Tensor]:
    return source.state_dict() if isinstance(source, nn.Module) else source


def weight_divergence(
    w_fl: Mapping[str, Tensor] | nn.Module,
    w_central: Mapping[str, Tensor] | nn.Module,
    keys: Iterable[str] | None = None,
) -> float:
    """``‖w_FL − w_central‖ / ‖w_central‖`` (Zhao et al. 2018, Sec. 3.2), over concatenated tensors, in float64.

    Args:
        w_fl: The federated model's state dict (or module).
        w_central: The centrally trained reference model's state dict (or module).
        keys: Which tensors to compare; default every floating-point tensor of ``w_central`` (parameters and
            float buffers such as BN running statistics; integer counters are skipped).

    Raises:
        KeyError: ``w_fl`` lacks a compared key.
        ValueError: a shape differs, or ``w_central`` has zero norm / no compared tensor.
    """
    fl, central = _floating_state(w_fl), _floating_state(w_central)
    names = [k for k, v in central.items() if torch.is_floating_point(v)] if keys is None else list(keys)
    if not names:
        raise ValueError("weight_divergence: no floating-point tensor to compare")
    diff_sq = torch.zeros((), dtype=torch.float64)
    ref_sq = torch.zeros((), dtype=torch.float64)
    for name in names:
        if name not in fl:
            raise KeyError(f"weight_divergence: the federated state lacks '{name}'")
        if name not in central:
            raise KeyError(f"weight_divergence: the central state lacks '{name}'")
        a, b = fl[name].detach().to("cpu", torch.float64), central[name].detach().to("cpu", torch.float64)
        if a.shape != b.shape:
            raise ValueError(f"weight_divergence: '{name}' has shape {tuple(a.shape)} vs {tuple(b.shape)}")
        diff_sq += (a - b).pow(2).sum()
        ref_sq += b.pow(2).sum()
    if float(ref_sq) == 0.0:
        raise ValueError("weight_divergence: the central weights have zero norm")
    return float(diff_sq.sqrt() / ref_sq.sqrt())
