"""FedBABU: federated learning of the body only, with the head frozen at its initialization.

Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification" (ICLR 2022).
During federated training every client updates only the *body* (the extractor); the classifier head stays at
its random initialization, identical on all clients, and is never trained nor aggregated (the paper's
Algorithm 1: ``θ_head`` fixed, body updated by FedAvg). For evaluation each client fine-tunes the received
model on its own training data for a few epochs (Section 3; "fine-tuning the whole model" is the paper's
personalization) and evaluates the fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.client.split import Head, ParameterSelector

__all__ = ["FedBABUClient"]

FINETUNE_PARTS = ("all", "personal")


class FedBABUClient(FederatedClient):
    """FedBABU client (Oh et al. 2022, Alg. 1): body-only federated training, head fine-tuned for evaluation.

    * **Split.** The backbone's classifier (:class:`~lit_fed.client.split.Head`) is added to the personal
      selectors, so it is never sent nor aggregated. Since it never trains, every client's stored head stays
      bit-identical to the initialization, which is exactly the paper's "head shared and frozen at init" — without
      a server average that could perturb it by rounding.
    * **Local training.** The schedule is ``LocalSchedule([Phase("shared")])``: only the body trains, for the
      loop's ``local_epochs``; the head has ``requires_grad=False`` and is also left out of the optimizer.
    * **Evaluation.** :meth:`personalize` fine-tunes for ``finetune_epochs`` epochs on the client's training
      split with a *fresh* optimizer from the client's optimizer factory (SGD lr 0.005 by default), in float32
      (evaluation runs outside the client Trainer's autocast). The result is used only for the personalized
      evaluation: the loop reloads the global and stored state for every client, so fine-tuning is never
      uploaded, stored, nor seen by the next client. Global accuracy uses the un-fine-tuned model (global
      body + initial head).

    Args:
        backbone: A model with timm's feature/head contract.
        finetune_epochs: Fine-tuning epochs before personalized evaluation. [design] default 1 (CPU-friendly;
            the paper fine-tunes for a few epochs). 0 disables fine-tuning.
        finetune: ``"all"`` fine-tunes the whole model (the paper) or ``"personal"`` the head only.
        personal: Extra personal selectors (the head is always added).
        schedule: Local schedule; default body-only for ``local_epochs`` (the paper's rule). A phase training
            ``"personal"`` or ``"all"`` would break the frozen-head rule and is refused.
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler); the regularizers act
            on local training (e.g. a proximal term on the body), the optimizer is used for local training and
            (freshly) for fine-tuning, the scheduler for local training only.

    Raises:
        ValueError: a bad ``finetune``/``finetune_epochs`` or a schedule that trains the head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        finetune_epochs: int = 1,
        finetune: str = "all",
        personal: Sequence[ParameterSelector] = (),
        schedule: LocalSchedule | None = None,
        **kwargs: Any,
    ) -> None:
        if finetune not in FINETUNE_PARTS:
            raise ValueError(f"FedBABUClient: finetune must be one of {FINETUNE_PARTS}, got {finetune!r}")
        if finetune_epochs < 0:
            raise ValueError(f"FedBABUClient: finetune_epochs must be >= 0, got {finetune_epochs}")
        if schedule is None:
            schedule = LocalSchedule([Phase(train="shared")])
        elif any(phase.train != "shared" for phase in schedule.phases):
            raise ValueError(
                f"FedBABUClient: the head stays frozen during FL, so every phase must train 'shared'; got {schedule}"
            )
        selectors = list(personal)
        if not any(isinstance(s, Head) for s in selectors):
            selectors.append(Head())
        super().__init__(backbone, selectors, schedule=schedule, **kwargs)
        self.finetune_epochs = finetune_epochs
        self.finetune = finetune

    @override
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The shared (body) parameters only: the head is frozen for the whole of federated training."""
        personal = set(self.personal_keys())
        return (p for name, p in self.named_parameters() if name not in personal and p.requires_grad)

    def _finetune_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.SGD(params, lr=0.005)
        return self.optimizer_factory(params)

    @override
    def personalize(self, train_dataloader: Iterable[Any]) -> None:
        """Fine-tunes on the local training data before personalized evaluation (Oh et al. 2022, Sec. 3).

        Trains ``self.finetune`` parameters (``"all"`` or the head) for ``finetune_epochs`` epochs with a fresh
        optimizer, in train mode, then leaves the module in eval mode with every parameter trainable again.
        """
        if self.finetune_epochs == 0:
            return
        device = next(self.parameters()).device
        self.train()
        self.set_trainable(self.finetune)
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self._finetune_optimizer(params)
        try:
            with torch.enable_grad():
                for _ in range(self.finetune_epochs):
                    for batch in train_dataloader:
                        optimizer.zero_grad(set_to_none=True)
                        self.compute_step(move_data_to_device(batch, device)).loss.backward()
                        optimizer.step()
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.set_trainable("all")
            self.eval()
