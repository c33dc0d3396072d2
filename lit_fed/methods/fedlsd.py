"""FedLSD: federated local self-distillation from the received global model, over all classes.

Lee, Shin, Jeong and Yun, "Preservation of the Global Knowledge by Not-True Self Knowledge Distillation in
Federated Learning" (arXiv:2106.03097v1, 2021) — the first version of the FedNTD paper. Each client keeps the global
model it received as a frozen teacher and minimizes ``(1 − β)·CE(z_l, y) + β·KL(softmax(z_g/τ) ‖ softmax(z_l/τ))``
over *all* classes (FedNTD later restricted the KL to the not-true classes). The server is FedAvg.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import StepOutput
from lit_fed.client.teacher import GlobalTeacherClient
from lit_fed.losses.distillation import self_distillation_kl

__all__ = ["FedLSDClient"]


class FedLSDClient(GlobalTeacherClient):
    r"""FedLSD client [paper]: ``L = (1 − β)·CE + β·KL(softmax(z_g/τ) ‖ softmax(z_l/τ))`` over all classes.

    The teacher ``z_g`` is the frozen copy of the received global model (see
    :class:`~lit_fed.client.teacher.GlobalTeacherClient`, which also reports the teacher–student fidelity).
    The task loss of :meth:`compute_step` is the *weighted* cross-entropy ``(1 − β)·CE`` (so ``training_step``'s
    "task loss + extra terms" is exactly the objective), and the distillation term ``β·KL`` (batchmean, no ``τ²``
    factor — the paper's objective has none) is logged as ``train_lsd``. Only training uses :meth:`compute_step`;
    evaluation reads the logits.

    Defaults [design]: τ 1, β 0.3 — the paper's tuned values could not be checked here (no network
    access); τ 1 matches FedNTD's default, β 0.3 keeps CE the dominant term. Tune both.

    Args:
        backbone: A model with timm's feature/head contract.
        tau: Softmax temperature τ > 0.
        beta: Distillation weight β ∈ [0, 1]; CE is weighted ``1 − β``.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule).

    Raises:
        ValueError: ``tau <= 0`` or ``beta`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tau: float = 1.0,
        beta: float = 0.3,
        **kwargs: Any,
    ) -> None:
        if tau <= 0:
            raise ValueError(f"FedLSDClient: tau must be > 0, got {tau}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"FedLSDClient: beta must be in [0, 1], got {beta}")
        super().__init__(backbone, **kwargs)
        self.tau = tau
        self.beta = beta

    @override
    def compute_step(self, batch: tuple[Tensor, Tensor]) -> StepOutput:
        """Forward pass; the task loss is ``(1 − β)·CE``."""
        output = super().compute_step(batch)
        output.loss = (1.0 - self.beta) * output.loss
        return output

    @override
    def distillation_losses(self, output: StepOutput, teacher_logits: Tensor) -> dict[str, Tensor]:
        """``{"lsd": β·KL(softmax(z_g/τ) ‖ softmax(z_l/τ))}``."""
        return {"lsd": self.beta * self_distillation_kl(output.logits, teacher_logits, self.tau)}
