"""Flower Datasets interop: partition with a ``flwr_datasets`` partitioner, train with lit_fed.

`Flower Datasets <https://flower.ai/docs/datasets/>`_ splits a Hugging Face ``datasets.Dataset`` among clients
with a ``flwr_datasets.partitioner.Partitioner`` (``IidPartitioner``, ``DirichletPartitioner``,
``PathologicalPartitioner``, ``ShardPartitioner``, ``NaturalIdPartitioner``, …): assign ``partitioner.dataset``,
then ``partitioner.load_partition(i)`` gives client ``i``'s rows. Two adapters, both local (no download):

* :class:`FlowerPartitioner` is a lit_fed :class:`~lit_fed.data.partition.Partitioner`: it builds a local
  ``datasets.Dataset`` from the label array (a ``label`` column and the row index), lets the Flower partitioner
  split it, and returns exactly the row indices of each partition (sorted, as every lit_fed partition). Use it
  with :class:`~lit_fed.data.datamodule.FederatedDataModule` and any dataset source, from YAML too.
* :class:`FlowerDatasetClients` is a :class:`~lit_fed.data.clients.ClientSource` over your own
  ``datasets.Dataset`` (e.g. ``Dataset.from_dict({"image": x, "label": y})``) and a partitioner: client ``i``
  holds exactly ``partitioner.load_partition(i)``'s rows, in that order. Use it with
  :class:`~lit_fed.data.client_datamodule.ClientDataModule` (Python).

``flwr-datasets`` is an optional dependency: ``pip install -e ".[flwr-datasets]"``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lit_fed.data.clients import ClientDataset, ClientSource, build_client_dataset
from lit_fed.data.partition import Partitioner
from lit_fed.utils.seeding import derive_seed

__all__ = ["FlowerDatasetClients", "FlowerPartitioner", "require_flwr_datasets"]

INDEX_COLUMN = "_lit_fed_index"
"""The row-index column :class:`FlowerPartitioner` adds to the dataset it builds."""


def require_flwr_datasets() -> Any:
    """Imports and returns ``flwr_datasets.partitioner``.

    Raises:
        ImportError: ``flwr-datasets`` is not installed, with the command that installs it.
    """
    try:
        import datasets  # noqa: F401
        from flwr_datasets import partitioner
    except ImportError as error:
        raise ImportError(
            "Flower Datasets interop needs the optional 'flwr-datasets' package: pip install -e \".[flwr-datasets]\" "
            f"(or pip install flwr-datasets); import failed with: {error}"
        ) from error
    return partitioner


def _partition_rows(partitioner: Any, column: str) -> list[np.ndarray]:
    """Each partition's values of ``column``, as int64 arrays in the partitioner's order."""
    rows = []
    for partition_id in range(partitioner.num_partitions):
        rows.append(np.asarray(_load(partitioner, partition_id).with_format("numpy")[column], dtype=np.int64))
    return rows


def _load(partitioner: Any, partition_id: int) -> Any:
    """``partitioner.load_partition(partition_id)``, its failure named (e.g. more partitions than rows)."""
    try:
        return partitioner.load_partition(partition_id)
    except (IndexError, ValueError) as error:
        name = type(partitioner).__name__
        raise ValueError(f"{name} could not make partition {partition_id}: {type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class FlowerPartitioner(Partitioner):
    """A ``flwr_datasets`` partitioner as a lit_fed partitioner (see the module docstring).

    Example (YAML, under ``data.init_args``)::

        partitioner:
          class_path: lit_fed.data.FlowerPartitioner
          init_args:
            partitioner: DirichletPartitioner
            options: {alpha: 0.5, min_partition_size: 10}

    Attributes:
        partitioner: The name of a class in ``flwr_datasets.partitioner`` — built with ``num_partitions`` =
            the datamodule's ``num_clients``, ``partition_by`` = ``label_column`` and ``seed`` derived from the run
            seed (stream ``(seed, "partition", "flwr_datasets")``) where it takes them and ``options`` does not
            set them — or a partitioner instance without a dataset (Python; copied before use, so its own seed
            applies).
        options: Further keyword arguments for the named class (e.g. ``alpha``).
        label_column: Name of the label column of the built dataset.

    Raises:
        ImportError: ``flwr-datasets`` is not installed (when called).
        ValueError: An unknown class name, a partition count other than ``num_clients``, or an empty partition.
    """

    partitioner: Any = "IidPartitioner"
    options: Mapping[str, Any] = field(default_factory=dict)
    label_column: str = "label"

    def build(self, num_clients: int, seed: int) -> Any:
        """The Flower partitioner for ``num_clients`` clients and the run ``seed`` (no dataset assigned yet)."""
        module = require_flwr_datasets()
        if not isinstance(self.partitioner, str):
            if getattr(self.partitioner, "is_dataset_assigned", lambda: False)():
                raise ValueError(
                    f"{type(self.partitioner).__name__} already has a dataset; pass one without (FlowerPartitioner "
                    "assigns its own) or use FlowerDatasetClients for your own dataset"
                )
            return copy.deepcopy(self.partitioner)
        factory = getattr(module, self.partitioner, None)
        if not (inspect.isclass(factory) and issubclass(factory, module.Partitioner)):
            known = sorted(n for n in dir(module) if n.endswith("Partitioner") and n != "Partitioner")
            raise ValueError(f"flwr_datasets.partitioner has no partitioner {self.partitioner!r}; known: {known}")
        parameters = inspect.signature(factory).parameters
        kwargs = dict(self.options)
        defaults = {
            "num_partitions": num_clients,
            "partition_by": self.label_column,
            "seed": derive_seed(seed, "partition", "flwr_datasets") % 2**32,
        }
        for name, value in defaults.items():
            if name in parameters and name not in kwargs:
                kwargs[name] = value
        return factory(**kwargs)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Exactly the row indices of each Flower partition, sorted.

        Raises:
            ValueError: The partitioner made another number of partitions than ``num_clients``, or an empty one.
        """
        partitioner = self.build(num_clients, seed)
        import datasets

        labels = np.asarray(labels, dtype=np.int64)
        table = datasets.Dataset.from_dict({self.label_column: labels, INDEX_COLUMN: np.arange(labels.size)})
        partitioner.dataset = table
        name = type(partitioner).__name__
        if partitioner.num_partitions != num_clients:
            raise ValueError(f"{name} makes {partitioner.num_partitions} partitions for num_clients={num_clients}")
        parts = _partition_rows(partitioner, INDEX_COLUMN)
        for partition_id, part in enumerate(parts):
            if part.size == 0:
                raise ValueError(f"{name}: partition {partition_id} is empty; every client needs samples")
        return [np.sort(part) for part in parts]


