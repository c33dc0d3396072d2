"""Per-class feature statistics of a client's data: the client side of CCVR (Luo et al. 2021, §4).

:func:`feature_statistics` computes, per class ``c``, the mean ``μ_{c,k}``, the unbiased covariance ``Σ_{c,k}``
(divisor ``N_{c,k} − 1``) and the count ``N_{c,k}`` of client ``k``'s features; :func:`embed_dataset` collects the
features a model's ``embed`` gives a dataloader. The server side (pooling, virtual features, calibration) is in
:mod:`lit_fed.methods.ccvr`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lit_fed.client.payloads import Payload


@dataclass
class FeatureStatistics(Payload):
    """Per-class feature statistics of one client's data.

    Attributes:
        means: ``(C, d)`` per-class feature means.
        covariances: ``(C, d, d)`` per-class unbiased covariances (divisor ``N_c - 1``).
        counts: ``(C,)`` per-class sample counts.
    """

    means: Tensor
    covariances: Tensor
    counts: Tensor

    def __post_init__(self) -> None:
        num_classes = self.counts.shape[0]
        if self.means.shape[0] != num_classes or self.covariances.shape[0] != num_classes:
            raise ValueError(
                f"FeatureStatistics: means {tuple(self.means.shape)}, covariances "
                f"{tuple(self.covariances.shape)} and counts {tuple(self.counts.shape)} disagree on the class count"
            )


def feature_statistics(
    features: Tensor, labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float64
) -> FeatureStatistics:
    """Per-class mean, unbiased covariance (divisor ``N_c − 1``) and count of ``features`` (CCVR, client side).

    A class with one sample has a zero covariance; an absent class has a zero mean and covariance and count 0.

    Args:
        features: ``(N, d)`` features.
        labels: ``(N,)`` class ids in ``[0, num_classes)``.
        num_classes: ``C``.
        dtype: Dtype of the returned means and covariances (computed in float64).

    Returns:
        ``FeatureStatistics(means (C, d), covariances (C, d, d), counts (C,) int64)``.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"feature_statistics: expected (N, d) and (N,), got {tuple(features.shape)}, {labels.shape}")
    x = features.detach().to(torch.float64)
    labels = labels.detach().to(x.device).long()
    dim = x.shape[1]
    means = x.new_zeros(num_classes, dim)
    covariances = x.new_zeros(num_classes, dim, dim)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    for c in counts.nonzero().flatten().tolist():
        fc = x[labels == c]
        means[c] = fc.mean(dim=0)
        if fc.shape[0] > 1:
            centered = fc - means[c]
            covariances[c] = centered.T @ centered / (fc.shape[0] - 1)
    return FeatureStatistics(means.to(dtype), covariances.to(dtype), counts.cpu().long())


@torch.no_grad()
def embed_dataset(module: nn.Module, dataloader: Iterable[Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(features (N, d) float32, labels (N,))`` of a dataloader's ``(x, y)`` batches through ``module.embed``."""
    features, labels = [], []
    for x, y in dataloader:
        features.append(module.embed(x.to(device)).float())  # type: ignore[operator]
        labels.append(y.to(device))
    if not features:
        return torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(features), torch.cat(labels)
