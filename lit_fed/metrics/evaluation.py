"""Global and personalized accuracy (METHODS §0), computed with torchmetrics.

Personalized accuracy: each client evaluates its own model on its own test split; the pooled accuracy is
``Σ correct / Σ samples``, obtained exactly by merging the clients' metric states (``Metric.merge_state``),
not as a mean of means. The spread across clients (mean, standard deviation, 10th percentile) is reported
alongside.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy


def new_accuracy(num_classes: int) -> MulticlassAccuracy:
    """A micro-averaged (``correct / total``) accuracy metric."""
    return MulticlassAccuracy(num_classes=max(num_classes, 2), average="micro", sync_on_compute=False)


@torch.inference_mode()
def accumulate_accuracy(
    metric: MulticlassAccuracy,
    logits_fn: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
) -> MulticlassAccuracy:
    """Updates ``metric`` with the predictions of ``logits_fn`` over ``batches``; returns it."""
    for x, y in batches:
        logits = logits_fn(x.to(device, non_blocking=True))
        metric.update(logits.float().cpu(), y)
    return metric


@dataclass
class PersonalizedAccuracy:
    """Personalized accuracy across clients.

    Attributes:
        pooled: ``Σ correct / Σ samples`` over every client's test split.
        mean: Mean of the per-client accuracies.
        std: Standard deviation of the per-client accuracies.
        p10: 10th percentile of the per-client accuracies (the worst-off clients).
        per_client: Accuracy of each client.
    """

    pooled: float
    mean: float
    std: float
    p10: float
    per_client: dict[int, float] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "personal") -> dict[str, float]:
        """Flat scalar metrics for loggers."""
        return {
            f"{prefix}_acc": self.pooled,
            f"{prefix}_acc_mean": self.mean,
            f"{prefix}_acc_std": self.std,
            f"{prefix}_acc_p10": self.p10,
        }


def pool_client_metrics(client_metrics: dict[int, MulticlassAccuracy], num_classes: int) -> PersonalizedAccuracy:
    """Pools per-client accuracy metrics exactly (merged states) and summarizes their spread."""
    if not client_metrics:
        raise ValueError("no client metrics to pool")
    pooled = new_accuracy(num_classes)
    per_client: dict[int, float] = {}
    for client_id, metric in client_metrics.items():
        per_client[client_id] = float(metric.compute())
        pooled.merge_state(metric)
    values = np.array(list(per_client.values()), dtype=np.float64)
    with warnings.catch_warnings():  # merged states are complete although ``update`` was never called on them
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        pooled_value = float(pooled.compute())
    return PersonalizedAccuracy(
        pooled=pooled_value,
        mean=float(values.mean()),
        std=float(values.std()),
        p10=float(np.percentile(values, 10)),
        per_client=per_client,
    )
