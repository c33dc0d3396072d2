"""Datasets, client partitions and the ``FederatedDataModule`` that serves per-client loaders."""

from lit_fed.data.batching import TensorBatchDataset, normalize_images, random_crop_flip
from lit_fed.data.datamodule import FederatedDataModule
from lit_fed.data.datasets import (
    CIFAR10,
    CIFAR100,
    MNIST,
    ArrayDataset,
    DatasetSource,
    Digits,
    FashionMNIST,
    Synthetic,
)
from lit_fed.data.idx import read_idx, write_idx
from lit_fed.data.partition import (
    IID,
    Dirichlet,
    Partitioner,
    Pathological,
    QuantitySkew,
    class_histogram,
    dirichlet_partition,
    iid_partition,
    long_tail_class_sizes,
    long_tail_indices,
    pathological_partition,
    quantity_skew_partition,
    split_train_test,
)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "IID",
    "MNIST",
    "ArrayDataset",
    "DatasetSource",
    "Digits",
    "Dirichlet",
    "FashionMNIST",
    "FederatedDataModule",
    "Partitioner",
    "Pathological",
    "QuantitySkew",
    "Synthetic",
    "TensorBatchDataset",
    "class_histogram",
    "dirichlet_partition",
    "iid_partition",
    "long_tail_class_sizes",
    "long_tail_indices",
    "normalize_images",
    "pathological_partition",
    "quantity_skew_partition",
    "random_crop_flip",
    "read_idx",
    "split_train_test",
    "write_idx",
]

from lit_fed.data.shakespeare import (  # noqa: E402
    TINY_SHAKESPEARE_URL,
    ShakespeareDataModule,
    WindowDataset,
    find_tiny_shakespeare,
    parse_speeches,
)

__all__ += ["TINY_SHAKESPEARE_URL", "ShakespeareDataModule", "WindowDataset", "find_tiny_shakespeare", "parse_speeches"]
