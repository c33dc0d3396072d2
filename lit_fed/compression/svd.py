"""Low-rank compression by truncated SVD with an energy threshold (FedKD's communication scheme).

Wu, Wu, Lyu, Huang and Xie, "Communication-efficient federated learning via knowledge distillation"
(FedKD, Nature Communications 2022), §"Dynamic gradients approximation": every 2-D update matrix ``M`` is
factorized ``M = U diag(σ) Vᵀ`` and only the top ``k`` singular triplets are sent, with ``k`` the smallest rank
whose energy exceeds a threshold,

    ``Σ_{i<k} σ_i² > T(t) · Σ_i σ_i²``,        ``T(t) = T_start + (t / R) (T_end − T_start)``

(the threshold rises over the ``R`` rounds, 0.95 → 0.98 in the paper). The official code rebuilds
with ``U·σ·V`` and a 1-D ``σ``, which is wrong; the reconstruction here is ``U diag(σ) Vᵀ``, the factorization above.

:func:`svd_compress` / :func:`svd_reconstruct` / :func:`energy_schedule` are the reusable pieces (FedKD's
mentee upload uses them directly); :class:`SVD` is the :class:`~lit_fed.compression.base.Compressor` that applies
them per tensor. Tensors with more than two dimensions (convolution kernels ``(out, in, kh, kw)``) are reshaped
to ``(out, in·kh·kw)`` first.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.compression.base import Compressor, shape_tensor


def energy_schedule(round: int, total_rounds: int, start: float = 0.95, end: float = 0.98) -> float:
    """FedKD's energy threshold ``T(t) = T_start + (t / R)(T_end − T_start)`` (§"Dynamic gradients approximation").

    Args:
        round: The round ``t`` (0-based).
        total_rounds: The number of rounds ``R`` (>= 1).
        start: ``T_start``.
        end: ``T_end``.
    """
    if total_rounds < 1:
        raise ValueError(f"energy_schedule: total_rounds must be >= 1, got {total_rounds}")
    return start + (round / total_rounds) * (end - start)


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """The smallest ``k`` with ``Σ_{i<k} σ_i² > energy · Σ σ²`` (singular values sorted descending).

    Returns 0 for an all-zero spectrum and the full rank when no ``k`` passes (``energy >= 1``).
    """
    squares = singular_values.double().pow(2)
    total = float(squares.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(squares, 0)
    passing = (cumulative > energy * total).nonzero()
    return int(passing[0]) + 1 if passing.numel() else int(singular_values.numel())


def as_matrix(tensor: Tensor) -> Tensor:
    """``tensor`` as a 2-D matrix: ``(d0, d1·d2·…)`` (a conv kernel ``(out, in, kh, kw)`` → ``(out, in·kh·kw)``)."""
    if tensor.dim() < 2:
        raise ValueError(f"as_matrix: needs at least 2 dimensions, got shape {tuple(tensor.shape)}")
    return tensor.reshape(tensor.shape[0], -1)


def svd_compress(matrix: Tensor, energy: float) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated SVD keeping the smallest rank whose energy exceeds ``energy`` (FedKD, Wu et al. 2022).

    Args:
        matrix: A 2-D tensor ``(m, n)``.
        energy: The threshold ``T`` in ``(0, 1]``: keep the smallest ``k`` with ``Σ_{i<k} σ_i² > T Σ σ²``.

    Returns:
        ``(U_k, S_k, V_k)`` of shapes ``(m, k)``, ``(k,)``, ``(n, k)`` in ``matrix``'s dtype (computed in at least
        float32), with ``matrix ≈ U_k diag(S_k) V_kᵀ`` (:func:`svd_reconstruct`).
    """
    if matrix.dim() != 2:
        raise ValueError(f"svd_compress: expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    work = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    k = energy_rank(s, energy)
    dtype = matrix.dtype
    return u[:, :k].to(dtype).contiguous(), s[:k].to(dtype).contiguous(), vh[:k].T.to(dtype).contiguous()


def svd_reconstruct(u: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``U diag(S) Vᵀ`` (not the official FedKD code's ``U·σ·V`` with a 1-D ``σ``)."""
    return (u * s.unsqueeze(0)) @ v.T


class SVD(Compressor):
    """Per-tensor truncated SVD with FedKD's rising energy threshold ``T(t)`` (Wu et al. 2022).

    Every floating-point tensor with ``dim() >= 2`` is reshaped to a matrix (:func:`as_matrix`), truncated by
    :func:`svd_compress` and sent as ``U``, ``S``, ``V`` plus its ``shape``; a tensor whose factors would not
    be smaller than the dense tensor goes dense (see :mod:`lit_fed.compression.base`).

    Args:
        energy_start: ``T_start`` (0.95).
        energy_end: ``T_end`` (0.98).
        energy: A fixed threshold instead of the schedule (``None``: the schedule, starting at ``energy_start``).
        dense_max_dim: Tensors with ``dim() <= dense_max_dim`` go dense (must be >= 1: SVD needs a matrix).
    """

    scheme = "svd"

    def __init__(
        self,
        energy_start: float = 0.95,
        energy_end: float = 0.98,
        energy: float | None = None,
        dense_max_dim: int = 1,
    ) -> None:
        if dense_max_dim < 1:
            raise ValueError(f"SVD: dense_max_dim must be >= 1 (a 1-D tensor has no SVD), got {dense_max_dim}")
        super().__init__(dense_max_dim)
        for name, value in (("energy_start", energy_start), ("energy_end", energy_end), ("energy", energy)):
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"SVD: {name} must be in (0, 1], got {value}")
        self.energy_start = float(energy_start)
        self.energy_end = float(energy_end)
        self.fixed_energy = energy
        self.energy = float(energy) if energy is not None else float(energy_start)

    @override
    def at_round(self, round: int, total_rounds: int) -> SVD:
        """A copy whose threshold is ``T(round)`` (:func:`energy_schedule`), unless a fixed energy was given."""
        scheduled = copy.copy(self)
        if self.fixed_energy is None:
            scheduled.energy = energy_schedule(round, total_rounds, self.energy_start, self.energy_end)
        return scheduled

    @override
    def compress_tensor(self, tensor: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """``U``, ``S``, ``V`` of the matrix view and the original ``shape``."""
        u, s, v = svd_compress(as_matrix(tensor), self.energy)
        return {"U": u, "S": s, "V": v, "shape": shape_tensor(tensor.shape)}

    @override
    def decompress_tensor(self, parts: Mapping[str, Tensor]) -> Tensor:
        """``U diag(S) Vᵀ`` reshaped to ``shape``."""
        shape = [int(d) for d in parts["shape"].tolist()]
        u, s, v = parts["U"], parts["S"], parts["V"]
        if s.numel() == 0:
            return torch.zeros(shape, dtype=u.dtype, device=u.device)
        return svd_reconstruct(u, s, v).reshape(shape)

    def __repr__(self) -> str:
        return f"SVD(energy_start={self.energy_start}, energy_end={self.energy_end}, energy={self.fixed_energy})"
