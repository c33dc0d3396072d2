"""Global and personalized accuracy, computed with torchmetrics.

Personalized accuracy (PFLlib's protocol, Zhang et al. 2023): each client evaluates its own model on its own test
split; the pooled accuracy is ``Σ correct / Σ samples``, obtained exactly by merging the clients' metric states
(``Metric.merge_state``), not as a mean of means. The spread across clients (mean, standard deviation, 10th
percentile) is reported alongside. On long-tailed data, accuracy is also reported per shot group (many/medium/few
classes by their training-sample count), pooled over the same predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

from lit_fed.metrics.logged import LoggedMetrics


@dataclass
class ClientEvaluation:
    """One client's personalized evaluation on its own test split, as mergeable metric states.

    A classification client reports ``accuracy`` and ``class_stats``; a user module evaluated by its own
    ``validation_step`` reports ``logged`` instead (see :mod:`lit_fed.metrics.logged`).

    Attributes:
        client_id: The evaluated client.
        accuracy: Its micro accuracy (``correct / total``) metric.
        class_stats: Its per-class ``[tp, fp, tn, fn, support]`` counts (for shot-group accuracy).
        logged: What the module's own ``validation_step`` logged (user modules).
    """

    client_id: int
    accuracy: MulticlassAccuracy | None = None
    class_stats: MulticlassStatScores | None = None
    logged: LoggedMetrics | None = None


def new_accuracy(num_classes: int) -> MulticlassAccuracy:
    """A micro-averaged (``correct / total``) accuracy metric."""
    return MulticlassAccuracy(num_classes=max(num_classes, 2), average="micro", sync_on_compute=False)


def new_class_stats(num_classes: int) -> MulticlassStatScores:
    """Per-class ``[tp, fp, tn, fn, support]`` counts (for per-class and shot-group accuracy)."""
    return MulticlassStatScores(num_classes=max(num_classes, 2), average=None, sync_on_compute=False)


@torch.inference_mode()
def accumulate_accuracy(
    metric: MulticlassAccuracy,
    logits_fn: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    also: Sequence[Metric] = (),
) -> MulticlassAccuracy:
    """Updates ``metric`` (and the metrics in ``also``) with ``logits_fn``'s predictions over ``batches``."""
    for x, y in batches:
        logits = logits_fn(x.to(device, non_blocking=True)).float().cpu()
        metric.update(logits, y)
        for other in also:
            other.update(logits, y)
    return metric


def shot_groups(class_counts: Tensor, few_below: int = 20, many_above: int = 100) -> dict[str, Tensor]:
    """Many/medium/few-shot class masks by training-sample count.

    The split of Liu et al. 2019 ("Large-Scale Long-Tailed Recognition in an Open World"): many-shot classes have
    more than ``many_above`` training samples, few-shot fewer than ``few_below``, medium-shot the rest.

    Returns:
        The non-empty groups, each a boolean mask over classes.
    """
    if few_below > many_above:
        raise ValueError(f"shot thresholds need few_below <= many_above, got {few_below} > {many_above}")
    counts = class_counts.to(torch.float64)
    groups = {
        "many": counts > many_above,
        "medium": (counts >= few_below) & (counts <= many_above),
        "few": counts < few_below,
    }
    return {name: mask for name, mask in groups.items() if bool(mask.any())}


def group_accuracy(stats: MulticlassStatScores, groups: dict[str, Tensor], prefix: str) -> dict[str, float]:
    """``Σ_{c∈g} correct_c / Σ_{c∈g} n_c`` per shot group, from per-class stat scores (pooled exactly)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        scores = stats.compute()
    correct, total = scores[:, 0].double(), (scores[:, 0] + scores[:, 3]).double()
    out = {}
    for name, mask in groups.items():
        denominator = total[mask].sum()
        if denominator > 0:
            out[f"{prefix}_acc_{name}"] = float(correct[mask].sum() / denominator)
    return out


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
    with warnings.catch_warnings():  # merged (or received) states are complete although ``update`` was never called
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        for client_id, metric in client_metrics.items():
            per_client[client_id] = float(metric.compute())
            pooled.merge_state(metric)
        pooled_value = float(pooled.compute())
    values = np.array(list(per_client.values()), dtype=np.float64)
    return PersonalizedAccuracy(
        pooled=pooled_value,
        mean=float(values.mean()),
        std=float(values.std()),
        p10=float(np.percentile(values, 10)),
        per_client=per_client,
    )


def data_shot_groups(data: object, num_clients: int, few_below: int, many_above: int) -> dict[str, Tensor] | None:
    """Shot groups of a federation's training pool, when the data reports per-client label counts.

    Returns:
        :func:`shot_groups` of the pooled per-class training counts, or ``None`` when ``data`` is not a
        :class:`~lit_fed.data.protocol.PartitionReport`.
    """
    from lit_fed.data.protocol import PartitionReport

    if not isinstance(data, PartitionReport):
        return None
    class_counts = sum(data.client_label_counts(c) for c in range(num_clients))
    return shot_groups(torch.as_tensor(class_counts), few_below, many_above)
