"""MOON's model-contrastive loss (Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021, Eq. 3).

``ℓ_con = −log( e^{cos(z, z_glob)/τ} / (e^{cos(z, z_glob)/τ} + Σ_i e^{cos(z, z_prev_i)/τ}) )``, averaged over the
batch: the representation ``z`` of the model being trained is pulled towards the global model's ``z_glob`` (the
positive pair) and pushed away from the previous local models' ``z_prev`` (the negatives). As in the authors'
code (``main.py``, ``train_net_fedcon``) it is a cross-entropy over the cosine similarities divided by ``τ`` with
the positive at index 0, and with no previous model the loss is 0 (a one-column cross-entropy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

__all__ = ["MOONContrastiveLoss", "moon_contrastive"]


def moon_contrastive(
    z: Tensor,
    z_glob: Tensor,
    z_prev: Tensor | Sequence[Tensor] | None,
    tau: float = 0.5,
) -> Tensor:
    """MOON's ``ℓ_con`` for a batch, in float32.

    ``z_glob`` and ``z_prev`` are treated as constants (detached): they come from frozen models.

    Args:
        z: ``(B, d)`` projections of the model being trained.
        z_glob: ``(B, d)`` projections of the received global model.
        z_prev: ``(B, d)`` projections of this client's previous local model, a sequence of them (MOON's
            ``model_buffer_size`` > 1: one negative each), or ``None`` (no previous model yet: the loss is 0).
        tau: Temperature ``τ > 0`` (MOON default 0.5).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: bad shapes or ``tau``.
    """
    if tau <= 0:
        raise ValueError(f"moon_contrastive: tau must be > 0, got {tau}")
    if z.dim() != 2 or z_glob.shape != z.shape:
        raise ValueError(
            f"moon_contrastive: z and z_glob must both be (B, d); got {tuple(z.shape)}, {tuple(z_glob.shape)}"
        )
    negatives = [] if z_prev is None else [z_prev] if isinstance(z_prev, Tensor) else list(z_prev)
    if not negatives:
        return torch.zeros((), device=z.device, dtype=torch.float32)
    for negative in negatives:
        if negative.shape != z.shape:
            raise ValueError(
                f"moon_contrastive: z_prev must be (B, d) like z {tuple(z.shape)}, got {tuple(negative.shape)}"
            )
    anchor = z.float()
    columns = [F.cosine_similarity(anchor, z_glob.detach().float(), dim=-1)]
    columns += [F.cosine_similarity(anchor, negative.detach().float(), dim=-1) for negative in negatives]
    logits = torch.stack(columns, dim=1) / tau
    labels = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    return F.cross_entropy(logits, labels)


class MOONContrastiveLoss(nn.Module):
    """:func:`moon_contrastive` as a module: ``loss(z, z_glob, z_prev)``.

    Args:
        tau: Temperature (MOON default 0.5).
    """

    def __init__(self, tau: float = 0.5) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"MOONContrastiveLoss: tau must be > 0, got {tau}")
        self.tau = tau

    @override
    def forward(self, z: Tensor, z_glob: Tensor, z_prev: Tensor | Sequence[Tensor] | None) -> Tensor:
        return moon_contrastive(z, z_glob, z_prev, self.tau)
