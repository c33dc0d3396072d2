"""``ClientDataModule``: explicit per-client data (your own split) behind the federated datamodule's client API.

The clients, their samples and (optionally) their test splits come from a
:class:`~lit_fed.data.clients.ClientSource` — a PFLlib folder, LEAF JSON, arrays, or a Flower Datasets
partitioner — instead of being drawn from one dataset. Everything downstream is
:class:`~lit_fed.data.datamodule.FederatedDataModule`'s: normalization into one tensor, whole-batch loaders,
batch orders ``torch_generator(seed, "train", round, client)``, label statistics, the partition plot and
``save_partition``. A client without a given test split is split by ``train_fraction`` (stratified, stream
``(seed, "split", client)``); without a global test set the global model is evaluated on the pooled client test
splits (``global_test_name``).

From a config (one change to any config: the ``data:`` block)::

    data:
      class_path: lit_fed.data.ClientDataModule
      init_args:
        clients:
          class_path: lit_fed.data.PFLlibFolder
          init_args: {root: data/fmnist_dir01}
        batch_size: 10
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
from typing_extensions import override

from lit_fed.data.clients import ClientDataset, ClientSource
from lit_fed.data.datamodule import FederatedDataModule, _short_repr
from lit_fed.data.datasets import ArrayDataset
from lit_fed.data.partition_file import PartitionFile
from lit_fed.data.preprocessing import Normalization, check_train_fraction

__all__ = ["ClientDataModule"]


class ClientDataModule(FederatedDataModule):
    """Federated datamodule over explicit client data: one client per entry of ``clients``.

    Args:
        clients: Where the per-client data come from (see :mod:`lit_fed.data.clients`).
        batch_size: Training batch size (>= 1).
        eval_batch_size: Batch size of the test loaders (>= 1).
        train_fraction: For clients without a given test split: the fraction of their samples kept for training
            (``0 < f < 1``), or one fraction per client.
        seed: Run seed (local splits and batch orders).
        augment: Random crop and flip on training batches (see the base class).
        normalization: ``"dataset"`` (statistics of all clients' samples), ``"fixed"`` or ``"none"`` (see
            :mod:`lit_fed.data.preprocessing`; ``"none"`` keeps data that were normalized before saving).
        mean: Per-channel mean with ``normalization="fixed"``.
        std: Per-channel standard deviation with ``normalization="fixed"``.
        drop_last: Drop each client's last incomplete training batch.

    Raises:
        TypeError: ``clients`` is not a :class:`~lit_fed.data.clients.ClientSource`.
        ValueError: Bad arguments; at setup, invalid client data (naming the client and file).
        FileNotFoundError: At setup, a missing file.
    """

    def __init__(
        self,
        clients: ClientSource,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        train_fraction: float | Sequence[float] = 0.75,
        seed: int = 0,
        augment: bool = False,
        normalization: Normalization = "dataset",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_last: bool = False,
    ) -> None:
        L.LightningDataModule.__init__(self)  # not FederatedDataModule.__init__: no dataset or partitioner
        if not isinstance(clients, ClientSource):
            raise TypeError(f"clients must be a ClientSource, got {clients!r}")
        self._set_options(
            batch_size, eval_batch_size, train_fraction, None, seed, augment, normalization, mean, std, drop_last
        )
        self.clients = clients
        self.dataset = None
        self.partitioner = None
        self.imbalance_ratio = None
        self._num_clients = None
        self._built = None

    def _client_data(self) -> ClientDataset:
        data = self.clients.load()
        check_train_fraction(self.train_fraction, data.num_clients)
        self._num_clients = data.num_clients
        return data

    @override
    def prepare_data(self) -> None:
        """Loads (and validates) the client data once; the result is process-cached by the source."""
        self._client_data()

    @override
    def _load_source(self) -> ArrayDataset:
        return self._client_data().data

    @override
    def _client_splits(self, source: ArrayDataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return self._complete_splits(self._client_data().splits, source.train_y.numpy())

    @property
    @override
    def num_clients(self) -> int:
        """Number of clients of the source (loads it on first access)."""
        if self._num_clients is None:
            self._client_data()
        assert self._num_clients is not None
        return self._num_clients

    @property
    def client_names(self) -> list[str]:
        """Per-client names (LEAF user ids, or ``"0"``, ``"1"``, …)."""
        return list(self._client_data().names)

    @override
    def _plot_title(self) -> str:
        return f"{self._load_source().name}: {self.num_clients} clients"

    @override
    def _partition_record(self) -> PartitionFile:
        record = super()._partition_record()
        record.source_config = _short_repr(self.clients, limit=300)
        record.index_space = "client pool (each client's train samples, then its test samples, client by client)"
        record.client_names = self.client_names
        record.metadata["partitioner"] = None
        return record
