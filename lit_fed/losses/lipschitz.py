"""FedAlign's Lipschitz-alignment terms, as in the authors' code (``methods/fedalign.py``).

Mendieta et al., "Local Learning Matters: Rethinking Data Heterogeneity in Federated Learning" (CVPR 2022),
Sec. 3.2–3.3.

* :func:`transmitting_matrix` — ``G = a bᵀ / (HW)`` between a block's input ``a`` and output ``b`` feature maps,
  flattened over space (``a`` adaptively average-pooled to ``b``'s spatial size first when larger).
* :func:`spectral_norm_power_iteration` — ``σ(G) = √λ_max(G Gᵀ)`` by power iteration from the all-ones vector
  (10 iterations by default), per sample; differentiable through every iteration.
* :func:`lipschitz_constant` — ``σ`` of the transmitting matrix of a block, computed in float32.
* :func:`lipschitz_mse` — ``MSE(σ_slice, σ_full.detach())``.
* :func:`scale_to_reference` — rescales a loss to ``μ·reference`` while keeping its gradient direction:
  ``loss · μ·reference.item()/loss.item()`` (FedAlign scales ``L_lip`` to ``μ·CE``).
* :class:`LipschitzAlignmentLoss` — the whole term as a module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

__all__ = [
    "LipschitzAlignmentLoss",
    "lipschitz_constant",
    "lipschitz_mse",
    "scale_to_reference",
    "spectral_norm_power_iteration",
    "transmitting_matrix",
]


def transmitting_matrix(fm_in: Tensor, fm_out: Tensor) -> Tensor:
    """``G = a bᵀ / (HW)``: ``(B, C_in, C_out)`` from ``(B, C_in, H_in, W_in)`` and ``(B, C_out, H, W)`` maps.

    ``fm_in`` is adaptively average-pooled to ``(H, W)`` when it is larger (the block down-samples), as in the
    authors' ``transmitting_matrix``. 2-D inputs ``(B, C)`` are treated as ``1×1`` maps.

    Raises:
        ValueError: the batch sizes differ or ``fm_in`` is spatially smaller than ``fm_out``.
    """
    if fm_in.dim() == 2:
        fm_in = fm_in[:, :, None, None]
    if fm_out.dim() == 2:
        fm_out = fm_out[:, :, None, None]
    if fm_in.dim() != 4 or fm_out.dim() != 4 or fm_in.shape[0] != fm_out.shape[0]:
        raise ValueError(
            f"transmitting_matrix: expected (B, C, H, W) maps with equal B, got {tuple(fm_in.shape)} and "
            f"{tuple(fm_out.shape)}"
        )
    if fm_in.shape[2:] != fm_out.shape[2:]:
        if fm_in.shape[2] < fm_out.shape[2] or fm_in.shape[3] < fm_out.shape[3]:
            raise ValueError(
                f"transmitting_matrix: the input map {tuple(fm_in.shape)} is smaller than the output map "
                f"{tuple(fm_out.shape)}"
            )
        fm_in = F.adaptive_avg_pool2d(fm_in, fm_out.shape[2:])
    a = fm_in.flatten(2)  # (B, C_in, HW)
    b = fm_out.flatten(2).transpose(1, 2)  # (B, HW, C_out)
    return torch.bmm(a, b) / a.shape[2]


def spectral_norm_power_iteration(matrix: Tensor, iterations: int = 10, eps: float = 1e-12) -> Tensor:
    """Largest singular value of ``matrix`` (``(m, n)`` or batched ``(B, m, n)``) by power iteration.

    The authors' ``top_eigenvalue``: ``K = G Gᵀ``, ``v₀ = 1``, ``v ← K v / ‖K v‖`` for ``iterations`` steps,
    ``σ = √‖K v‖`` (the eigenvalue estimate ``‖K v_{t-1}‖`` for unit ``v_{t-1}``). [design] ``eps`` guards the
    all-zero matrix (dead ReLU features): norms are clamped to ``eps`` so the result is ``√eps`` ≈ 0 instead of NaN.

    Args:
        matrix: ``(m, n)`` or ``(B, m, n)``.
        iterations: Power-iteration steps (FedAlign: 10).
        eps: Lower clamp of the norms.

    Returns:
        ``()`` or ``(B,)`` spectral norms, in the matrix's dtype.

    Raises:
        ValueError: a bad shape or ``iterations < 1``.
    """
    if iterations < 1:
        raise ValueError(f"spectral_norm_power_iteration: iterations must be >= 1, got {iterations}")
    unbatched = matrix.dim() == 2
    if unbatched:
        matrix = matrix.unsqueeze(0)
    if matrix.dim() != 3:
        raise ValueError(f"spectral_norm_power_iteration: expected (m, n) or (B, m, n), got {tuple(matrix.shape)}")
    gram = torch.bmm(matrix, matrix.transpose(1, 2))  # (B, m, m)
    v = torch.ones(matrix.shape[0], matrix.shape[1], 1, device=matrix.device, dtype=matrix.dtype)
    norm = v
    for _ in range(iterations):
        product = torch.bmm(gram, v)
        norm = product.norm(dim=1, keepdim=True).clamp_min(eps)
        v = product / norm
    sigma = norm.sqrt().view(-1)
    return sigma[0] if unbatched else sigma


def lipschitz_constant(fm_in: Tensor, fm_out: Tensor, iterations: int = 10) -> Tensor:
    """``σ(G)`` per sample, ``(B,)``: the spectral norm of the block's transmitting matrix, in float32.

    Autocast is disabled inside: the power iteration's squared norms would lose most of their precision in
    float16/bfloat16.
    """
    with torch.autocast(device_type=fm_in.device.type, enabled=False):
        return spectral_norm_power_iteration(transmitting_matrix(fm_in.float(), fm_out.float()), iterations)


def lipschitz_mse(sigma_slice: Tensor, sigma_full: Tensor) -> Tensor:
    """``MSE(σ_slice, σ_full.detach())``: only the slice is pulled towards the full-width network."""
    return F.mse_loss(sigma_slice.float(), sigma_full.detach().float())


def scale_to_reference(loss: Tensor, reference: Tensor | float, mu: float) -> Tensor:
    """``loss · (μ · reference / loss.item())``: the value becomes ``μ·reference``, the gradient keeps its direction.

    FedAlign: ``L_lip ← μ·(CE.item()/L_lip.item())·L_lip``. The factor is a constant (no gradient through it).
    [design] A zero ``loss`` (nothing to align) gives ``0·loss`` rather than a division by zero.
    """
    value = float(loss.detach())
    if value == 0.0:
        return loss * 0.0
    return loss * (mu * float(reference) / value)


class LipschitzAlignmentLoss(nn.Module):
    """FedAlign's scaled Lipschitz term as a module.

    ``forward(slice_in, slice_out, full_in, full_out, ce)`` returns
    ``scale_to_reference(MSE(σ(G_slice), σ(G_full).detach()), ce, μ)``.

    Args:
        mu: Weight μ relative to the cross-entropy (FedAlign default 0.45).
        iterations: Power-iteration steps (10).
    """

    def __init__(self, mu: float = 0.45, iterations: int = 10) -> None:
        super().__init__()
        if mu < 0:
            raise ValueError(f"LipschitzAlignmentLoss: mu must be >= 0, got {mu}")
        self.mu = mu
        self.iterations = iterations

    @override
    def forward(self, slice_in: Tensor, slice_out: Tensor, full_in: Tensor, full_out: Tensor, ce: Tensor) -> Tensor:
        sigma_slice = lipschitz_constant(slice_in, slice_out, self.iterations)
        with torch.no_grad():
            sigma_full = lipschitz_constant(full_in.detach(), full_out.detach(), self.iterations)
        return scale_to_reference(lipschitz_mse(sigma_slice, sigma_full), ce, self.mu)
