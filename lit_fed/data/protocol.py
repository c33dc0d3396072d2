"""What the federated loop and the client worker need from federated data, as typed protocols.

:class:`FederatedData` is required: per-client loaders and sample counts, the global test loader, the number of
clients and classes. :class:`PartitionReport` is optional: per-client label counts, the partition's summary, plot
and saved indices, and what the global test loader serves, which the loop uses for shot-group accuracy and the run
report when the data offers them.
:class:`~lit_fed.data.datamodule.FederatedDataModule` (and its subclasses) implement both.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor


@runtime_checkable
class FederatedData(Protocol):
    """Per-client data access."""

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of classes of the classification task."""
        ...

    def setup(self, stage: str | None = None) -> None:
        """Builds the partition (idempotent)."""
        ...

    def client_train_dataloader(self, client_id: int, round: int = 0) -> Iterable[Any]:
        """``client_id``'s local training batches in ``round`` (their order a function of the run seed and round)."""
        ...

    def client_test_dataloader(self, client_id: int) -> Iterable[Any]:
        """``client_id``'s local test batches."""
        ...

    def client_num_train_samples(self, client_id: int) -> int:
        """``client_id``'s number of training samples (the aggregation weight)."""
        ...

    def global_test_dataloader(self) -> Iterable[Any]:
        """The batches the global model is evaluated on."""
        ...


@runtime_checkable
class PartitionReport(Protocol):
    """Label statistics of the partition, for shot-group accuracy and the run report."""

    @property
    def global_test_name(self) -> str:
        """What the global test loader serves (``"global test set"``, ``"pooled client test splits"``)."""
        ...

    def save_partition(self, directory: str | Path) -> Path:
        """Writes the partition actually used (per-client indices) to a file in ``directory``; returns it."""
        ...

    def client_label_counts(self, client_id: int) -> Tensor:
        """``(C,)`` training-sample counts per class of ``client_id``."""
        ...

    def partition_histogram(self) -> np.ndarray:
        """``(K, C)`` samples per client and class."""
        ...

    def partition_summary(self) -> dict[str, float | int]:
        """Scalar statistics of the partition (logged as hyper-parameters)."""
        ...

    def plot_partition(self, path: str | Path) -> Path:
        """Writes a per-client class histogram figure to ``path``."""
        ...
