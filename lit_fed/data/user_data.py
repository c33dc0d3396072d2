"""Your own data per client, behind the :class:`~lit_fed.data.protocol.FederatedData` protocol the loop needs.

Two forms, for a LightningModule made federated by :func:`~lit_fed.federate` (any batch format: the batches are
whatever the user's loaders yield and its own ``training_step``/``validation_step`` take):

* :class:`ClientLoaders` — a factory ``client_id -> LightningDataModule`` or ``client_id -> (train_loader,
  val_loader)``: every loader setting (batch size, ``drop_last``, ``collate_fn``, samplers, workers) is the
  user's, as written;
* :class:`PartitionedDataModule` — one user ``LightningDataModule`` plus a partition of its training (and
  validation) dataset: per-client index lists. Each client's loader is the datamodule's own loader rebuilt over
  the client's subset, with the same batch size, ``drop_last``, ``collate_fn``, workers and shuffling.

A client's aggregation weight is its number of training samples (``len`` of its training dataset; counted over
one pass of its loader when the dataset has no length). The batch order of a shuffling loader is drawn from the
global torch generator, which the client worker seeds per ``(seed, round, client)`` before each fit, so runs are
reproducible and both backends see the same batches.

Example::

    def client_data(client_id: int) -> tuple[DataLoader, DataLoader]:
        train, val = my_split(client_id)
        return DataLoader(train, batch_size=32, shuffle=True, drop_last=True), DataLoader(val, batch_size=64)

    data = ClientLoaders(client_data, num_clients=10)
    # or: data = PartitionedDataModule(MyDataModule(), train_partition=[[0, 1, ...], [...]], val_partition=[...])
    FederatedLoop(federate(MyLitModel()), data, FedAvg(), rounds=5).run()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler, Subset

__all__ = ["ClientLoaders", "PartitionedDataModule"]

Loaders = tuple[Iterable[Any], Iterable[Any] | None]
ClientFactory = Callable[[int], "L.LightningDataModule | Loaders"]


def count_samples(loader: Iterable[Any]) -> int:
    """Samples a loader serves: ``len`` of its dataset when it has one, else the batch sizes of one pass."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and not isinstance(dataset, IterableDataset):
        try:
            return len(dataset)
        except TypeError:
            pass
    return sum(int(extract_batch_size(batch)) for batch in loader)


def _val_loader(datamodule: L.LightningDataModule) -> Iterable[Any] | None:
    if is_overridden("val_dataloader", datamodule, L.LightningDataModule):
        return datamodule.val_dataloader()
    return None


