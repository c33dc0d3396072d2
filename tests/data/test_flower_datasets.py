"""Flower Datasets interop: lit_fed gets exactly the partitions a flwr_datasets partitioner makes."""

import sys

import numpy as np
import pytest
import torch
import yaml

from lit_fed.data import ClientDataModule, FederatedDataModule, FlowerDatasetClients, FlowerPartitioner, Synthetic
from lit_fed.data.flower_datasets import require_flwr_datasets
from lit_fed.utils.seeding import derive_seed

try:
    import datasets
    from flwr_datasets import partitioner as flwr_partitioner
except ImportError:  # the optional extra is not installed: only the first test runs
    datasets = flwr_partitioner = None

needs_flwr_datasets = pytest.mark.skipif(
    flwr_partitioner is None, reason="flwr-datasets (optional extra) is not installed"
)

SOURCE = Synthetic(num_classes=4, num_train=400, num_test=200, image_size=8, channels=1, seed=0)


def test_missing_flwr_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr_datasets", None)  # makes `import flwr_datasets` fail
    with pytest.raises(ImportError) as info:
        require_flwr_datasets()
    assert str(info.value).startswith(
        "Flower Datasets interop needs the optional 'flwr-datasets' package: pip install -e \".[flwr-datasets]\" "
        "(or pip install flwr-datasets); import failed with: "
    )
    dm = FederatedDataModule(SOURCE, FlowerPartitioner("IidPartitioner"), num_clients=4)
    with pytest.raises(ImportError, match="flwr-datasets"):
        dm.setup()


def flower_rows(partitioner, labels: np.ndarray) -> list[np.ndarray]:
    """What the Flower partitioner itself gives for a dataset of these labels: each partition's row ids."""
    table = datasets.Dataset.from_dict({"label": labels, "row": np.arange(labels.size)})
    partitioner.dataset = table
    return [
        np.asarray(partitioner.load_partition(k).with_format("numpy")["row"]) for k in range(partitioner.num_partitions)
    ]


def client_rows(dm: FederatedDataModule) -> list[np.ndarray]:
    return [np.sort(np.concatenate(dm.client_indices(k))) for k in range(dm.num_clients)]


@needs_flwr_datasets
def test_named_dirichlet_partitioner_gives_exactly_flowers_partitions():
    options = {"alpha": 0.5, "min_partition_size": 10}
    dm = FederatedDataModule(SOURCE, FlowerPartitioner("DirichletPartitioner", options), num_clients=5, seed=7)
    reference = flwr_partitioner.DirichletPartitioner(
        num_partitions=5, partition_by="label", seed=derive_seed(7, "partition", "flwr_datasets") % 2**32, **options
    )
    expected = flower_rows(reference, SOURCE.load().train_y.numpy())
    got = client_rows(dm)
    assert len(got) == 5
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine, np.sort(theirs))
    np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.arange(400))


@needs_flwr_datasets
def test_a_partitioner_instance_is_used_as_given():
    partitioner = flwr_partitioner.IidPartitioner(num_partitions=4)
    dm = FederatedDataModule(SOURCE, FlowerPartitioner(partitioner), num_clients=4)
    for client, rows in enumerate(client_rows(dm)):
        np.testing.assert_array_equal(rows, np.arange(100 * client, 100 * (client + 1)))  # contiguous shards
    assert not partitioner.is_dataset_assigned(), "the instance is copied, so it can be reused"
    again = FederatedDataModule(SOURCE, FlowerPartitioner(partitioner), num_clients=4)
    np.testing.assert_array_equal(client_rows(again)[3], np.arange(300, 400))


