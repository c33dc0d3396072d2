"""Ditto: a personal model per client, pulled towards the global model by a proximal term.

Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through Personalization" (ICML 2021).
Each client k solves ``min_v h_k(v; w*) = F_k(v) + λ/2 ‖v − w*‖²`` (Eq. 2) beside the global FedAvg problem:
Algorithm 1 updates the global copy ``w`` on the local loss and the personal model ``v_k`` on the local loss
plus ``λ (v_k − w_g)``, where ``w_g`` is the global model the client *received* this round. Only ``w`` is
sent; ``v_k`` never leaves the client.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.payloads import ServerMessage
from lit_fed.client.split import Modules, ParameterSelector

__all__ = ["DittoClient"]


class DittoClient(FederatedClient):
    r"""Ditto client (Li et al. 2021, Alg. 1): a global copy ``w`` (``backbone``) and a personal model ``v``.

    ``personal_model`` is a deep copy of the backbone made at construction; its keys (``personal_model.*``) are
    added to the personal split automatically, so the client uploads exactly the backbone's shared keys and
    keeps ``v`` in the client-state store across rounds.

    Per batch (the two local updates of Alg. 1): step ``w`` on ``CE(w(x), y)`` and step ``v`` on
    ``CE(v(x), y) + λ/2 ‖v − w_g‖²`` with ``w_g`` the weights received this round (not the current ``w``).
    [design] Both happen in the single ``training_step``: :meth:`extra_losses` adds
    ``personal_ce = CE(v(x), y)`` and ``ditto_prox = λ/2 Σ ‖v − w_g‖²`` (computed in float32 whatever the
    autocast precision) to the global copy's task loss. Since ``w`` and ``v`` are disjoint parameter sets, the
    gradient of the sum w.r.t. ``w`` is ``∇CE(w)`` and w.r.t. ``v`` is ``∇CE(v) + λ (v − w_g)``, so one step of a
    per-parameter optimizer (SGD, momentum, Adam, weight decay, ...) equals the two separate steps of Alg. 1 with
    the same learning rate. Gradient clipping by global norm (``gradient_clip_val`` with the default ``"norm"``
    algorithm) would couple them through the shared norm; clipping by value does not. The logged/uploaded
    ``train_loss`` is the sum of the three terms.

    The anchor ``w_g`` is taken when the client receives the global state (:meth:`receive_global`), or at the
    first training step of a plain Lightning fit; it is dropped at the end of each fit. Backbone parameters the
    split keeps personal (e.g. a personal head) anchor on the client's own values.

    Evaluation: :meth:`predict_logits` (personalized accuracy) uses ``v``; :meth:`global_logits` uses ``w``.

    Args:
        backbone: The global model ``w`` (timm's feature/head contract); ``v`` starts as a copy of it.
        lam: The proximal coefficient λ of Eq. 2 (the paper tunes it per dataset; 0.1…1 is a sensible range).
            Default 0.1.
        personal: Extra personal selectors (``Modules(["personal_model"])`` is always added).
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler, schedule); the
            regularizers act on the client (e.g. a proximal term on ``w``), the optimizer on ``w`` and ``v``
            together.

    Raises:
        ValueError: ``lam`` is negative.
    """

    def __init__(
        self,
        backbone: nn.Module,
        lam: float = 0.1,
        personal: Sequence[ParameterSelector] = (),
        **kwargs: Any,
    ) -> None:
        if lam < 0:
            raise ValueError(f"DittoClient: lam must be >= 0, got {lam}")
        selectors = [*personal, Modules(["personal_model"])]
        super().__init__(backbone, selectors, **kwargs)
        self.personal_model = copy.deepcopy(backbone)
        self.lam = lam
        self._anchors: list[Tensor] | None = None

    # -- the anchor w_g ----------------------------------------------------------------------------------
    def _anchor_on_backbone(self) -> None:
        """Records the backbone's current weights (fp32 copies) as ``w_g``, aligned with ``v``'s parameters."""
        own = dict(self.backbone.named_parameters())
        self._anchors = [own[name].detach().to(torch.float32).clone() for name, _ in self.personal_pairs()]

    def personal_pairs(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the personal model, names relative to the model (same as the backbone's)."""
        return list(self.personal_model.named_parameters())

    @override
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the global state into ``w`` and anchors ``v``'s proximal term on it."""
        super().receive_global(message)
        self._anchor_on_backbone()

    @override
    def on_train_end(self) -> None:
        super().on_train_end()
        self._anchors = None

    # -- losses ------------------------------------------------------------------------------------------
    def personal_logits(self, x: Tensor) -> Tensor:
        """Class scores of the personal model ``v``."""
        return self.personal_model.forward_head(self.personal_model.forward_features(x))

    def proximal_term(self) -> Tensor:
        """``λ/2 Σ ‖v − w_g‖²`` in float32 over the personal model's parameters."""
        if self._anchors is None:
            self._anchor_on_backbone()
        params = [p for _, p in self.personal_pairs()]
        device = params[0].device
        if self._anchors[0].device != device:  # type: ignore[index]
            self._anchors = [a.to(device) for a in self._anchors]  # type: ignore[union-attr]
        total = torch.zeros((), device=device, dtype=torch.float32)
        for param, anchor in zip(params, self._anchors, strict=True):  # type: ignore[arg-type]
            total = total + (param.float() - anchor).pow(2).sum()
        return 0.5 * self.lam * total

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """The regularizers' terms plus ``personal_ce`` (CE of ``v``) and ``ditto_prox`` (``λ/2‖v − w_g‖²``)."""
        extras = super().extra_losses(batch, output)
        x, y = batch[0], batch[1]
        extras["personal_ce"] = F.cross_entropy(self.personal_logits(x), y)
        extras["ditto_prox"] = self.proximal_term()
        return extras

    # -- evaluation --------------------------------------------------------------------------------------
    @override
    def predict_logits(self, x: Tensor) -> Tensor:
        """Personalized class scores: the personal model ``v``."""
        return self.personal_logits(x)

    @override
    def global_logits(self, x: Tensor) -> Tensor:
        """Global class scores: the global copy ``w``."""
        return self.classify(self.embed(x))
