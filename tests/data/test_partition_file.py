"""save_partition writes the partition actually used; SavedPartition / ClientIndices reproduce it exactly."""

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import SMALL_SOURCE, batches, small_datamodule

from lit_fed.data import (
    IID,
    ClientIndices,
    DataFileError,
    FederatedDataModule,
    SavedPartition,
    Synthetic,
    read_partition,
)
from lit_fed.data.partition_file import label_digest

SOURCE = SMALL_SOURCE


def make_dm(**overrides) -> FederatedDataModule:
    return small_datamodule(**{"seed": 3, **overrides})


def assert_same_batches(first, second) -> None:
    assert len(first) == len(second)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.fixture
def saved(tmp_path):
    original = make_dm()
    path = original.save_partition(tmp_path / "run")
    return original, path


def test_the_file_holds_the_partition_and_its_provenance(saved, tmp_path):
    original, path = saved
    assert path == tmp_path / "run" / "partition.json"
    content = json.loads(path.read_text())
    assert content["format"] == "lit_fed.partition" and content["version"] == 1
    assert content["source"] == "Synthetic"
    assert content["source_config"] == repr(SOURCE)
    assert (content["num_clients"], content["seed"], content["num_source_samples"]) == (5, 3, 400)
    assert content["label_digest"] == label_digest(SOURCE.load().train_y.numpy())
    assert content["metadata"]["partitioner"] == "Dirichlet(alpha=0.5, min_size=10, max_attempts=1000)"
    assert content["metadata"]["global_test"] == "global test set"
    for client, entry in enumerate(content["clients"]):
        train, test = original.client_indices(client)
        assert entry["train"] == train.tolist() and entry["test"] == test.tolist()
    record = read_partition(path)
    assert record.num_clients == 5 and record.source == "Synthetic"


def test_saved_partition_reproduces_indices_and_batches(saved):
    original, path = saved
    reloaded = make_dm(partitioner=SavedPartition(str(path)))
    for client in range(5):
        for a, b in zip(original.client_indices(client), reloaded.client_indices(client), strict=True):
            np.testing.assert_array_equal(a, b)
        for round_ in (0, 4):
            assert_same_batches(
                batches(original.client_train_dataloader(client, round_)),
                batches(reloaded.client_train_dataloader(client, round_)),
            )
        assert_same_batches(
            batches(original.client_test_dataloader(client)), batches(reloaded.client_test_dataloader(client))
        )
    assert torch.equal(original.built.images, reloaded.built.images)
    np.testing.assert_array_equal(original.partition_histogram(), reloaded.partition_histogram())
    assert_same_batches(batches(original.train_dataloader()), batches(reloaded.train_dataloader()))


def test_a_long_tailed_partition_round_trips(tmp_path):
    original = make_dm(partitioner=IID(), imbalance_ratio=10.0)
    path = original.save_partition(tmp_path)
    reloaded = make_dm(partitioner=SavedPartition(str(path)))
    for client in range(5):
        np.testing.assert_array_equal(original.client_indices(client)[0], reloaded.client_indices(client)[0])
        np.testing.assert_array_equal(original.client_indices(client)[1], reloaded.client_indices(client)[1])
    with pytest.raises(ValueError) as info:
        make_dm(partitioner=SavedPartition(str(path)), imbalance_ratio=10.0).setup()
    assert str(info.value) == (
        f"imbalance_ratio=10.0 cannot be combined with the preset partition SavedPartition(path='{path}'): its "
        "indices are used as given; set imbalance_ratio to null"
    )


def test_saved_partition_from_yaml(saved):
    from jsonargparse import ArgumentParser

    original, path = saved
    parser = ArgumentParser()
    parser.add_class_arguments(FederatedDataModule, "data")
    config = {
        "data": {
            "dataset": {"class_path": "lit_fed.data.Synthetic"},
            "partitioner": {"class_path": "lit_fed.data.SavedPartition", "init_args": {"path": str(path)}},
            "num_clients": 5,
            "seed": 3,
        }
    }
    module = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).data
    assert module.partitioner == SavedPartition(str(path))
    np.testing.assert_array_equal(module.client_indices(4)[1], original.client_indices(4)[1])


def test_wrong_number_of_clients(saved):
    _, path = saved
    with pytest.raises(ValueError) as info:
        make_dm(partitioner=SavedPartition(str(path)), num_clients=4).setup()
    assert str(info.value) == f"{path} holds 5 clients but the datamodule has num_clients=4"


def test_another_dataset_size(saved):
    _, path = saved
    other = Synthetic(num_classes=4, num_train=300, num_test=200, image_size=8)
    with pytest.raises(ValueError) as info:
        make_dm(dataset=other, partitioner=SavedPartition(str(path))).setup()
    assert str(info.value) == f"{path}: written for Synthetic with 400 training samples, but this source has 300"