@needs_flwr_datasets
def test_the_run_seed_drives_a_named_partitioner():
    make = lambda seed: FederatedDataModule(  # noqa: E731
        SOURCE, FlowerPartitioner("PathologicalPartitioner", {"num_classes_per_partition": 2}), num_clients=4, seed=seed
    )
    first, same, other = client_rows(make(0)), client_rows(make(0)), client_rows(make(1))
    assert all(np.array_equal(a, b) for a, b in zip(first, same, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    for rows in first:
        assert np.unique(SOURCE.load().train_y.numpy()[rows]).size <= 2


@needs_flwr_datasets
def test_flower_partitioner_from_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(FederatedDataModule, "data")
    config = {
        "data": {
            "dataset": {"class_path": "lit_fed.data.Synthetic"},
            "partitioner": {
                "class_path": "lit_fed.data.FlowerPartitioner",
                "init_args": {
                    "partitioner": "DirichletPartitioner",
                    "options": {"alpha": 0.3, "min_partition_size": 5},
                },
            },
            "num_clients": 4,
        }
    }
    module = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).data
    assert module.partitioner == FlowerPartitioner("DirichletPartitioner", {"alpha": 0.3, "min_partition_size": 5})
    assert module.partition_summary()["num_clients"] == 4


@needs_flwr_datasets
@pytest.mark.parametrize(
    ("partitioner", "message"),
    [
        ("NoSuchPartitioner", "flwr_datasets.partitioner has no partitioner 'NoSuchPartitioner'; known: ["),
        (
            lambda: flwr_partitioner.IidPartitioner(num_partitions=3),
            "IidPartitioner makes 3 partitions for num_clients=4",
        ),
    ],
)
def test_partitioner_errors(partitioner, message):
    partitioner = partitioner() if callable(partitioner) else partitioner
    with pytest.raises(ValueError) as info:
        FlowerPartitioner(partitioner)(SOURCE.load().train_y.numpy(), 4, 0)
    assert str(info.value).startswith(message)


@needs_flwr_datasets
def test_an_assigned_partitioner_is_refused():
    partitioner = flwr_partitioner.IidPartitioner(num_partitions=2)
    partitioner.dataset = datasets.Dataset.from_dict({"label": [0, 1]})
    with pytest.raises(ValueError) as info:
        FlowerPartitioner(partitioner)(np.array([0, 1]), 2, 0)
    assert str(info.value) == (
        "IidPartitioner already has a dataset; pass one without (FlowerPartitioner assigns its own) or use "
        "FlowerDatasetClients for your own dataset"
    )


@needs_flwr_datasets
def test_more_partitions_than_rows_is_refused():
    partitioner = flwr_partitioner.IidPartitioner(num_partitions=3)
    with pytest.raises(ValueError) as info:
        FlowerPartitioner(partitioner)(np.array([0, 1]), 3, 0)
    assert str(info.value) == (
        "IidPartitioner could not make partition 2: IndexError: Index 2 out of range for dataset of size 2."
    )


@needs_flwr_datasets
def test_an_empty_partition_is_refused():
    class FirstRowOnly(flwr_partitioner.Partitioner):
        num_partitions = 2

        def load_partition(self, partition_id):
            return self.dataset.select([0] if partition_id == 0 else [])

    with pytest.raises(ValueError) as info:
        FlowerPartitioner(FirstRowOnly())(np.array([0, 1, 1]), 2, 0)
    assert str(info.value) == "FirstRowOnly: partition 1 is empty; every client needs samples"


# -- your own datasets.Dataset -----------------------------------------------------------------------------


def encoded_dataset(n: int = 120) -> "datasets.Dataset":
    """Rows whose pixels all equal the row id, so the served images reveal which rows a client got."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 2, 2)).copy()
    labels = np.arange(n) % 3
    return datasets.Dataset.from_dict({"image": images, "label": labels})


@needs_flwr_datasets
def test_flower_dataset_clients_hold_exactly_the_partitioners_rows():
    table = encoded_dataset()
    partitioner = flwr_partitioner.DirichletPartitioner(
        num_partitions=4, partition_by="label", alpha=1.0, min_partition_size=5, seed=11
    )
    dm = ClientDataModule(FlowerDatasetClients(partitioner, table), normalization="none", train_fraction=0.5)
    reference = flwr_partitioner.DirichletPartitioner(
        num_partitions=4, partition_by="label", alpha=1.0, min_partition_size=5, seed=11
    )
    expected = flower_rows(reference, np.arange(120) % 3)
    assert dm.num_clients == 4 and dm.num_classes == 3 and dm.input_shape == (1, 2, 2)
    for client, rows in enumerate(expected):
        train_slice, test_slice = dm._train_slice(client), dm._test_slice(client)
        served = torch.cat([dm.built.images[train_slice], dm.built.images[test_slice]])[:, 0, 0, 0]
        np.testing.assert_array_equal(np.sort(served.numpy().astype(np.int64)), np.sort(rows))
        assert dm.client_num_train_samples(client) + dm.client_num_test_samples(client) == rows.size
    assert dm.global_test_name == "pooled client test splits"


@needs_flwr_datasets
def test_flower_dataset_clients_with_a_global_test_set():
    table = encoded_dataset()
    partitioner = flwr_partitioner.IidPartitioner(num_partitions=3)
    source = FlowerDatasetClients(partitioner, table, global_test=encoded_dataset(30))
    dm = ClientDataModule(source, normalization="none")
    assert dm.global_test_name == "global test set"
    assert torch.cat([y for _, y in dm.global_test_dataloader()]).tolist() == (np.arange(30) % 3).tolist()


@needs_flwr_datasets
def test_flower_dataset_clients_need_the_columns():
    partitioner = flwr_partitioner.IidPartitioner(num_partitions=2)
    with pytest.raises(ValueError) as info:
        FlowerDatasetClients(partitioner, encoded_dataset(), image_column="img").load()
    assert str(info.value) == "the partitioner's dataset has no column 'img' (columns: ['image', 'label'])"
