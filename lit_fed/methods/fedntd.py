"""FedNTD: federated not-true distillation from the received global model.

Lee, Jeong, Shin, Bae and Yun, "Preservation of the Global Knowledge by Not-True Distillation in Federated
Learning" (NeurIPS 2022). Each client keeps a frozen copy of the global model it received and adds to its
cross-entropy a distillation term restricted to the *not-true* classes (Eq. 5–6):
``L = CE(z_l, y) + β τ² KL(softmax(z̃_g/τ) ‖ softmax(z̃_l/τ))``, where ``z̃`` drops the true-class logit. The
server is plain FedAvg.

The teacher's life cycle is :class:`lit_fed.client.teacher.GlobalTeacherClient`'s.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import StepOutput
from lit_fed.client.teacher import GlobalTeacherClient
from lit_fed.losses.distillation import not_true_kl

__all__ = ["FedNTDClient"]


class FedNTDClient(GlobalTeacherClient):
    r"""FedNTD client (Lee et al. 2022, Eq. 6) [code]: CE plus not-true distillation from the received global model.

    ``L = CE(z_l, y) + β τ² KL(softmax(z̃_g/τ) ‖ softmax(z̃_l/τ))`` where ``z̃`` are the logits with the true
    class removed (:func:`lit_fed.losses.not_true_kl`, batchmean) and ``z_g`` comes from the frozen copy of the
    received global model (see :class:`GlobalTeacherClient`). The extra term is logged as ``train_ntd``. The
    server is FedAvg. Defaults τ 1, β 1 (the authors' ``config/fedntd.json``). The authors' criterion omits the
    ``τ²`` factor written here (Hinton et al.'s gradient scale); the two agree at the default τ 1.

    Args:
        backbone: A model with timm's feature/head contract.
        tau: Softmax temperature τ > 0.
        beta: Weight β ≥ 0 of the not-true term.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule); no
            personal parameters in the paper's FedAvg setting.

    Raises:
        ValueError: ``tau <= 0`` or ``beta < 0``, or fewer than two classes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tau: float = 1.0,
        beta: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if tau <= 0:
            raise ValueError(f"FedNTDClient: tau must be > 0, got {tau}")
        if beta < 0:
            raise ValueError(f"FedNTDClient: beta must be >= 0, got {beta}")
        super().__init__(backbone, **kwargs)
        if self.num_classes < 2:
            raise ValueError(f"FedNTDClient: not-true distillation needs >= 2 classes, got {self.num_classes}")
        self.tau = tau
        self.beta = beta

    @override
    def distillation_losses(self, output: StepOutput, teacher_logits: Tensor) -> dict[str, Tensor]:
        """``{"ntd": β τ² not_true_kl(z_l, z_g, y, τ)}``."""
        kl = not_true_kl(output.logits, teacher_logits, output.target, self.tau)
        return {"ntd": self.beta * self.tau**2 * kl}
