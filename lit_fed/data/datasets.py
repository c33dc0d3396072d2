"""Dataset sources: small configurable classes whose ``load()`` returns a whole dataset as tensors.

Each source is a frozen dataclass usable from YAML (``class_path``/``init_args``) and returns an
:class:`ArrayDataset`: ``uint8`` images ``N×C×H×W``, ``int64`` labels and per-channel normalization
statistics. Loaded datasets are cached per process (keyed by the files or parameters they come from), so
repeated datamodule setups do not re-read or re-decode anything. Treat the returned tensors as read-only.

* :class:`FashionMNIST` (Xiao et al. 2017) and :class:`MNIST` (LeCun et al. 1998) read the IDX files directly
  (:mod:`lit_fed.data.idx`) from a root, ``$LIT_FED_DATA`` or the Debian/Ubuntu dataset packages, and fall
  back to a torchvision download.
* :class:`CIFAR10` / :class:`CIFAR100` (Krizhevsky 2009) load through torchvision.
* :class:`Synthetic` is a tiny, learnable, deterministic dataset for tests; :class:`Digits` is scikit-learn's
  bundled 8×8 digits (Alpaydin & Kaynak 1998), a small real dataset that needs no download.
"""

from __future__ import annotations

import abc
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from lit_fed.data.idx import read_idx
from lit_fed.data.partition import split_train_test
from lit_fed.utils.seeding import numpy_rng

DATA_ENV_VAR = "LIT_FED_DATA"
"""Environment variable naming a directory searched for datasets (and used as torchvision's download root)."""


