"""Datasets, client partitions and the datamodules that serve per-client loaders.

``FederatedDataModule`` splits one dataset among clients (a drawn partition, explicit index lists or a saved
``partition.json``); ``ClientDataModule`` serves data that come already split per client (PFLlib folders, LEAF
JSON, arrays, Flower Datasets partitioners); ``ClientLoaders`` (a factory of per-client loaders or datamodules) and
``PartitionedDataModule`` (your datamodule split by index lists) serve your own data, in any batch format.
"""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TensorBatchDataset": "lit_fed.data.batching",
    "normalize_images": "lit_fed.data.batching",
    "random_crop_flip": "lit_fed.data.batching",
    "ClientDataModule": "lit_fed.data.client_datamodule",
    "ClientArrays": "lit_fed.data.clients",
    "ClientDataset": "lit_fed.data.clients",
    "ClientSource": "lit_fed.data.clients",
    "build_client_dataset": "lit_fed.data.clients",
    "GLOBAL_TEST_SET": "lit_fed.data.datamodule",
    "POOLED_CLIENT_TESTS": "lit_fed.data.datamodule",
    "FederatedDataModule": "lit_fed.data.datamodule",
    "CIFAR10": "lit_fed.data.datasets",
    "CIFAR100": "lit_fed.data.datasets",
    "MNIST": "lit_fed.data.datasets",
    "ArrayDataset": "lit_fed.data.datasets",
    "DatasetSource": "lit_fed.data.datasets",
    "Digits": "lit_fed.data.datasets",
    "FashionMNIST": "lit_fed.data.datasets",
    "Synthetic": "lit_fed.data.datasets",
    "DataFileError": "lit_fed.data.files",
    "read_json": "lit_fed.data.files",
    "read_npz": "lit_fed.data.files",
    "FlowerDatasetClients": "lit_fed.data.flower_datasets",
    "FlowerPartitioner": "lit_fed.data.flower_datasets",
    "read_idx": "lit_fed.data.idx",
    "write_idx": "lit_fed.data.idx",
    "LeafJSON": "lit_fed.data.leaf",
    "IID": "lit_fed.data.partition",
    "Dirichlet": "lit_fed.data.partition",
    "Partitioner": "lit_fed.data.partition",
    "Pathological": "lit_fed.data.partition",
    "QuantitySkew": "lit_fed.data.partition",
    "class_histogram": "lit_fed.data.partition",
    "dirichlet_partition": "lit_fed.data.partition",
    "iid_partition": "lit_fed.data.partition",
    "long_tail_class_sizes": "lit_fed.data.partition",
    "long_tail_indices": "lit_fed.data.partition",
    "pathological_partition": "lit_fed.data.partition",
    "quantity_skew_partition": "lit_fed.data.partition",
    "split_train_test": "lit_fed.data.partition",
    "PARTITION_FILE_NAME": "lit_fed.data.partition_file",
    "PartitionFile": "lit_fed.data.partition_file",
    "read_partition": "lit_fed.data.partition_file",
    "PFLlibFolder": "lit_fed.data.pfllib",
    "write_pfllib_folder": "lit_fed.data.pfllib",
    "ClientIndices": "lit_fed.data.presets",
    "PresetSplits": "lit_fed.data.presets",
    "SavedPartition": "lit_fed.data.presets",
    "TINY_SHAKESPEARE_URL": "lit_fed.data.shakespeare",
    "ShakespeareDataModule": "lit_fed.data.shakespeare",
    "WindowDataset": "lit_fed.data.shakespeare",
    "find_tiny_shakespeare": "lit_fed.data.shakespeare",
    "parse_speeches": "lit_fed.data.shakespeare",
    "ClientLoaders": "lit_fed.data.user_data",
    "PartitionedDataModule": "lit_fed.data.user_data",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
