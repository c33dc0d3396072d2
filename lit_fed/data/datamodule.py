"""``FederatedDataModule``: a dataset split among clients, each with a local train/test split.

Protocol (PFLlib, Zhang et al. 2023, on the training set): the source's *training* set — optionally first
subsampled to a long tail (Cao et al. 2019; FedLoGe, Xiao et al. 2024) — is partitioned among the clients;
each client's part is split 75/25 (stratified) into its local train and test sets; the source's test set is
the global test set. Every step is a pure function of ``seed``: the partition uses ``(seed, "partition", …)``,
the local splits ``(seed, "split", client)``, a client's batch order in a round
``torch_generator(seed, "train", round, client)``. A :class:`~lit_fed.data.presets.PresetSplits` partitioner
(explicit index lists, a saved ``partition.json``) gives the clients' splits instead of drawing them. When the
source has no test set, the global model is evaluated on the pooled client test splits
(:attr:`FederatedDataModule.global_test_name` says which); :meth:`FederatedDataModule.save_partition` writes the
partition actually used.

Images are normalized once at setup into one ``float32`` tensor laid out as
``[client 0 train | … | client K−1 train | client 0 test | … | client K−1 test]``, so every client split and
the pooled training set are zero-copy slices served by :mod:`lit_fed.data.batching`'s whole-batch loaders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_fed.data.batching import TensorBatchDataset, normalize_images, sequential_loader, shuffled_loader
from lit_fed.data.datasets import ArrayDataset, DatasetSource, FashionMNIST
from lit_fed.data.partition import (
    Dirichlet,
    Partitioner,
    class_histogram,
    long_tail_indices,
    split_train_test,
)
from lit_fed.data.partition_file import PARTITION_FILE_NAME, PartitionFile, label_digest
from lit_fed.data.preprocessing import (
    Normalization,
    check_normalization,
    check_train_fraction,
    client_train_fraction,
    normalization_stats,
)
from lit_fed.data.presets import ClientSplit, PresetSplits
from lit_fed.utils.seeding import torch_generator

GLOBAL_TEST_SET = "global test set"
"""``global_test_name`` when the source has a test set of its own."""
POOLED_CLIENT_TESTS = "pooled client test splits"
"""``global_test_name`` when it has none and the global model is evaluated on the clients' test splits."""


def _short_repr(value: object, limit: int = 120) -> str:
    """``repr(value)``, or ``ClassName(…)`` when that is longer than ``limit`` (e.g. explicit index lists)."""
    text = repr(value)
    return text if len(text) <= limit else f"{type(value).__name__}(…)"


@dataclass(eq=False)
class _Built:
    """Everything :meth:`FederatedDataModule.setup` computes."""

    num_classes: int
    input_shape: tuple[int, int, int]
    images: Tensor  # float32, client train splits then client test splits
    labels: Tensor  # int64, same layout
    train_bounds: np.ndarray  # (K + 1,) offsets of the client train splits
    test_bounds: np.ndarray  # (K + 1,) offsets of the client test splits (after the train block)
    train_indices: list[np.ndarray]  # per client, indices into the source's training set
    test_indices: list[np.ndarray]
    test_images: Tensor  # global test set, float32 (a view of the client test block when pooled)
    test_labels: Tensor
    fill: Tensor  # (C,) normalized value of a black pixel, the augmentation's padding
    mean: tuple[float, ...]  # the per-channel statistics the images were normalized with
    std: tuple[float, ...]
    global_test: bool  # True: the source's own test set; False: the pooled client test splits
    num_source_samples: int  # size of the index space of train_indices/test_indices
    label_digest: str  # partition_file.label_digest of that index space's labels


