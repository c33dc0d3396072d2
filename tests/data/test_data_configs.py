"""The example data configs of the explicit-data features parse and build from YAML (data: class_path/init_args)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from jsonargparse import ArgumentParser

from lit_fed.data import (
    IID,
    ClientDataModule,
    FashionMNIST,
    FederatedDataModule,
    FlowerPartitioner,
    LeafJSON,
    PFLlibFolder,
    SavedPartition,
    Synthetic,
    write_pfllib_folder,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def parse(config: dict) -> FederatedDataModule:
    parser = ArgumentParser()
    parser.add_subclass_arguments(FederatedDataModule, "data")  # as LightningCLI's subclass_mode_data
    return parser.instantiate(parser.parse_string(yaml.safe_dump(config))).data


def read(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_pfllib_folder_config(tmp_path):
    config = read("pfllib_folder.yaml")
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), rng.integers(0, 3, n)) for n in (12, 20)]
    write_pfllib_folder(tmp_path, parts, [(x[:4], y[:4]) for x, y in parts])
    config["data"]["init_args"]["clients"]["init_args"]["root"] = str(tmp_path)
    data = parse(config)
    assert isinstance(data, ClientDataModule)
    assert data.clients == PFLlibFolder(str(tmp_path))
    assert (data.batch_size, data.normalization, data.drop_last) == (10, "dataset", False)
    assert data.num_clients == 2 and data.global_test_name == "pooled client test splits"


def test_leaf_config(tmp_path):
    config = read("leaf_femnist.yaml")
    users = {"w0": 6, "w1": 4}
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        content = {
            "users": list(users),
            "num_samples": list(users.values()),
            "user_data": {
                u: {"x": rng.random((n, 784)).tolist(), "y": rng.integers(0, 62, n).tolist()} for u, n in users.items()
            },
        }
        (tmp_path / split).mkdir()
        (tmp_path / split / "all_data_0.json").write_text(json.dumps(content))
    clients = config["data"]["init_args"]["clients"]["init_args"]
    clients.update(train=str(tmp_path / "train"), test=str(tmp_path / "test"))
    data = parse(config)
    assert data.clients == LeafJSON(str(tmp_path / "train"), str(tmp_path / "test"), 62, (1, 28, 28))
    assert (data.num_clients, data.num_classes, data.input_shape) == (2, 62, (1, 28, 28))
    assert data.client_names == ["w0", "w1"]


def test_saved_partition_config(tmp_path):
    config = read("fmnist_saved_partition.yaml")
    assert config["data"]["init_args"]["dataset"] == {"class_path": "lit_fed.data.FashionMNIST"}
    source = Synthetic(num_train=400)
    first = FederatedDataModule(source, IID(), num_clients=20, batch_size=10)
    path = first.save_partition(tmp_path)
    config["data"]["init_args"]["dataset"] = {"class_path": "lit_fed.data.Synthetic", "init_args": {"num_train": 400}}
    config["data"]["init_args"]["partitioner"]["init_args"]["path"] = str(path)
    data = parse(config)
    assert data.partitioner == SavedPartition(str(path))
    for client in range(20):
        np.testing.assert_array_equal(data.client_indices(client)[0], first.client_indices(client)[0])


def test_flower_config_parses_without_flwr_datasets_installed():
    data = parse(read("fmnist_flower_dirichlet.yaml"))
    assert isinstance(data.dataset, FashionMNIST)
    assert data.partitioner == FlowerPartitioner("DirichletPartitioner", {"alpha": 0.1, "min_partition_size": 10})
    assert data.num_clients == 20


@pytest.mark.parametrize("name", ["fmnist_dir01.yaml", "fmnist_pathological.yaml", "synthetic.yaml"])
def test_existing_configs_keep_their_defaults(name):
    data = parse(read(name))
    assert (data.normalization, data.drop_last, data.train_fraction, data.mean, data.std) == (
        "dataset",
        False,
        0.75,
        None,
        None,
    )
