"""Datasets, client partitions and the datamodules that serve per-client loaders.

``FederatedDataModule`` splits one dataset among clients (a drawn partition, explicit index lists or a saved
``partition.json``); ``ClientDataModule`` serves data that come already split per client (PFLlib folders, LEAF
JSON, arrays, Flower Datasets partitioners).
"""

from lit_fed.data.batching import TensorBatchDataset, normalize_images, random_crop_flip
from lit_fed.data.client_datamodule import ClientDataModule
from lit_fed.data.clients import ClientArrays, ClientDataset, ClientSource, build_client_dataset
from lit_fed.data.datamodule import GLOBAL_TEST_SET, POOLED_CLIENT_TESTS, FederatedDataModule
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
from lit_fed.data.files import DataFileError, read_json, read_npz
from lit_fed.data.flower_datasets import FlowerDatasetClients, FlowerPartitioner
from lit_fed.data.idx import read_idx, write_idx
from lit_fed.data.leaf import LeafJSON
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
from lit_fed.data.partition_file import PARTITION_FILE_NAME, PartitionFile, read_partition
from lit_fed.data.pfllib import PFLlibFolder, write_pfllib_folder
from lit_fed.data.presets import ClientIndices, PresetSplits, SavedPartition

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "GLOBAL_TEST_SET",
    "IID",
    "MNIST",
    "PARTITION_FILE_NAME",
    "POOLED_CLIENT_TESTS",
    "ArrayDataset",
    "ClientArrays",
    "ClientDataModule",
    "ClientDataset",
    "ClientIndices",
    "ClientSource",
    "DataFileError",
    "DatasetSource",
    "Digits",
    "Dirichlet",
    "FashionMNIST",
    "FederatedDataModule",
    "FlowerDatasetClients",
    "FlowerPartitioner",
    "LeafJSON",
    "PFLlibFolder",
    "PartitionFile",
    "Partitioner",
    "Pathological",
    "PresetSplits",
    "QuantitySkew",
    "SavedPartition",
    "Synthetic",
    "TensorBatchDataset",
    "build_client_dataset",
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
    "read_json",
    "read_npz",
    "read_partition",
    "split_train_test",
    "write_idx",
    "write_pfllib_folder",
]

from lit_fed.data.shakespeare import (  # noqa: E402
    TINY_SHAKESPEARE_URL,
    ShakespeareDataModule,
    WindowDataset,
    find_tiny_shakespeare,
    parse_speeches,
)

__all__ += ["TINY_SHAKESPEARE_URL", "ShakespeareDataModule", "WindowDataset", "find_tiny_shakespeare", "parse_speeches"]