class FederatedDataModule(L.LightningDataModule):
    """Federated view of a dataset: per-client train/test loaders plus plain-Lightning pooled loaders.

    Args:
        dataset: Where the images come from; ``None`` means ``FashionMNIST()``.
        partitioner: How the training pool is split among clients; ``None`` means ``Dirichlet(alpha=0.1)``.
            (``None`` rather than an instance default: jsonargparse carries a default instance's matching
            ``init_args`` over to another ``class_path``, e.g. ``alpha=0.1`` into ``QuantitySkew``.) A
            :class:`~lit_fed.data.presets.PresetSplits` (``ClientIndices``, ``SavedPartition``) gives the
            clients' train (and optionally test) indices into the source's training set instead.
        num_clients: Number of clients (>= 1).
        batch_size: Training batch size (>= 1).
        eval_batch_size: Batch size of the test loaders (>= 1).
        train_fraction: Fraction of each client's samples in its local train split, ``0 < f < 1``; or one
            fraction per client.
        imbalance_ratio: If set (>= 1), the training pool is first subsampled to a long tail with this
            head/tail ratio (:func:`~lit_fed.data.partition.long_tail_indices`); the global test set stays
            balanced.
        seed: Run seed; partition, splits and batch orders are pure functions of it.
        augment: Random crop (padding 4) and horizontal flip on training batches (meant for CIFAR).
        normalization: ``"dataset"`` (the source's statistics), ``"fixed"`` (``mean``/``std``) or ``"none"``
            (see :mod:`lit_fed.data.preprocessing`).
        mean: Per-channel mean on the ``[0, 1]`` scale, with ``normalization="fixed"``.
        std: Per-channel standard deviation, with ``normalization="fixed"``.
        drop_last: Drop each client's last incomplete training batch (and the pooled loader's); a client with
            fewer than ``batch_size`` training samples is then an error at setup.
    """

    def __init__(
        self,
        dataset: DatasetSource | None = None,
        partitioner: Partitioner | None = None,
        num_clients: int = 20,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        train_fraction: float = 0.75,
        imbalance_ratio: float | None = None,
        seed: int = 0,
        augment: bool = False,
        normalization: Normalization = "dataset",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"num_clients must be an integer >= 1, got num_clients={num_clients!r}")
        self._set_options(
            batch_size, eval_batch_size, train_fraction, num_clients, seed, augment, normalization, mean, std, drop_last
        )
        if imbalance_ratio is not None and not imbalance_ratio >= 1:
            raise ValueError(f"imbalance_ratio must be >= 1 (or None), got imbalance_ratio={imbalance_ratio!r}")
        dataset = FashionMNIST() if dataset is None else dataset
        partitioner = Dirichlet(alpha=0.1) if partitioner is None else partitioner
        if not isinstance(dataset, DatasetSource):
            raise TypeError(f"dataset must be a DatasetSource, got {dataset!r}")
        if not isinstance(partitioner, Partitioner):
            raise TypeError(f"partitioner must be a Partitioner, got {partitioner!r}")
        self.dataset = dataset
        self.partitioner = partitioner
        self._num_clients = num_clients
        self.imbalance_ratio = imbalance_ratio
        self._built: _Built | None = None

    def _set_options(
        self,
        batch_size: int,
        eval_batch_size: int,
        train_fraction: float | Sequence[float],
        num_clients: int | None,
        seed: int,
        augment: bool,
        normalization: str,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        drop_last: bool,
    ) -> None:
        """Checks and stores the loader and preprocessing options every federated datamodule shares."""
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
        self.train_fraction = check_train_fraction(train_fraction, num_clients)
        self._fixed_stats = check_normalization(normalization, mean, std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.augment = augment
        self.normalization = normalization
        self.mean = None if mean is None else list(mean)
        self.std = None if std is None else list(std)
        self.drop_last = bool(drop_last)

    # -----------------------------------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Loads the source once (triggering a download where one is needed); the result is process-cached."""
        self.dataset.load()

    def setup(self, stage: str | None = None) -> None:
        """Loads, (optionally) long-tails, partitions and splits the data. Idempotent: builds only once.

        Raises:
            ValueError: From the partitioner or the long-tail subsampling when the request is impossible; a
                preset partition that does not fit the source; ``drop_last`` with a client smaller than a batch.
        """
        if self._built is not None:
            return
        source = self._load_source()
        train_parts, test_parts = self._client_splits(source)
        self._built = self._assemble(source, train_parts, test_parts)

    def _load_source(self) -> ArrayDataset:
        """The dataset whose training set the clients' indices point into (and whose test set is global)."""
        return self.dataset.load()

    def _client_splits(self, source: ArrayDataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-client train and test indices into ``source``'s training set."""
        train_labels = source.train_y.numpy()
        if isinstance(self.partitioner, PresetSplits):
            if self.imbalance_ratio is not None:
                raise ValueError(
                    f"imbalance_ratio={self.imbalance_ratio!r} cannot be combined with the preset partition "
                    f"{_short_repr(self.partitioner)}: its indices are used as given; set imbalance_ratio to null"
                )
            presets = self.partitioner.client_splits(train_labels, self._num_clients, self.seed)
            return self._complete_splits(presets, train_labels)
        if self.imbalance_ratio is not None:
            pool = long_tail_indices(train_labels, self.imbalance_ratio, self.seed, num_classes=source.num_classes)
        else:
            pool = np.arange(train_labels.size, dtype=np.int64)
        pool_labels = train_labels[pool]
        partition = self.partitioner(pool_labels, self._num_clients, self.seed)
        if len(partition) != self._num_clients:
            raise ValueError(f"{self.partitioner!r} returned {len(partition)} parts for {self._num_clients} clients")
        splits = [
            split_train_test(part, pool_labels, self._fraction(client), seed=self.seed, client_id=client)
            for client, part in enumerate(partition)
        ]
        return [pool[train] for train, _ in splits], [pool[test] for _, test in splits]

    def _fraction(self, client_id: int) -> float:
        return client_train_fraction(self.train_fraction, client_id)

    def _complete_splits(
        self, splits: Sequence[ClientSplit], labels: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Given splits, with each missing test split cut from the client's samples by ``train_fraction``."""
        train_parts, test_parts = [], []
        for client, (train, test) in enumerate(splits):
            if test is None:
                train, test = split_train_test(train, labels, self._fraction(client), seed=self.seed, client_id=client)
            train_parts.append(train)
            test_parts.append(test)
        return train_parts, test_parts

    def _assemble(self, source: ArrayDataset, train_parts: list[np.ndarray], test_parts: list[np.ndarray]) -> _Built:
        """Normalizes the clients' samples into the one-tensor layout of the module docstring."""
        if self.drop_last:
            for client, part in enumerate(train_parts):
                if part.size < self.batch_size:
                    raise ValueError(
                        f"drop_last=True with batch_size={self.batch_size}: client {client} has only {part.size} "
                        "training samples, so it would train on no batch; lower batch_size or set drop_last=False"
                    )
        order = torch.from_numpy(np.concatenate(train_parts + test_parts).astype(np.int64))
        mean, std = normalization_stats(self.normalization, self._fixed_stats, source.mean, source.std)
        images = normalize_images(source.train_x[order], mean, std)
        labels = source.train_y[order].clone()
        train_bounds = np.cumsum([0] + [part.size for part in train_parts])
        global_test = source.test_y.numel() > 0
        if global_test:
            test_images, test_labels = normalize_images(source.test_x, mean, std), source.test_y.clone()
        else:  # the pooled client test splits: the block after the train splits, zero-copy
            test_images, test_labels = images[int(train_bounds[-1]) :], labels[int(train_bounds[-1]) :]
        return _Built(
            num_classes=source.num_classes,
            input_shape=source.input_shape,
            images=images,
            labels=labels,
            train_bounds=train_bounds,
            test_bounds=np.cumsum([0] + [part.size for part in test_parts]),
            train_indices=train_parts,
            test_indices=test_parts,
            test_images=test_images,
            test_labels=test_labels,
            fill=-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32),
            mean=tuple(mean),
            std=tuple(std),
            global_test=global_test,
            num_source_samples=int(source.train_y.numel()),
            label_digest=label_digest(source.train_y.numpy()),
        )

    @property
    def built(self) -> _Built:
        """The setup result (runs :meth:`setup` on first access)."""
        if self._built is None:
            self.setup()
        assert self._built is not None
        return self._built

    # -----------------------------------------------------------------------------------------------
    # Shape of the federation
    # ------------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes of the source."""
        return self.built.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.built.input_shape

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return self._num_clients

    @property
    def global_test_name(self) -> str:
        """What :meth:`global_test_dataloader` serves, for reports.

        ``"global test set"`` when the source has a test set; ``"pooled client test splits"`` when it has none and
        the global model is evaluated on the concatenation of every client's test split.
        """
        return GLOBAL_TEST_SET if self.built.global_test else POOLED_CLIENT_TESTS

    def _check_client(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"client_id={client_id} out of range for {self.num_clients} clients")

    def _train_slice(self, client_id: int) -> slice:
        self._check_client(client_id)
        bounds = self.built.train_bounds
        return slice(int(bounds[client_id]), int(bounds[client_id + 1]))

    def _test_slice(self, client_id: int) -> slice:
        self._check_client(client_id)
        offset = int(self.built.train_bounds[-1])
        bounds = self.built.test_bounds
        return slice(offset + int(bounds[client_id]), offset + int(bounds[client_id + 1]))

    def client_indices(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train_idx, test_idx)`` of a client: sorted indices into the source's training set."""
        self._check_client(client_id)
        return self.built.train_indices[client_id], self.built.test_indices[client_id]

    def client_num_train_samples(self, client_id: int) -> int:
        """Size of a client's local train split."""
        part = self._train_slice(client_id)
        return part.stop - part.start

    def client_num_test_samples(self, client_id: int) -> int:
        """Size of a client's local test split."""
        part = self._test_slice(client_id)
        return part.stop - part.start

    def client_label_counts(self, client_id: int) -> Tensor:
        """``(C,)`` int64 class counts of a client's local train split."""
        labels = self.built.labels[self._train_slice(client_id)]
        return torch.bincount(labels, minlength=self.num_classes)

    # -----------------------------------------------------------------------------------------------
    # Federated loaders
    # ------------------------------------------------------------------------------------------------

    def _dataset(self, part: slice, generator: torch.Generator | None) -> TensorBatchDataset:
        built = self.built
        augment_generator = generator if self.augment else None
        return TensorBatchDataset(built.images[part], built.labels[part], augment_generator, built.fill)

    def client_train_dataloader(self, client_id: int, round: int = 0) -> DataLoader:
        """A client's local train split, shuffled by ``torch_generator(seed, "train", round, client_id)``.

        Each batch is one ``(x, y)`` pair of tensors; the last batch may be smaller (dropped with ``drop_last``).
        """
        generator = torch_generator(self.seed, "train", round, client_id)
        dataset = self._dataset(self._train_slice(client_id), generator)
        return shuffled_loader(dataset, self.batch_size, generator, self.drop_last)

    def client_test_dataloader(self, client_id: int) -> DataLoader:
        """A client's local test split in order, in batches of ``eval_batch_size``."""
        return sequential_loader(self._dataset(self._test_slice(client_id), None), self.eval_batch_size)

    def global_test_dataloader(self) -> DataLoader:
        """The source's test set in order, in batches of ``eval_batch_size``.

        Without one, every client's test split in client order (see :attr:`global_test_name`).
        """
        built = self.built
        return sequential_loader(TensorBatchDataset(built.test_images, built.test_labels), self.eval_batch_size)

    # -----------------------------------------------------------------------------------------------
    # Plain Lightning (no federation): pooled training data, global test set
    # ------------------------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """The union of all clients' train splits, reshuffled every epoch.

        The order comes from ``torch_generator(seed, "train", "pooled")``.
        """
        generator = torch_generator(self.seed, "train", "pooled")
        pooled = slice(0, int(self.built.train_bounds[-1]))
        return shuffled_loader(self._dataset(pooled, generator), self.batch_size, generator, self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """The global test set."""
        return self.global_test_dataloader()

    def test_dataloader(self) -> DataLoader:
        """The global test set."""
        return self.global_test_dataloader()

    # -----------------------------------------------------------------------------------------------
    # Inspection
    # ------------------------------------------------------------------------------------------------

    def partition_histogram(self) -> np.ndarray:
        """``(num_clients, C)`` int64 class counts of the clients' train splits."""
        built = self.built
        labels = built.labels.numpy()
        parts = [np.arange(built.train_bounds[k], built.train_bounds[k + 1]) for k in range(self.num_clients)]
        return class_histogram(labels, parts, built.num_classes)

    def partition_summary(self) -> dict[str, float | int]:
        """Sizes and label diversity of the federation.

        Returns:
            ``num_clients``; ``min_train_samples``/``mean_train_samples``/``max_train_samples`` (per client, the
            counts ``partition.csv`` and :meth:`plot_partition` show);
            ``train_samples``/``test_samples`` (totals over clients); ``classes_per_client_mean``/``_min``/
            ``_max`` (classes present in a client's train split); ``global_test_samples``.
        """
        built = self.built
        sizes = np.diff(built.train_bounds)
        classes = (self.partition_histogram() > 0).sum(axis=1)
        return {
            "num_clients": self.num_clients,
            "min_train_samples": int(sizes.min()),
            "mean_train_samples": float(sizes.mean()),
            "max_train_samples": int(sizes.max()),
            "train_samples": int(built.train_bounds[-1]),
            "test_samples": int(built.test_bounds[-1]),
            "classes_per_client_mean": float(classes.mean()),
            "classes_per_client_min": int(classes.min()),
            "classes_per_client_max": int(classes.max()),
            "global_test_samples": int(built.test_labels.shape[0]),
        }

    def plot_partition(self, path: str | Path) -> Path:
        """Saves a stacked bar chart of the per-client class counts (train splits) as a PNG.

        Uses matplotlib's Agg canvas directly, so no pyplot state or global backend is touched.

        Args:
            path: Output file (parent directories are created).

        Returns:
            The written path.
        """
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        histogram = self.partition_histogram()
        clients, classes = histogram.shape
        colors = colormaps["tab20" if classes > 10 else "tab10"]
        figure = Figure(figsize=(max(6.0, 0.3 * clients + 2.0), 4.0))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        bottom = np.zeros(clients)
        for label in range(classes):
            axes.bar(
                np.arange(clients),
                histogram[:, label],
                bottom=bottom,
                width=0.85,
                color=colors(label % colors.N),
                label=str(label),
            )
            bottom += histogram[:, label]
        axes.set_xlabel("client")
        axes.set_ylabel("train samples")
        axes.set_title(self._plot_title())
        if classes <= 20:
            axes.legend(title="class", bbox_to_anchor=(1.01, 1.0), loc="upper left", fontsize="small")
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        return path

    def _plot_title(self) -> str:
        return f"{type(self.dataset).__name__}, {self.num_clients} clients: {_short_repr(self.partitioner)}"

    # -----------------------------------------------------------------------------------------------
    # The partition as a file
    # ------------------------------------------------------------------------------------------------

    def _partition_record(self) -> PartitionFile:
        built = self.built
        return PartitionFile(
            source=self._load_source().name,
            source_config=repr(self.dataset),
            num_source_samples=built.num_source_samples,
            label_digest=built.label_digest,
            seed=int(self.seed),
            train=built.train_indices,
            test=built.test_indices,
            metadata={
                "datamodule": type(self).__name__,
                "partitioner": _short_repr(self.partitioner),
                "train_fraction": self.train_fraction,
                "imbalance_ratio": self.imbalance_ratio,
                "normalization": self.normalization,
                "global_test": self.global_test_name,
            },
        )

    def save_partition(self, directory: str | Path) -> Path:
        """Writes the partition actually used to ``directory/partition.json``.

        The file holds every client's sorted train and test indices into the source's training set, the source's
        name, size and label digest, ``num_clients`` and ``seed`` (format: :mod:`lit_fed.data.partition_file`).
        ``partitioner=SavedPartition(path)`` with the same source reproduces the clients exactly, and with the
        same ``seed`` the same batches.

        Args:
            directory: Output directory (created if needed).

        Returns:
            The written file.
        """
        return self._partition_record().write(Path(directory) / PARTITION_FILE_NAME)