class ClientLoaders:
    """Per-client data from a factory: ``client_id -> LightningDataModule`` or ``-> (train_loader, val_loader)``.

    A datamodule is set up once per client (``prepare_data`` then ``setup("fit")``); its ``train_dataloader()`` is
    called for each round and its ``val_dataloader()`` (when it defines one) serves the client's evaluation. A
    ``(train_loader, val_loader)`` pair is used as given (``val_loader`` may be ``None``: the client is not
    evaluated). For Flower backends the factory must pickle (a module-level function or a
    ``functools.partial``); what it built is not shipped, each node builds its own.

    Args:
        factory: Builds a client's data from its id (``0 <= client_id < num_clients``).
        num_clients: Number of clients.
        global_val: Loader the global model is evaluated on (``None``: no global evaluation).
        num_classes: For a classification task evaluated by lit_fed's accuracy (``(x, y)`` batches, a module
            without ``validation_step``); ``0`` otherwise.

    Raises:
        ValueError: ``num_clients < 1``.
    """

    def __init__(
        self,
        factory: ClientFactory,
        num_clients: int,
        global_val: Iterable[Any] | None = None,
        num_classes: int = 0,
    ) -> None:
        if int(num_clients) < 1:
            raise ValueError(f"ClientLoaders: num_clients must be >= 1, got {num_clients}")
        self.factory = factory
        self._num_clients = int(num_clients)
        self.global_val = global_val
        self._num_classes = int(num_classes)
        self._built: dict[int, L.LightningDataModule | Loaders] = {}
        self._num_samples: dict[int, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_built": {}}

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return self._num_clients

    @property
    def num_classes(self) -> int:
        """The classification task's number of classes (``0``: not a classification)."""
        return self._num_classes

    def setup(self, stage: str | None = None) -> None:
        """Nothing to build up front: each client's data is built when first used."""

    def _client(self, client_id: int) -> L.LightningDataModule | Loaders:
        if not 0 <= client_id < self._num_clients:
            raise IndexError(f"ClientLoaders: client {client_id} is outside [0, {self._num_clients})")
        built = self._built.get(client_id)
        if built is None:
            built = self.factory(client_id)
            if isinstance(built, L.LightningDataModule):
                built.prepare_data()
                built.setup("fit")
            elif not (isinstance(built, tuple | list) and len(built) == 2):
                raise TypeError(
                    f"ClientLoaders: the factory returned {type(built).__name__} for client {client_id}; return a "
                    "LightningDataModule or a (train_loader, val_loader) pair"
                )
            self._built[client_id] = built
        return built

    def client_train_dataloader(self, client_id: int, round: int = 0) -> Iterable[Any]:
        """``client_id``'s training loader (a datamodule's ``train_dataloader()``, called for each round)."""
        built = self._client(client_id)
        return built.train_dataloader() if isinstance(built, L.LightningDataModule) else built[0]

    def client_test_dataloader(self, client_id: int) -> Iterable[Any] | None:
        """``client_id``'s validation loader (``None``: the client has none)."""
        built = self._client(client_id)
        return _val_loader(built) if isinstance(built, L.LightningDataModule) else built[1]

    def client_num_train_samples(self, client_id: int) -> int:
        """``client_id``'s number of training samples (the aggregation weight)."""
        if client_id not in self._num_samples:
            self._num_samples[client_id] = count_samples(self.client_train_dataloader(client_id, 0))
        return self._num_samples[client_id]

    def global_test_dataloader(self) -> Iterable[Any] | None:
        """The global model's evaluation loader (``global_val``)."""
        return self.global_val


def _check_partition(name: str, partition: Sequence[Sequence[int]], size: int, allow_empty: bool) -> list[list[int]]:
    clients = [[int(i) for i in indices] for indices in partition]
    if not clients:
        raise ValueError(f"PartitionedDataModule: {name} lists no client")
    for cid, indices in enumerate(clients):
        if not indices and not allow_empty:
            raise ValueError(f"PartitionedDataModule: client {cid} has no samples in {name}")
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise ValueError(
                f"PartitionedDataModule: {name} of client {cid} holds index {bad[0]}, outside the dataset's [0, {size})"
            )
    return clients


def subset_loader(template: DataLoader, indices: Sequence[int]) -> DataLoader:
    """``template`` rebuilt over ``Subset(template.dataset, indices)``, with its own loader settings.

    Kept: batch size, ``drop_last``, ``collate_fn``, shuffling (a ``RandomSampler``), workers and their settings,
    ``pin_memory``. A random sampler draws from the global torch generator (seeded per client fit).

    Raises:
        ValueError: the template iterates an ``IterableDataset`` or uses a custom sampler or batch sampler (which
            cannot be restricted to a subset: give per-client loaders through :class:`ClientLoaders` instead).
    """
    if isinstance(template.dataset, IterableDataset):
        raise ValueError(
            "PartitionedDataModule: an IterableDataset cannot be partitioned by index; give each client its own "
            "loader with ClientLoaders"
        )
    sampler = template.sampler
    custom_batches = template.batch_sampler is not None and type(template.batch_sampler) is not BatchSampler
    if type(sampler) not in (RandomSampler, SequentialSampler) or custom_batches:
        used = type(template.batch_sampler if custom_batches else sampler).__name__
        raise ValueError(
            f"PartitionedDataModule: the datamodule's loader uses a {used}, which cannot be restricted to a "
            "client's indices; give each client its own loader with ClientLoaders"
        )
    options: dict[str, Any] = {
        "batch_size": template.batch_size,
        "shuffle": isinstance(sampler, RandomSampler),
        "drop_last": template.drop_last,
        "collate_fn": template.collate_fn,
        "num_workers": template.num_workers,
        "pin_memory": template.pin_memory,
        "timeout": template.timeout,
        "worker_init_fn": template.worker_init_fn,
        "multiprocessing_context": template.multiprocessing_context,
    }
    if template.num_workers > 0:
        options.update(prefetch_factor=template.prefetch_factor, persistent_workers=template.persistent_workers)
    return DataLoader(Subset(template.dataset, list(indices)), **options)


class PartitionedDataModule:
    """A user ``LightningDataModule`` split across clients by per-client index lists.

    At setup the datamodule is prepared and set up (``prepare_data``, ``setup("fit")``); its ``train_dataloader()``
    and ``val_dataloader()`` are the templates each client's loaders are rebuilt from (:func:`subset_loader`). The
    global model is evaluated on the whole ``val_dataloader()``.

    Args:
        datamodule: The user's datamodule (it must pickle for the Flower backends).
        train_partition: Per client, the indices of its training samples in the training loader's dataset.
        val_partition: Per client, the indices of its validation samples in the validation loader's dataset;
            ``None``: every client validates on the whole validation set.
        num_classes: For a classification task evaluated by lit_fed's accuracy; ``0`` otherwise.

    Raises:
        ValueError: At setup: an index outside its dataset, a client without training samples, partitions of
            different lengths, or a loader that cannot be partitioned (see :func:`subset_loader`).
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        train_partition: Sequence[Sequence[int]],
        val_partition: Sequence[Sequence[int]] | None = None,
        num_classes: int = 0,
    ) -> None:
        if val_partition is not None and len(val_partition) != len(train_partition):
            raise ValueError(
                f"PartitionedDataModule: train_partition lists {len(train_partition)} clients but val_partition "
                f"lists {len(val_partition)}"
            )
        self.datamodule = datamodule
        self.train_partition = [list(p) for p in train_partition]
        self.val_partition = None if val_partition is None else [list(p) for p in val_partition]
        self._num_classes = int(num_classes)
        self._train: list[DataLoader] | None = None
        self._val: list[DataLoader] | None = None
        self._global_val: Iterable[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_train": None, "_val": None, "_global_val": None}

    @property
    def num_clients(self) -> int:
        """Number of clients (entries of ``train_partition``)."""
        return len(self.train_partition)

    @property
    def num_classes(self) -> int:
        """The classification task's number of classes (``0``: not a classification)."""
        return self._num_classes

    def setup(self, stage: str | None = None) -> None:
        """Sets up the datamodule and builds every client's loaders (once)."""
        if self._train is not None:
            return
        self.datamodule.prepare_data()
        self.datamodule.setup("fit")
        train = self.datamodule.train_dataloader()
        if not isinstance(train, DataLoader):
            raise ValueError(
                f"PartitionedDataModule: train_dataloader() returned {type(train).__name__}; a torch DataLoader is "
                "needed to partition it (or give per-client loaders with ClientLoaders)"
            )
        clients = _check_partition("train_partition", self.train_partition, len(train.dataset), allow_empty=False)  # type: ignore[arg-type]
        val = _val_loader(self.datamodule)
        val_clients: list[DataLoader | None] = [val] * len(clients)  # type: ignore[list-item]
        if self.val_partition is not None:
            if not isinstance(val, DataLoader):
                raise ValueError("PartitionedDataModule: val_partition needs a val_dataloader() returning a DataLoader")
            parts = _check_partition("val_partition", self.val_partition, len(val.dataset), allow_empty=True)  # type: ignore[arg-type]
            val_clients = [subset_loader(val, p) if p else None for p in parts]
        self._train = [subset_loader(train, indices) for indices in clients]
        self._val = val_clients  # type: ignore[assignment]
        self._global_val = val

    def _loaders(self) -> tuple[list[DataLoader], list[DataLoader | None]]:
        self.setup()
        return self._train, self._val  # type: ignore[return-value]

    def client_train_dataloader(self, client_id: int, round: int = 0) -> Iterable[Any]:
        """``client_id``'s training loader."""
        return self._loaders()[0][client_id]

    def client_test_dataloader(self, client_id: int) -> Iterable[Any] | None:
        """``client_id``'s validation loader (``None``: no validation samples)."""
        return self._loaders()[1][client_id]

    def client_num_train_samples(self, client_id: int) -> int:
        """``client_id``'s number of training samples (the aggregation weight)."""
        return len(self.train_partition[client_id])

    def global_test_dataloader(self) -> Iterable[Any] | None:
        """The datamodule's whole validation loader (``None`` when it has none)."""
        self.setup()
        return self._global_val