@dataclass(eq=False)
class FlowerDatasetClients(ClientSource):
    """Clients from a Flower partitioner over your own Hugging Face ``datasets.Dataset`` (Python API).

    Example:
        >>> from datasets import Dataset  # doctest: +SKIP
        >>> from flwr_datasets.partitioner import DirichletPartitioner  # doctest: +SKIP
        >>> table = Dataset.from_dict({"image": x, "label": y})  # doctest: +SKIP
        >>> part = DirichletPartitioner(num_partitions=10, partition_by="label", alpha=0.5)  # doctest: +SKIP
        >>> data = ClientDataModule(FlowerDatasetClients(part, table))  # doctest: +SKIP

    Attributes:
        partitioner: A ``flwr_datasets`` partitioner.
        dataset: The dataset to assign to it; ``None`` if it already has one.
        image_column: Column with each sample's array (``(C, H, W)``, ``(H, W)`` or flat with ``sample_shape``).
        label_column: Column with the integer labels.
        global_test: Optional ``datasets.Dataset`` with the same columns: the global test set (``None``: pooled
            client test splits).
        num_classes: Number of classes (``None``: largest label + 1).
        sample_shape: Reshape flat samples.

    Every client's samples are split into train/test by the datamodule's ``train_fraction``.
    """

    partitioner: Any
    dataset: Any = None
    image_column: str = "image"
    label_column: str = "label"
    global_test: Any = None
    num_classes: int | None = None
    sample_shape: tuple[int, ...] | None = None
    _loaded: ClientDataset | None = field(default=None, init=False, repr=False)

    def load(self) -> ClientDataset:
        """Loads every partition once (cached on this object).

        Raises:
            ImportError: ``flwr-datasets`` is not installed.
            ValueError: A missing column or invalid data (naming the partition).
        """
        if self._loaded is not None:
            return self._loaded
        require_flwr_datasets()
        if self.dataset is not None:
            self.partitioner.dataset = self.dataset
        table = self.partitioner.dataset
        for column in (self.image_column, self.label_column):
            if column not in table.column_names:
                raise ValueError(f"the partitioner's dataset has no column {column!r} (columns: {table.column_names})")
        train = []
        for partition_id in range(self.partitioner.num_partitions):
            part = _load(self.partitioner, partition_id).with_format("numpy")
            origin = f"{type(self.partitioner).__name__} partition {partition_id}"
            train.append((np.asarray(part[self.image_column]), np.asarray(part[self.label_column]), origin))
        global_test = None
        if self.global_test is not None:
            table = self.global_test.with_format("numpy")
            global_test = (np.asarray(table[self.image_column]), np.asarray(table[self.label_column]), "global test")
        self._loaded = build_client_dataset(
            f"Flower Datasets {type(self.partitioner).__name__}",
            train,
            None,
            global_test,
            self.num_classes,
            self.sample_shape,
        )
        return self._loaded