def test_another_dataset_of_the_same_size(saved):
    _, path = saved
    other = Synthetic(num_classes=4, num_train=400, num_test=200, image_size=8, seed=1)
    with pytest.raises(ValueError) as info:
        make_dm(dataset=other, partitioner=SavedPartition(str(path))).setup()
    digest, mine = label_digest(SOURCE.load().train_y.numpy()), label_digest(other.load().train_y.numpy())
    assert str(info.value) == (
        f"{path}: written for Synthetic, whose labels differ from this source's (label_digest {digest} vs {mine}): "
        "another dataset or sample order"
    )


def test_truncated_partition_file(saved):
    _, path = saved
    path.write_text(path.read_text()[:200])
    with pytest.raises(DataFileError, match=r"partition\.json: not valid JSON \(truncated or corrupt\?\) at line"):
        make_dm(partitioner=SavedPartition(str(path))).setup()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(format="other"), 'not a lit_fed partition file (no "format": "lit_fed.partition")'),
        (lambda c: c.update(version=9), "unsupported partition file version 9 (known: 1)"),
        (lambda c: c.pop("seed"), 'missing field "seed"'),
        (lambda c: c.update(num_clients=6), 'num_clients is 6 but "clients" holds 5 entries'),
        (lambda c: c["clients"][2].pop("test"), 'client 2 must be an object with "train" and "test" index lists'),
        (
            lambda c: c["clients"][1]["train"].append(400),
            "client 1 train has index 400 outside [0, 400) (num_source_samples)",
        ),
        (lambda c: c["clients"][0]["test"].append(1.5), "client 0 test must be a list of integers"),
    ],
)
def test_malformed_partition_files(saved, edit, message):
    _, path = saved
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
    with pytest.raises(DataFileError) as info:
        read_partition(path)
    assert str(info.value) == f"{path}: {message}"


def test_missing_partition_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        make_dm(partitioner=SavedPartition(str(tmp_path / "absent.json"))).setup()
    assert str(info.value) == f"{tmp_path / 'absent.json'}: no such file"


# -- explicit index lists ----------------------------------------------------------------------------------


def test_client_indices_with_test_splits_are_used_as_given():
    train = [list(range(0, 50)), list(range(100, 180)), [7, 300, 399]]
    test = [[50, 51, 52], list(range(200, 210)), [8]]
    dm = make_dm(partitioner=ClientIndices(train=train, test=test), num_clients=3, batch_size=2)
    for client in range(3):
        np.testing.assert_array_equal(dm.client_indices(client)[0], sorted(train[client]))
        np.testing.assert_array_equal(dm.client_indices(client)[1], sorted(test[client]))
    labels = SOURCE.load().train_y
    got = torch.cat([y for _, y in dm.client_test_dataloader(2)])
    assert got.tolist() == [int(labels[8])]


def test_client_indices_without_test_splits_are_split_by_train_fraction():
    train = [list(range(0, 40)), list(range(40, 100))]
    dm = make_dm(partitioner=ClientIndices(train=train), num_clients=2, train_fraction=0.5)
    for client in range(2):
        train_idx, test_idx = dm.client_indices(client)
        assert train_idx.size == test_idx.size == len(train[client]) // 2
        np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), train[client])


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        ([[0, 1], []], None, "ClientIndices: client 1 has an empty train split"),
        (
            [[0, 1], [2, 400]],
            None,
            "ClientIndices: client 1 train index 400 is outside [0, 400) (the source has 400 training samples)",
        ),
        (
            [[0, 1], [2, -1]],
            None,
            "ClientIndices: client 1 train index -1 is outside [0, 400) (the source has 400 training samples)",
        ),
        (
            [[0, 1], [2, 3]],
            [[4], [3]],
            "ClientIndices: client 1 lists index 3 more than once (within or across its train and test splits)",
        ),
        ([[0, 1], [2, 3]], [[4], []], "ClientIndices: client 1 has an empty test split"),
        ([[0, 1], [2, 3.5]], None, "ClientIndices: client 1 train indices must be a 1-D list of integers"),
        ([[0, 1]], None, "ClientIndices holds 1 clients but the datamodule has num_clients=2"),
    ],
)
def test_invalid_client_indices(train, test, message):
    dm = make_dm(partitioner=ClientIndices(train=train, test=test), num_clients=2)
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str(info.value) == message


def test_client_indices_need_one_test_list_per_client():
    with pytest.raises(ValueError) as info:
        ClientIndices(train=[[0], [1]], test=[[2]])
    assert str(info.value) == ("ClientIndices: train lists 2 clients but test lists 1; give one test list per client")
