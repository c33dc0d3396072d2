"""Explicit per-client data: each client's own arrays, an optional test split per client, an optional global test set.

A :class:`ClientSource` loads a federation that is already split — from arrays (:class:`ClientArrays`), a
PFLlib folder (:class:`~lit_fed.data.pfllib.PFLlibFolder`), LEAF JSON (:class:`~lit_fed.data.leaf.LeafJSON`) or a
Flower Datasets partitioner (:class:`~lit_fed.data.flower_datasets.FlowerDatasetClients`) — and returns it as a
:class:`ClientDataset`, which :class:`~lit_fed.data.client_datamodule.ClientDataModule` serves through the usual
client API.

:func:`build_client_dataset` is the one validation path all of them share. It accepts ``(N, C, H, W)`` or
``(N, H, W)`` images (or flat samples with ``sample_shape``), ``uint8`` or floating point, and integer labels
(floats with integral values are accepted, as JSON gives them), and raises a ``ValueError`` naming the client and
file for: samples and labels of different lengths, a sample shape or dtype that differs between clients, labels
outside ``[0, num_classes)``, non-numeric or non-finite values, and a client with no training samples (or an
empty given test split).

The samples of all clients form one pool, laid out client by client — client 0's train samples, then its test
samples, then client 1's, … — and the splits are indices into that pool; this is the index space
``save_partition`` writes.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lit_fed.data.datasets import ArrayDataset, channel_stats
from lit_fed.data.presets import ClientSplit

__all__ = ["ClientArrays", "ClientDataset", "ClientSource", "build_client_dataset"]

Samples = tuple[Any, Any, str]
"""``(x, y, origin)``: a client split's samples, labels and where they come from (named in error messages)."""


@dataclass(eq=False)
class ClientDataset:
    """A validated federation of explicit client data.

    Attributes:
        data: ``train_x``/``train_y``: the pool of every client's samples (see the module docstring);
            ``test_x``/``test_y``: the global test set, empty when none was given. ``mean``/``std`` are the pool's
            per-channel statistics.
        splits: Per client ``(train, test)`` indices into the pool; ``test`` is ``None`` where no test split was
            given (the datamodule then splits the client's samples by its ``train_fraction``).
        names: Per-client names (e.g. LEAF user ids), for reports.
    """

    data: ArrayDataset
    splits: list[ClientSplit]
    names: list[str]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.splits)


class ClientSource(abc.ABC):
    """Where explicit per-client data come from; :meth:`load` returns the validated :class:`ClientDataset`."""

    @abc.abstractmethod
    def load(self) -> ClientDataset:
        """Loads (or returns the process-cached copy of) the client data.

        Raises:
            FileNotFoundError: A file the source needs is missing (named in the message).
            ValueError: The data are invalid (the message names the client and file, and what is wrong).
        """


def _images(x: Any, origin: str, sample_shape: Sequence[int] | None) -> np.ndarray:
    array = np.asarray(x)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{origin}: x must hold numbers, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{origin}: x must be an array of samples, got a scalar")
    count = array.shape[0]
    if sample_shape is not None:
        shape = tuple(int(s) for s in sample_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"sample_shape must be (C, H, W) or (H, W), got {list(shape)}")
        values = int(np.prod(array.shape[1:], dtype=np.int64))
        if values != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(
                f"{origin}: x has shape {tuple(array.shape)}; samples of {values} values cannot be reshaped to "
                f"sample_shape {list(shape)}"
            )
        array = array.reshape((count, *shape))
    elif array.ndim not in (3, 4):
        raise ValueError(
            f"{origin}: x has shape {tuple(array.shape)}; expected (N, C, H, W) or (N, H, W) images, or pass "
            "sample_shape to reshape flat samples (e.g. [1, 28, 28])"
        )
    if array.ndim == 3:
        array = array[:, None]
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{origin}: x has non-finite values (NaN or inf)")
        return array
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{origin}: integer pixels must lie in [0, 255], got [{int(array.min())}, {int(array.max())}]")
    return array.astype(np.uint8)


def _labels(y: Any, origin: str, count: int) -> np.ndarray:
    array = np.asarray(y)
    if array.ndim != 1:
        raise ValueError(f"{origin}: y must be a 1-D array of class ids, got shape {tuple(array.shape)}")
    if array.shape[0] != count:
        raise ValueError(f"{origin}: x has {count} samples but y has {array.shape[0]} labels")
    if array.size and np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise ValueError(f"{origin}: y must be integer class ids, got non-integral values")
    elif array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{origin}: y must be integer class ids, got dtype {array.dtype}")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{origin}: label {int(labels.min())} is negative; labels are class ids 0..C-1")
    return labels