def default_data_root() -> Path:
    """``$LIT_FED_DATA`` if set, else ``~/.cache/lit_fed/data``: where torchvision downloads go by default."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else Path("~/.cache/lit_fed/data").expanduser()


# --------------------------------------------------------------------------------------------------
# The in-memory dataset
# ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ArrayDataset:
    """A whole image-classification dataset as tensors.

    Attributes:
        train_x: ``(N, C, H, W)`` training images: ``uint8`` in ``[0, 255]`` or floating point in ``[0, 1]``.
        train_y: ``(N,)`` int64 training labels.
        test_x: ``(M, C, H, W)`` test images, same dtype convention.
        test_y: ``(M,)`` int64 test labels.
        num_classes: Number of classes.
        mean: Per-channel mean of the training images on the ``[0, 1]`` scale.
        std: Per-channel standard deviation on the ``[0, 1]`` scale.
        name: Human-readable name.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.ndim != 4:
                raise ValueError(f"{self.name}: {split}_x must be N×C×H×W, got shape {tuple(x.shape)}")
            if y.ndim != 1 or y.dtype != torch.int64 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{self.name}: {split}_y must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{self.name}: {split}_y has labels outside [0, {self.num_classes})")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"{self.name}: train and test images differ in shape: {tuple(self.train_x.shape[1:])} vs "
                f"{tuple(self.test_x.shape[1:])}"
            )
        channels = self.train_x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise ValueError(
                f"{self.name}: mean {self.mean} and std {self.std} must have one entry per channel "
                f"({channels}) and std > 0"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.train_x.shape[1:]
        return int(channels), int(height), int(width)


def channel_stats(images: Tensor, chunk_size: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``images`` on the ``[0, 1]`` scale.

    Args:
        images: ``(N, C, H, W)`` ``uint8`` (divided by 255) or floating-point images.
        chunk_size: Images converted to float64 at a time (bounds the memory used).
    """
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(chunk_size):
        values = chunk.to(torch.float64) / scale
        total += values.sum(dim=(0, 2, 3))
        squares += values.square().sum(dim=(0, 2, 3))
    count = images.numel() / channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _as_dataset(
    name: str, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int
) -> ArrayDataset:
    mean, std = channel_stats(train_x)
    return ArrayDataset(
        train_x=train_x.contiguous(),
        train_y=train_y.to(torch.int64),
        test_x=test_x.contiguous(),
        test_y=test_y.to(torch.int64),
        num_classes=num_classes,
        mean=mean,
        std=std,
        name=name,
    )


class DatasetSource(abc.ABC):
    """Where a dataset comes from; :meth:`load` returns it whole as an :class:`ArrayDataset`."""

    @abc.abstractmethod
    def load(self) -> ArrayDataset:
        """Loads (or returns the process-cached copy of) the dataset."""


# --------------------------------------------------------------------------------------------------
# torchvision
# ----------------------------------------------------------------------------------------------------


def _torchvision_split(dataset: Any) -> tuple[Tensor, Tensor]:
    """``uint8`` ``N×C×H×W`` images and int64 labels of a torchvision MNIST- or CIFAR-style dataset."""
    data = dataset.data
    if isinstance(data, np.ndarray):  # CIFAR: N×H×W×C
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)
    else:  # MNIST family: N×H×W tensor
        images = data.unsqueeze(1)
    return images.to(torch.uint8).contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


@functools.lru_cache(maxsize=8)
def _load_torchvision(name: str, class_name: str, root: str, download: bool, num_classes: int) -> ArrayDataset:
    from torchvision import datasets as tv_datasets

    factory = getattr(tv_datasets, class_name)
    train_x, train_y = _torchvision_split(factory(root, train=True, download=download))
    test_x, test_y = _torchvision_split(factory(root, train=False, download=download))
    return _as_dataset(name, train_x, train_y, test_x, test_y, num_classes)


def _unique_paths(paths: Sequence[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        if path not in seen:
            seen.append(path)
    return seen


def _failed(class_name: str, root: Path, download: bool, error: BaseException) -> str:
    """One line describing a failed torchvision attempt."""
    reason = " ".join(str(error).split())
    return f"torchvision.datasets.{class_name}({root}, download={download}): {type(error).__name__}: {reason}"


def _not_found(name: str, looked: Sequence[str], hint: str) -> FileNotFoundError:
    places = "\n".join(f"  - {place}" for place in looked)
    return FileNotFoundError(f"{name} not found. Looked in:\n{places}\nTo get the data: {hint}")


# --------------------------------------------------------------------------------------------------
# IDX sources (MNIST family)
# ----------------------------------------------------------------------------------------------------

IDX_FILE_STEMS: tuple[str, str, str, str] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The standard MNIST/Fashion-MNIST file names (each may carry a ``.gz`` suffix)."""


def find_idx_files(directory: str | Path) -> tuple[Path, Path, Path, Path] | None:
    """The four IDX files (train images/labels, test images/labels) in ``directory``, plain or gzipped.

    Returns:
        Their paths in :data:`IDX_FILE_STEMS` order, or ``None`` unless all four exist.
    """
    directory = Path(directory)
    found = []
    for stem in IDX_FILE_STEMS:
        candidates = [directory / stem, directory / f"{stem}.gz"]
        existing = next((path for path in candidates if path.is_file()), None)
        if existing is None:
            return None
        found.append(existing)
    return found[0], found[1], found[2], found[3]


def _describe_missing(directory: Path) -> str:
    if not directory.is_dir():
        return "no such directory"
    missing = [stem for stem in IDX_FILE_STEMS if not (directory / stem).is_file()]
    missing = [stem for stem in missing if not (directory / f"{stem}.gz").is_file()]
    return "missing " + ", ".join(f"{stem}[.gz]" for stem in missing)


@functools.lru_cache(maxsize=8)
def _load_idx_dataset(name: str, files: tuple[str, str, str, str], num_classes: int) -> ArrayDataset:
    train_images, train_labels, test_images, test_labels = (read_idx(path) for path in files)
    for images, labels, path in (
        (train_images, train_labels, files[0]),
        (test_images, test_labels, files[2]),
    ):
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{path}: images of shape {images.shape} do not match labels of shape {labels.shape}")

    def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    train_x, train_y = to_tensors(train_images, train_labels)
    test_x, test_y = to_tensors(test_images, test_labels)
    return _as_dataset(name, train_x, train_y, test_x, test_y, num_classes)


@dataclass(frozen=True)
class _IdxSource(DatasetSource):
    """Reads IDX files from the first directory that has all four, else downloads through torchvision.

    Attributes:
        root: A directory holding the IDX files directly or in torchvision's ``<root>/<Name>/raw`` layout;
            also the torchvision download root (default :func:`default_data_root`).
        download: Whether to try a torchvision download when no local copy is found.
    """

    root: str | None = None
    download: bool = True

    display_name: ClassVar[str]
    torchvision_name: ClassVar[str]
    env_subdirs: ClassVar[tuple[str, ...]]
    system_dirs: ClassVar[tuple[str, ...]]
    install_hint: ClassVar[str]

    def candidate_dirs(self) -> list[Path]:
        """The directories searched for the IDX files, in order."""
        dirs: list[Path] = []
        if self.root:
            root = Path(self.root).expanduser()
            dirs += [root, root / self.torchvision_name / "raw"]
        env = os.environ.get(DATA_ENV_VAR)
        if env:
            base = Path(env).expanduser()
            dirs += [base] + [base / sub for sub in self.env_subdirs]
        dirs += [Path(path) for path in self.system_dirs]
        return _unique_paths(dirs)

    def load(self) -> ArrayDataset:
        """Loads the dataset (see the class docstring for the search order).

        Raises:
            FileNotFoundError: Listing every directory searched and the download attempt, with how to get
                the data.
        """
        looked = []
        for directory in self.candidate_dirs():
            files = find_idx_files(directory)
            if files is not None:
                return _load_idx_dataset(self.display_name, tuple(str(path) for path in files), 10)
            looked.append(f"{directory} ({_describe_missing(directory)})")
        download_root = Path(self.root).expanduser() if self.root else default_data_root()
        if self.download:
            try:
                return _load_torchvision(self.display_name, self.torchvision_name, str(download_root), True, 10)
            except Exception as error:  # noqa: BLE001 - any failure (no network, bad mirror) ends in one message
                looked.append(_failed(self.torchvision_name, download_root, True, error))
        else:
            looked.append(f"torchvision download into {download_root}: skipped (download=False)")
        raise _not_found(self.display_name, looked, self.install_hint)


_IDX_HINT = (
    "put the four IDX files ({files}, optionally .gz) in a directory and pass root=<dir> or set "
    f"{DATA_ENV_VAR}=<dir>, or run with network access and download=True (torchvision)."
)


@dataclass(frozen=True)
class FashionMNIST(_IdxSource):
    """Fashion-MNIST (Xiao et al. 2017): 60 000 / 10 000 grayscale 28×28 images of 10 clothing classes.

    Searched in order: ``root`` and ``root/FashionMNIST/raw``; ``$LIT_FED_DATA``, its ``fashion-mnist`` and
    ``FashionMNIST/raw`` subdirectories; ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
    ``dataset-fashion-mnist``); finally a torchvision download into ``root`` (or :func:`default_data_root`).
    """

    display_name: ClassVar[str] = "Fashion-MNIST"
    torchvision_name: ClassVar[str] = "FashionMNIST"
    env_subdirs: ClassVar[tuple[str, ...]] = ("fashion-mnist", "FashionMNIST/raw")
    system_dirs: ClassVar[tuple[str, ...]] = ("/usr/share/datasets/fashion-mnist",)
    install_hint: ClassVar[str] = "`apt-get install dataset-fashion-mnist` on Debian/Ubuntu, or " + _IDX_HINT.format(
        files=", ".join(IDX_FILE_STEMS)
    )


@dataclass(frozen=True)
class MNIST(_IdxSource):
    """MNIST (LeCun et al. 1998): 60 000 / 10 000 grayscale 28×28 handwritten digits.

    Searched like :class:`FashionMNIST`: ``root`` and ``root/MNIST/raw``; ``$LIT_FED_DATA``, its ``mnist`` and
    ``MNIST/raw`` subdirectories; ``/usr/share/datasets/mnist``; finally a torchvision download.
    """

    display_name: ClassVar[str] = "MNIST"
    torchvision_name: ClassVar[str] = "MNIST"
    env_subdirs: ClassVar[tuple[str, ...]] = ("mnist", "MNIST/raw")
    system_dirs: ClassVar[tuple[str, ...]] = ("/usr/share/datasets/mnist",)
    install_hint: ClassVar[str] = _IDX_HINT.format(files=", ".join(IDX_FILE_STEMS))


# --------------------------------------------------------------------------------------------------
# CIFAR (torchvision)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TorchvisionSource(DatasetSource):
    """Loads a torchvision dataset from ``root``, ``$LIT_FED_DATA`` or the default root, else downloads it.

    Attributes:
        root: torchvision root directory (checked first and used for the download).
        download: Whether to download when no local copy is found.
    """

    root: str | None = None
    download: bool = True

    display_name: ClassVar[str]
    torchvision_name: ClassVar[str]
    num_classes: ClassVar[int]

    def candidate_roots(self) -> list[Path]:
        """The roots checked for an existing copy, in order."""
        roots = [Path(self.root).expanduser()] if self.root else []
        env = os.environ.get(DATA_ENV_VAR)
        if env:
            roots.append(Path(env).expanduser())
        roots.append(default_data_root())
        return _unique_paths(roots)

    def load(self) -> ArrayDataset:
        """Loads the dataset.

        Raises:
            FileNotFoundError: Listing every root tried and the download attempt, with how to get the data.
        """
        looked = []
        roots = self.candidate_roots()
        for root in roots:
            try:
                return _load_torchvision(self.display_name, self.torchvision_name, str(root), False, self.num_classes)
            except Exception as error:  # noqa: BLE001 - torchvision signals a missing copy with RuntimeError
                looked.append(_failed(self.torchvision_name, root, False, error))
        if self.download:
            try:
                return _load_torchvision(
                    self.display_name, self.torchvision_name, str(roots[0]), True, self.num_classes
                )
            except Exception as error:  # noqa: BLE001 - any failure (no network, bad mirror) ends in one message
                looked.append(_failed(self.torchvision_name, roots[0], True, error))
        else:
            looked.append(f"torchvision download into {roots[0]}: skipped (download=False)")
        hint = (
            f"place torchvision's {self.torchvision_name} files under one of these roots (root=<dir> or "
            f"{DATA_ENV_VAR}=<dir>), or run with network access and download=True."
        )
        raise _not_found(self.display_name, looked, hint)


@dataclass(frozen=True)
class CIFAR10(_TorchvisionSource):
    """CIFAR-10 (Krizhevsky 2009): 50 000 / 10 000 RGB 32×32 images of 10 classes, via torchvision."""

    display_name: ClassVar[str] = "CIFAR-10"
    torchvision_name: ClassVar[str] = "CIFAR10"
    num_classes: ClassVar[int] = 10


@dataclass(frozen=True)
class CIFAR100(_TorchvisionSource):
    """CIFAR-100 (Krizhevsky 2009): 50 000 / 10 000 RGB 32×32 images of 100 classes, via torchvision."""

    display_name: ClassVar[str] = "CIFAR-100"
    torchvision_name: ClassVar[str] = "CIFAR100"
    num_classes: ClassVar[int] = 100


# --------------------------------------------------------------------------------------------------
# Small datasets that need no files
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _synthetic(
    num_classes: int, num_train: int, num_test: int, image_size: int, channels: int, seed: int, noise: float
) -> ArrayDataset:
    rng = numpy_rng(seed, "synthetic")
    prototypes = rng.uniform(0.0, 1.0, size=(num_classes, channels, image_size, image_size))

    def sample(count: int) -> tuple[Tensor, Tensor]:
        labels = rng.permutation(np.arange(count) % num_classes)
        values = prototypes[labels] + noise * rng.standard_normal((count, channels, image_size, image_size))
        images = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    train_x, train_y = sample(num_train)
    test_x, test_y = sample(num_test)
    return _as_dataset("Synthetic", train_x, train_y, test_x, test_y, num_classes)


@dataclass(frozen=True)
class Synthetic(DatasetSource):
    """A tiny deterministic dataset for tests: class prototypes plus Gaussian pixel noise.

    Every class has a random prototype image (pixels ``~ U(0, 1)``); a sample is its class's prototype plus
    ``noise · N(0, 1)`` per pixel, clipped to ``[0, 1]`` and quantized to ``uint8``. Labels are balanced. With
    the default noise a small MLP or CNN reaches far above chance within a few epochs.

    Attributes:
        num_classes: Number of classes.
        num_train: Training samples.
        num_test: Test samples.
        image_size: Height and width.
        channels: Image channels.
        seed: Generator seed (stream ``(seed, "synthetic")``).
        noise: Standard deviation of the pixel noise on the ``[0, 1]`` scale.
    """

    num_classes: int = 4
    num_train: int = 400
    num_test: int = 200
    image_size: int = 8
    channels: int = 1
    seed: int = 0
    noise: float = 0.3

    def __post_init__(self) -> None:
        for name in ("num_classes", "num_train", "num_test", "image_size", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Synthetic: {name} must be a positive integer, got {name}={value!r}")
        if self.noise < 0:
            raise ValueError(f"Synthetic: noise must be >= 0, got noise={self.noise!r}")

    def load(self) -> ArrayDataset:
        """Generates (or returns the cached) dataset."""
        return _synthetic(
            self.num_classes,
            self.num_train,
            self.num_test,
            self.image_size,
            self.channels,
            self.seed,
            self.noise,
        )


@functools.lru_cache(maxsize=4)
def _digits(seed: int, test_fraction: float) -> ArrayDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = split_train_test(np.arange(labels.size), labels, 1.0 - test_fraction, seed=seed)
    targets = torch.from_numpy(labels)
    train, test = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return _as_dataset("Digits", images[train], targets[train], images[test], targets[test], 10)


@dataclass(frozen=True)
class Digits(DatasetSource):
    """scikit-learn's bundled handwritten digits (Alpaydin & Kaynak 1998, UCI): 1 797 grayscale 8×8 images.

    Pixel values ``0..16`` are rescaled to ``uint8`` ``0..255``; the set is split into train/test stratified
    by label (stream ``(seed, "split", 0)``), 80/20 by default. Needs no download.

    Attributes:
        seed: Split seed.
        test_fraction: Fraction of the samples in the test split (``0 < f < 1``).
    """

    seed: int = 0
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"Digits: test_fraction must be in (0, 1), got test_fraction={self.test_fraction!r}")

    def load(self) -> ArrayDataset:
        """Loads (or returns the cached) split."""
        return _digits(self.seed, float(self.test_fraction))
