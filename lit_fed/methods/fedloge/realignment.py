"""GLA-FR: FedLoGe's Global and Local Adaptive Feature Realignment (Xiao et al., ICLR 2024).

Post-hoc, training-free transforms of the auxiliary global head ``ψ`` (rows ``ψ_c``, a ``(C, d)`` weight):

* **Global** (:func:`global_realign`): ``ψ̂_c = s · ψ_c / ‖ψ_c‖`` with ``s = 1.7`` — every class vector gets the
  same norm, removing the head-class norm bias that long-tailed training leaves in ``ψ``. [code]
  ``util/update_baseline.py::globaltest_calibra`` (``inverse_cali_alpha = 1.7 / ‖ψ_c‖``; the bias is kept).
* **Local** (:func:`norm_transfer`): Euclidean norm transfer from the client's local head ``φ_k``:
  ``ψ_{k,c} = ‖φ_{k,c}‖ · ψ_c``, and the personalized logits are ``φ_k(f) + ψ_k(f)``. [code]
  ``update_weights_norm_init`` (``g_aux.weight * ‖l_head.weight_c‖``, bias kept) followed by ``localtest``
  (``g_head(features) + l_head(features)``). With ``normalize=True`` the direction ``ψ_c/‖ψ_c‖`` is used instead,
  so that ``‖ψ_{k,c}‖ = ‖φ_{k,c}‖`` exactly ([design] variant; see :func:`norm_transfer`).
* :func:`mask_absent_classes` — the official local evaluation's masking of classes a client has no data of
  (explicit and off by default in :class:`~lit_fed.methods.fedloge.client.FedLoGeClient`).

All functions are pure: they return new tensors and never modify their inputs.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["GLOBAL_SCALE", "global_realign", "mask_absent_classes", "norm_transfer"]

GLOBAL_SCALE = 1.7
"""The common class-vector norm of the realigned global head. [code] ``globaltest_calibra``."""

_EPS = 1e-12


def _row_norms(weight: Tensor) -> Tensor:
    return weight.norm(dim=1, keepdim=True)


def global_realign(weight: Tensor, scale: float = GLOBAL_SCALE) -> Tensor:
    """``ψ̂_c = scale · ψ_c / ‖ψ_c‖`` for every row of a ``(C, d)`` weight (GLA-FR, global part).

    A zero row stays zero (its norm is clamped to 1e-12 in the division).
    """
    return weight * (scale / _row_norms(weight).clamp_min(_EPS))


def norm_transfer(aux_weight: Tensor, local_weight: Tensor, normalize: bool = False) -> Tensor:
    """Euclidean norm transfer (GLA-FR, local part): ``ψ_{k,c} = ‖φ_{k,c}‖ · ψ_c``.

    Args:
        aux_weight: ``(C, d)`` the auxiliary global head ``ψ``.
        local_weight: ``(C, d)`` the client's local head ``φ_k``.
        normalize: ``False`` (default, [code] ``update_weights_norm_init``): scale the raw ``ψ_c``,
            so ``‖ψ_{k,c}‖ = ‖φ_{k,c}‖ · ‖ψ_c‖``. ``True`` ([design]): scale the unit direction ``ψ_c / ‖ψ_c‖``, so
            ``‖ψ_{k,c}‖ = ‖φ_{k,c}‖`` — the local head's norms are transferred onto ``ψ``'s directions.

    Raises:
        ValueError: the shapes differ.
    """
    if aux_weight.shape != local_weight.shape:
        raise ValueError(
            f"norm_transfer: the global head {tuple(aux_weight.shape)} and the local head "
            f"{tuple(local_weight.shape)} differ in shape"
        )
    direction = aux_weight / _row_norms(aux_weight).clamp_min(_EPS) if normalize else aux_weight
    return direction * _row_norms(local_weight)


def mask_absent_classes(logits: Tensor, class_counts: Tensor) -> Tensor:
    """Sets the logits of classes with a zero count to ``−inf`` (a client's classes absent from its training data).

    The official local evaluation ([code] ``localtest``) sets those classes' weight rows to ``−1e10``; ``−inf`` on
    the logits is the same ranking without the dependence on the features' sign. When every count is zero (the
    client has no recorded data, e.g. it never trained) nothing is masked rather than every class.

    Args:
        logits: ``(B, C)``.
        class_counts: ``(C,)`` training-sample counts per class.
    """
    present = class_counts.to(logits.device) > 0
    if not bool(present.any()):
        return logits
    return logits.masked_fill(~present, float("-inf"))