def build_client_dataset(
    name: str,
    train: Sequence[Samples],
    test: Sequence[Samples | None] | None = None,
    global_test: Samples | None = None,
    num_classes: int | None = None,
    sample_shape: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> ClientDataset:
    """Validates explicit client data and lays it out as one pool (see the module docstring).

    Args:
        name: Name of the federation (e.g. the folder it comes from).
        train: Per client ``(x, y, origin)`` of its training samples.
        test: Per client ``(x, y, origin)`` of its test samples, or ``None`` (for all, or for one client) to
            split the client's samples by the datamodule's ``train_fraction``.
        global_test: ``(x, y, origin)`` of a global test set, or ``None``.
        num_classes: Number of classes; ``None``: one more than the largest label.
        sample_shape: Reshape every sample to this ``(C, H, W)`` or ``(H, W)`` (for flat samples).
        names: Per-client names; default ``"0"``, ``"1"``, ….

    Raises:
        ValueError: See the module docstring; every message names the client's origin and what is wrong.
    """
    if not train:
        raise ValueError(f"{name}: no clients")
    if test is not None and len(test) != len(train):
        raise ValueError(f"{name}: {len(train)} clients have training data but {len(test)} test entries were given")
    if names is not None and len(names) != len(train):
        raise ValueError(f"{name}: {len(names)} client names for {len(train)} clients")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer or None, got num_classes={num_classes!r}")
    tests: list[Samples | None] = list(test) if test is not None else [None] * len(train)
    pieces: list[tuple[np.ndarray, np.ndarray, str]] = []
    sizes: list[tuple[int, int | None]] = []
    for client, (train_part, test_part) in enumerate(zip(train, tests, strict=True)):
        counts: list[int | None] = []
        for kind, part in (("train", train_part), ("test", test_part)):
            if part is None:
                counts.append(None)
                continue
            x, y, origin = part
            if len(x) == 0:
                problem = "no training samples" if kind == "train" else "an empty test split"
                raise ValueError(f"{origin}: client {client} has {problem}")
            images = _images(x, origin, sample_shape)
            labels = _labels(y, origin, images.shape[0])
            pieces.append((images, labels, origin))
            counts.append(images.shape[0])
        sizes.append((int(counts[0]), counts[1]))  # type: ignore[arg-type]
    extra = []
    if global_test is not None:
        x, y, origin = global_test
        images = _images(x, origin, sample_shape)
        extra.append((images, _labels(y, origin, images.shape[0]), origin))
    first_images, _, first_origin = pieces[0]
    for images, _, origin in pieces + extra:
        if images.shape[1:] != first_images.shape[1:]:
            raise ValueError(
                f"{origin}: samples have shape {tuple(images.shape[1:])} but {first_origin}'s have "
                f"{tuple(first_images.shape[1:])}; all clients must share one sample shape"
            )
        if images.dtype != first_images.dtype:
            raise ValueError(
                f"{origin}: x is {images.dtype} but {first_origin}'s is {first_images.dtype}; all clients must "
                "share one dtype (uint8 pixels or floats)"
            )
    if num_classes is None:
        num_classes = max(int(labels.max()) for _, labels, _ in pieces + extra if labels.size) + 1
    for _, labels, origin in pieces + extra:
        if labels.size and labels.max() >= num_classes:
            raise ValueError(
                f"{origin}: label {int(labels.max())} is out of range for num_classes={num_classes} "
                f"(labels are 0..{num_classes - 1})"
            )
    splits: list[ClientSplit] = []
    offset = 0
    for n_train, n_test in sizes:
        train_idx = np.arange(offset, offset + n_train, dtype=np.int64)
        offset += n_train
        test_idx = None if n_test is None else np.arange(offset, offset + n_test, dtype=np.int64)
        offset += n_test or 0
        splits.append((train_idx, test_idx))
    pool_x = torch.from_numpy(np.concatenate([images for images, _, _ in pieces]))
    pool_y = torch.from_numpy(np.concatenate([labels for _, labels, _ in pieces]))
    if extra:
        test_x, test_y = torch.from_numpy(extra[0][0]), torch.from_numpy(extra[0][1])
    else:
        test_x = torch.empty((0, *pool_x.shape[1:]), dtype=pool_x.dtype)
        test_y = torch.empty(0, dtype=torch.int64)
    mean, std = channel_stats(pool_x)
    data = ArrayDataset(pool_x, pool_y, test_x, test_y, num_classes, mean, std, name)
    client_names = [str(n) for n in names] if names is not None else [str(k) for k in range(len(train))]
    return ClientDataset(data=data, splits=splits, names=client_names)


@dataclass(eq=False)
class ClientArrays(ClientSource):
    """Client data given as arrays or tensors, one ``(x, y)`` pair per client (Python API).

    Example:
        >>> import numpy as np
        >>> x, y = np.zeros((6, 1, 4, 4), np.uint8), np.array([0, 1, 0, 1, 0, 1])
        >>> source = ClientArrays(train=[(x[:4], y[:4]), (x[4:], y[4:])], num_classes=2)
        >>> source.load().num_clients
        2

    Attributes:
        train: Per client ``(x, y)``: ``(N, C, H, W)`` or ``(N, H, W)`` images (``uint8`` or float) and integer
            labels.
        test: Per client ``(x, y)`` of its local test split (an entry may be ``None``), or ``None``: the
            datamodule splits each client's ``train`` samples by its ``train_fraction``.
        global_test: ``(x, y)`` of a global test set; ``None``: the global model is evaluated on the pooled
            client test splits.
        num_classes: Number of classes (``None``: largest label + 1).
        sample_shape: Reshape flat samples to ``(C, H, W)`` or ``(H, W)``.
        names: Optional per-client names.
        name: Name of the federation.
    """

    train: Sequence[tuple[Any, Any]]
    test: Sequence[tuple[Any, Any] | None] | None = None
    global_test: tuple[Any, Any] | None = None
    num_classes: int | None = None
    sample_shape: Sequence[int] | None = None
    names: Sequence[str] | None = None
    name: str = "client arrays"

    def load(self) -> ClientDataset:
        """Validates the arrays (see :func:`build_client_dataset`)."""
        train = [(x, y, f"client {k} train") for k, (x, y) in enumerate(self.train)]
        test = None
        if self.test is not None:
            test = [
                None if part is None else (part[0], part[1], f"client {k} test") for k, part in enumerate(self.test)
            ]
        global_test = None if self.global_test is None else (*self.global_test, "global test")
        return build_client_dataset(
            self.name, train, test, global_test, self.num_classes, self.sample_shape, self.names
        )
