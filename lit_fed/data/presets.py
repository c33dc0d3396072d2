"""Partitions given rather than drawn: explicit per-client index lists, or a saved ``partition.json``.

A :class:`PresetSplits` is a :class:`~lit_fed.data.partition.Partitioner` that also knows each client's local
*test* split (or leaves it to the datamodule's ``train_fraction`` by giving ``None``). With one of them,
:class:`~lit_fed.data.datamodule.FederatedDataModule` uses the indices as they are — into the source's training
set — instead of drawing a partition and a 75/25 split::

    FederatedDataModule(FashionMNIST(), SavedPartition("runs/quickstart/partition.json"), num_clients=20)

reproduces the run's clients exactly (and, with the same ``seed``, its batch orders).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_fed.data.partition import Partitioner
from lit_fed.data.partition_file import label_digest, read_partition

__all__ = ["ClientIndices", "ClientSplit", "PresetSplits", "SavedPartition", "check_client_splits"]

ClientSplit = tuple[np.ndarray, np.ndarray | None]
"""A client's ``(train_indices, test_indices)``; ``None`` test: split by the datamodule's ``train_fraction``."""


def check_client_splits(
    splits: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray | None]],
    num_samples: int,
    where: str,
) -> list[ClientSplit]:
    """Validates per-client index lists and returns them as sorted ``int64`` arrays.

    Args:
        splits: Per client ``(train, test)`` (``test`` may be ``None``).
        num_samples: Size of the index space; every index must lie in ``[0, num_samples)``.
        where: What the splits come from, for the messages (e.g. a file name).

    Raises:
        ValueError: A non-integer or out-of-range index, an empty train (or given test) split, or an index that
            appears twice within one client (train and test must not overlap); each message names the client.
    """
    checked: list[ClientSplit] = []
    for client, (train, test) in enumerate(splits):
        parts = []
        for name, values in (("train", train), ("test", test)):
            if values is None:
                parts.append(None)
                continue
            array = np.asarray(values)
            if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
                raise ValueError(f"{where}: client {client} {name} indices must be a 1-D list of integers")
            array = np.sort(array.astype(np.int64))
            if array.size == 0:
                raise ValueError(f"{where}: client {client} has an empty {name} split")
            if array[0] < 0 or array[-1] >= num_samples:
                bad = int(array[0] if array[0] < 0 else array[-1])
                raise ValueError(
                    f"{where}: client {client} {name} index {bad} is outside [0, {num_samples}) "
                    f"(the source has {num_samples} training samples)"
                )
            parts.append(array)
        merged = np.concatenate([part for part in parts if part is not None])
        unique, counts = np.unique(merged, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"{where}: client {client} lists index {int(unique[counts > 1][0])} more than once "
                "(within or across its train and test splits)"
            )
        checked.append((parts[0], parts[1]))
    return checked


class PresetSplits(Partitioner):
    """A partition that is given, with optional per-client test splits; used as is by the datamodules."""

    @abc.abstractmethod
    def client_splits(self, labels: np.ndarray, num_clients: int, seed: int) -> list[ClientSplit]:
        """Per client ``(train, test)`` sorted indices into ``labels``; ``test`` ``None`` where not given.

        Args:
            labels: ``(N,)`` labels of the source's training set.
            num_clients: The datamodule's number of clients (must match).
            seed: The run seed.

        Raises:
            ValueError: The preset does not fit ``labels`` or ``num_clients``.
        """

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Each client's train and test indices merged (the :class:`Partitioner` view)."""
        return [
            np.sort(train if test is None else np.concatenate([train, test]))
            for train, test in self.client_splits(labels, num_clients, seed)
        ]


def _check_count(where: str, given: int, num_clients: int) -> None:
    if given != num_clients:
        raise ValueError(f"{where} holds {given} clients but the datamodule has num_clients={num_clients}")


@dataclass(frozen=True)
class ClientIndices(PresetSplits):
    """Explicit per-client index lists into the source's training set.

    Attributes:
        train: One list of training-sample indices per client.
        test: One list of test indices per client, or ``None`` to split each client's ``train`` list by the
            datamodule's ``train_fraction`` (stratified, as for drawn partitions).
    """

    train: Sequence[Sequence[int]]
    test: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("ClientIndices: train must list at least one client")
        if self.test is not None and len(self.test) != len(self.train):
            raise ValueError(
                f"ClientIndices: train lists {len(self.train)} clients but test lists {len(self.test)}; give one "
                "test list per client"
            )

    def client_splits(self, labels: np.ndarray, num_clients: int, seed: int) -> list[ClientSplit]:
        """The given lists, checked against ``labels`` (see :func:`check_client_splits`)."""
        _check_count("ClientIndices", len(self.train), num_clients)
        tests = [None] * len(self.train) if self.test is None else list(self.test)
        return check_client_splits(list(zip(self.train, tests, strict=True)), len(labels), "ClientIndices")


@dataclass(frozen=True)
class SavedPartition(PresetSplits):
    """The partition of a ``partition.json`` written by a datamodule's ``save_partition``.

    The file's indices point into the source's training set; reloading checks that this source has the same
    number of training samples and the same labels in the same order (the file's ``label_digest``), so a
    partition is never silently applied to another dataset. The file's ``seed`` is not enforced: pass the same
    ``seed`` to the datamodule for the same batch orders.

    Attributes:
        path: The ``partition.json`` file.
    """

    path: str

    def client_splits(self, labels: np.ndarray, num_clients: int, seed: int) -> list[ClientSplit]:
        """The file's train and test indices.

        Raises:
            FileNotFoundError: The file does not exist.
            DataFileError: The file is not a valid partition file.
            ValueError: It was written for another number of clients, or for a dataset of another size or labels.
        """
        path = Path(self.path).expanduser()
        saved = read_partition(path)
        _check_count(str(path), saved.num_clients, num_clients)
        if saved.num_source_samples != len(labels):
            raise ValueError(
                f"{path}: written for {saved.source} with {saved.num_source_samples} training samples, but this "
                f"source has {len(labels)}"
            )
        if saved.label_digest is not None and saved.label_digest != label_digest(labels):
            raise ValueError(
                f"{path}: written for {saved.source}, whose labels differ from this source's (label_digest "
                f"{saved.label_digest} vs {label_digest(labels)}): another dataset or sample order"
            )
        return check_client_splits(list(zip(saved.train, saved.test, strict=True)), len(labels), str(path))
