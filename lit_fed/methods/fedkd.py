"""FedKD: communication-efficient federated learning via knowledge distillation.

Wu, Wu, Lyu, Huang and Xie, "Communication-efficient federated learning via knowledge distillation" (Nature
Communications 13, 2022), §"Adaptive mutual knowledge distillation" (the task, distillation ``L^d`` and hidden
``L^h`` losses and the mentor's and mentee's objectives) and §"Dynamic gradients approximation"; the authors' code
``wuch15/FedKD`` (``model_bert.py``, ``run.py``). The rules below are [paper + code].

Each client holds a large **mentor** (personal, never communicated) and a small **mentee** (shared: the only part
uploaded, aggregated and downloaded). Per batch both learn from the labels and from each other:

    ``L = CE_T + CE_S + KL(p_S ‖ p_T)/Z + KL(p_T ‖ p_S)/Z + MSE(H_T, W_h H_S)/Z``,   ``Z = CE_T + CE_S`` (detached)

(:func:`fedkd_loss`): ``KL(p_S ‖ p_T)`` is the mentor's distillation loss (it learns from the mentee's soft
labels), ``KL(p_T ‖ p_S)`` the mentee's; the hidden-state loss compares the mentor's embedding ``H_T`` with a learnable
local linear map ``W_h`` of the mentee's embedding ``H_S`` (identity when the widths agree); dividing by the task
losses makes distillation count more when both models predict well. ``Z`` is detached here [design]; the
official code keeps its gradient, counts the hidden loss twice and uses ``KLDivLoss``'s element-wise mean (see
:class:`FedKDClient`'s notes).

Communication (§"Dynamic gradients approximation") is shared code, not duplicated here: the mentee's update
``Δ = w_k − w_g`` is SVD-compressed per matrix keeping the smallest rank with ``Σ_{i<k} σ_i² > T(t) Σ σ²``,
``T(t) = 0.95 + (t/R)(0.98 − 0.95)`` (:class:`lit_fed.compression.SVD`); the upload wrapper
:class:`~lit_fed.compression.CompressUpload` sets ``ClientUpdate.wire_nbytes`` to the serialized size of the
factors and hands the server the reconstruction ``w_g + U diag(σ) Vᵀ`` (not the official code's ``U·σ·V`` with a
1-D ``σ``); the server averages the reconstructions (FedAvg) and :class:`~lit_fed.compression.CompressDownload`
re-compresses what it sends. :func:`fedkd_compression` builds the two loop callbacks (``configs/method/fedkd.yaml``
lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.client.split import Modules, ParameterSelector
from lit_fed.compression import SVD, CompressDownload, CompressUpload
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.metrics.fidelity import DistillationFidelity
from lit_fed.models import TinyCNN

__all__ = ["FedKDClient", "fedkd_compression", "fedkd_loss"]


def _kl(target_logits: Tensor, input_logits: Tensor, detach_target: bool) -> Tensor:
    """``KL(softmax(target) ‖ softmax(input))``, batchmean, float32."""
    target = target_logits.detach() if detach_target else target_logits
    return F.kl_div(
        F.log_softmax(input_logits.float(), dim=1),
        F.log_softmax(target.float(), dim=1),
        reduction="batchmean",
        log_target=True,
    )


def fedkd_loss(
    mentor_logits: Tensor,
    mentee_logits: Tensor,
    target: Tensor,
    mentor_hidden: Tensor | None = None,
    mentee_hidden: Tensor | None = None,
    detach_targets: bool = True,
) -> dict[str, Tensor]:
    """FedKD's adaptive mutual distillation terms (Wu et al. 2022, ``L^task``, ``L^d``, ``L^h``), by name; sum = loss.

    ``mentor_ce = CE_T``, ``mentee_ce = CE_S``, ``Z = (CE_T + CE_S).detach()``, ``kd_mentor = KL(p_S ‖ p_T)/Z``,
    ``kd_mentee = KL(p_T ‖ p_S)/Z`` and, when both hidden states are given, ``hidden = MSE(H_T, H_S)/Z`` (mean over
    elements). KL divergences are batchmean, in float32.

    Args:
        mentor_logits: ``(B, C)`` the mentor's (teacher's) logits.
        mentee_logits: ``(B, C)`` the mentee's (student's) logits.
        target: ``(B,)`` labels.
        mentor_hidden: ``(B, d)`` the mentor's hidden state ``H_T``.
        mentee_hidden: ``(B, d)`` the mentee's hidden state mapped to the mentor's width (``W_h H_S``).
        detach_targets: Each KL's target distribution is a constant, so ``KL(p_S‖p_T)`` trains only the mentor and
            ``KL(p_T‖p_S)`` only the mentee, as the paper's per-model losses ``L_t^d``/``L_s^d``. ``False`` lets the
            gradient flow through both sides, as the official code's sum does.

    Raises:
        ValueError: shapes disagree.
    """
    if mentor_logits.shape != mentee_logits.shape or mentor_logits.dim() != 2:
        raise ValueError(
            f"fedkd_loss: mentor and mentee logits must both be (B, C); got {tuple(mentor_logits.shape)} and "
            f"{tuple(mentee_logits.shape)}"
        )
    ce_t = F.cross_entropy(mentor_logits.float(), target)
    ce_s = F.cross_entropy(mentee_logits.float(), target)
    z = (ce_t + ce_s).detach()
    terms = {
        "mentor_ce": ce_t,
        "mentee_ce": ce_s,
        "kd_mentor": _kl(mentee_logits, mentor_logits, detach_targets) / z,
        "kd_mentee": _kl(mentor_logits, mentee_logits, detach_targets) / z,
    }
    if mentor_hidden is not None and mentee_hidden is not None:
        if mentor_hidden.shape != mentee_hidden.shape:
            raise ValueError(
                f"fedkd_loss: hidden states differ in shape: {tuple(mentor_hidden.shape)} vs "
                f"{tuple(mentee_hidden.shape)} (map the mentee's to the mentor's width first)"
            )
        terms["hidden"] = F.mse_loss(mentee_hidden.float(), mentor_hidden.float()) / z
    return terms


def _in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    raise ValueError(
        f"FedKDClient: cannot tell the input channels of {type(model).__name__} (no Conv2d); pass a mentee explicitly"
    )


def _embedding_size(model: nn.Module) -> int:
    size = getattr(model, "num_features", None) or getattr(model.get_classifier(), "in_features", None)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"FedKDClient: cannot tell the embedding size of {type(model).__name__}")
    return size


class FedKDClient(FederatedClient):
    r"""FedKD client (Wu et al. 2022) [paper + code]: a personal mentor and a shared mentee that teach each other.

    **Models.** ``backbone`` is the **mentor** — the model config's model, e.g. ``FedAvgCNN`` (two 5×5 convolutions of
    32 and 64 channels, a 512-wide hidden layer) — kept local (personal: every ``backbone.*`` key). The **mentee** is
    shared and is what federation communicates: by default a ``TinyCNN(width=mentee_width)`` (one 3×3 convolution of
    16 channels with BatchNorm, a 2×2 average pool, a ``4·16 = 64``-wide embedding, then the classifier) with the
    mentor's input channels and classes [design], or any backbone with timm's contract. ``hidden_projection``
    (personal) maps the mentee's embedding to the mentor's width for the hidden-state loss.

    **Loss.** ``training_step`` adds to the mentor's CE (the task loss) the terms of :func:`fedkd_loss`:
    ``mentee_ce``, ``kd_mentor``, ``kd_mentee`` and ``hidden`` (logged as ``train_<name>``); the hidden states are the
    two models' embeddings. Deviations from the official code [design]: ``Z`` is
    detached; the hidden loss is counted once, not twice; KL is batchmean, not ``KLDivLoss``'s element mean; the
    targets of the KL terms are detached (``detach_targets``, see :func:`fedkd_loss`).

    **Prediction.** The personalized prediction (:meth:`predict_logits`, ``forward``) is the mentor's; the global
    model (:meth:`global_logits`) is the mentee [design]. Mentor–mentee fidelity (Stanton et al. 2021: top-1
    agreement and KL(mentor ‖ mentee) on the local training batches) is reported in ``ClientUpdate.metrics`` as
    ``fidelity_agreement`` / ``fidelity_kl``.

    **Communication.** Only the mentee's keys are uploaded (:meth:`shared_keys`); pair with
    :func:`fedkd_compression` (SVD upload and download, §"Dynamic gradients approximation").

    Args:
        backbone: The mentor (timm's feature/head contract).
        mentee: The mentee (timm's contract); ``None``: ``TinyCNN(in_channels, num_classes, width=mentee_width)``.
        mentee_width: Width of the default mentee.
        hidden_loss: Add the hidden-state MSE term.
        detach_targets: Detach each KL term's target distribution (see :func:`fedkd_loss`).
        personal: Extra personal selectors (the mentor and the projection are always personal).
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler, schedule); one
            optimizer over mentor, mentee and projection.

    Raises:
        ValueError: mentor and mentee disagree on the number of classes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mentee: nn.Module | None = None,
        mentee_width: int = 16,
        hidden_loss: bool = True,
        detach_targets: bool = True,
        personal: Sequence[ParameterSelector] = (),
        **kwargs: Any,
    ) -> None:
        selectors = [Modules(["backbone", "hidden_projection"]), *personal]
        super().__init__(backbone, selectors, **kwargs)
        if mentee is None:
            mentee = TinyCNN(_in_channels(backbone), self.num_classes, width=mentee_width)
        for attr in ("forward_features", "forward_head", "get_classifier"):
            if not callable(getattr(mentee, attr, None)):
                raise TypeError(f"FedKDClient: the mentee {type(mentee).__name__} lacks '{attr}()'")
        mentee_classes = int(getattr(mentee.get_classifier(), "out_features", getattr(mentee, "num_classes", 0)))
        if mentee_classes != self.num_classes:
            raise ValueError(f"FedKDClient: the mentor has {self.num_classes} classes, the mentee {mentee_classes}")
        self.mentee = mentee
        mentor_dim, mentee_dim = _embedding_size(backbone), _embedding_size(mentee)
        self.hidden_projection: nn.Module = (
            nn.Identity() if mentor_dim == mentee_dim else nn.Linear(mentee_dim, mentor_dim, bias=False)
        )
        self.hidden_loss = hidden_loss
        self.detach_targets = detach_targets
        self.fidelity = DistillationFidelity()

    # -- the two models ------------------------------------------------------------------------------------
    def mentee_embed(self, x: Tensor) -> Tensor:
        """The mentee's embedding ``H_S``, ``(B, d_S)``."""
        return self.mentee.forward_head(self.mentee.forward_features(x), pre_logits=True)

    def mentee_logits(self, x: Tensor) -> Tensor:
        """The mentee's class scores (the global model)."""
        return self.mentee.get_classifier()(self.mentee_embed(x))

    @override
    def global_logits(self, x: Tensor) -> Tensor:
        """The global model is the shared mentee."""
        return self.mentee_logits(x)

    # -- the loss ------------------------------------------------------------------------------------------
    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """The regularizers plus ``mentee_ce``, ``kd_mentor``, ``kd_mentee`` and ``hidden``; accumulates the fidelity.

        The mentor's CE is the task loss (:meth:`compute_step`), so it is not repeated here.
        """
        losses = super().extra_losses(batch, output)
        if output is None:
            output = self.compute_step(batch)
        x = batch[0]
        mentee_hidden = self.mentee_embed(x)
        mentee_logits = self.mentee.get_classifier()(mentee_hidden)
        hidden = self.hidden_loss and output.embedding is not None
        terms = fedkd_loss(
            output.logits,
            mentee_logits,
            output.target,
            output.embedding if hidden else None,
            self.hidden_projection(mentee_hidden) if hidden else None,
            self.detach_targets,
        )
        self.fidelity.update(mentee_logits.detach(), output.logits.detach())
        terms.pop("mentor_ce")  # the task loss already
        losses.update(terms)
        return losses

    @override
    def receive_global(self, message: ServerMessage) -> None:
        super().receive_global(message)
        self.fidelity.reset()

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self.fidelity.reset()

    @override
    def build_update(self, num_samples: int) -> ClientUpdate:
        """The mentee's state, plus the round's mentor–mentee fidelity in ``metrics``."""
        update = super().build_update(num_samples)
        update.metrics.update(self.fidelity.compute())
        return update


def fedkd_compression(energy_start: float = 0.95, energy_end: float = 0.98) -> list[LoopCallback]:
    """FedKD's communication (Wu et al. 2022) as loop callbacks: SVD-compressed upload and download.

    ``[CompressUpload(SVD(energy_start, energy_end), residual=False), CompressDownload(SVD(...))]`` — the energy
    threshold ``T(t)`` rises linearly from ``energy_start`` to ``energy_end`` over the loop's rounds. Put them last
    in the loop's callbacks.
    """
    return [
        CompressUpload(SVD(energy_start=energy_start, energy_end=energy_end), residual=False),
        CompressDownload(SVD(energy_start=energy_start, energy_end=energy_end)),
    ]
