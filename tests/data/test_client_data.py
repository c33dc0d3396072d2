"""Explicit per-client data (ClientArrays) behind the client API of ClientDataModule, and its validation."""

import numpy as np
import pytest
import torch

from lit_fed.data import ClientArrays, ClientDataModule, FederatedDataModule, read_partition
from lit_fed.data.clients import build_client_dataset


def client_arrays(sizes=(12, 9, 15), test_sizes=(4, 3, 5), channels=1, seed=0):
    rng = np.random.default_rng(seed)
    train = [(rng.integers(0, 256, (n, channels, 4, 4), dtype=np.uint8), rng.integers(0, 3, n)) for n in sizes]
    test = [(rng.integers(0, 256, (n, channels, 4, 4), dtype=np.uint8), rng.integers(0, 3, n)) for n in test_sizes]
    return train, test


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def normalized(x: np.ndarray, dm: FederatedDataModule) -> torch.Tensor:
    mean, std = dm.built.mean[0], dm.built.std[0]
    return (torch.from_numpy(x).float() / 255.0 - mean) / std


def test_each_client_gets_exactly_its_arrays():
    train, test = client_arrays()
    dm = ClientDataModule(ClientArrays(train=train, test=test, num_classes=3), batch_size=4, eval_batch_size=100)
    assert (dm.num_clients, dm.num_classes, dm.input_shape) == (3, 3, (1, 4, 4))
    assert dm.global_test_name == "pooled client test splits"
    for client, ((x, y), (tx, ty)) in enumerate(zip(train, test, strict=True)):
        assert dm.client_num_train_samples(client) == len(y)
        assert dm.client_num_test_samples(client) == len(ty)
        np.testing.assert_array_equal(dm.client_label_counts(client).numpy(), np.bincount(y, minlength=3))
        ((bx, by),) = batches(dm.client_test_dataloader(client))  # in order
        assert torch.equal(by, torch.from_numpy(ty))
        torch.testing.assert_close(bx, normalized(tx, dm))
        torch.testing.assert_close(dm.built.images[dm._train_slice(client)], normalized(x, dm))
        seen = batches(dm.client_train_dataloader(client, round=1))
        got = torch.cat([b for _, b in seen])
        assert sorted(got.tolist()) == sorted(y.tolist())
    pooled_y = torch.cat([y for _, y in dm.global_test_dataloader()])
    assert torch.equal(pooled_y, torch.from_numpy(np.concatenate([ty for _, ty in test])))


def test_dataset_statistics_are_those_of_all_client_samples():
    train, test = client_arrays()
    dm = ClientDataModule(ClientArrays(train=train, test=test))
    pool = np.concatenate([x for x, _ in train] + [x for x, _ in test]).astype(np.float64) / 255.0
    assert dm.built.mean[0] == pytest.approx(pool.mean(), abs=1e-12)
    assert dm.built.std[0] == pytest.approx(pool.std(), abs=1e-12)


def test_batch_order_is_a_function_of_seed_round_and_client():
    train, test = client_arrays()
    first = ClientDataModule(ClientArrays(train=train, test=test), batch_size=4, seed=5)
    again = ClientDataModule(ClientArrays(train=train, test=test), batch_size=4, seed=5)
    for client in range(3):
        a, b = batches(first.client_train_dataloader(client, 2)), batches(again.client_train_dataloader(client, 2))
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_a_global_test_set_is_served_as_given():
    train, test = client_arrays()
    gx, gy = client_arrays(sizes=(7,), seed=9)[0][0]
    dm = ClientDataModule(ClientArrays(train=train, test=test, global_test=(gx, gy)), eval_batch_size=3)
    assert dm.global_test_name == "global test set"
    seen = batches(dm.global_test_dataloader())
    assert [y.numel() for _, y in seen] == [3, 3, 1]
    assert torch.equal(torch.cat([y for _, y in seen]), torch.from_numpy(gy))
    assert dm.partition_summary()["global_test_samples"] == 7


def test_without_test_splits_clients_are_split_by_train_fraction():
    train, _ = client_arrays(sizes=(20, 40))
    dm = ClientDataModule(ClientArrays(train=train), train_fraction=[0.5, 0.75], seed=1)
    assert [dm.client_num_train_samples(k) for k in range(2)] == [10, 30]
    assert [dm.client_num_test_samples(k) for k in range(2)] == [10, 10]
    train_idx, test_idx = dm.client_indices(1)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(20, 60))


def test_flat_samples_with_sample_shape_and_grayscale_without_channel():
    x = np.arange(6 * 16, dtype=np.float32).reshape(6, 16) / 96.0
    y = np.array([0, 1, 0, 1, 0, 1])
    flat = ClientDataModule(ClientArrays(train=[(x[:3], y[:3]), (x[3:], y[3:])], sample_shape=[1, 4, 4]))
    assert flat.input_shape == (1, 4, 4)
    gray = ClientDataModule(ClientArrays(train=[(x[:3].reshape(3, 4, 4), y[:3]), (x[3:].reshape(3, 4, 4), y[3:])]))
    assert gray.input_shape == (1, 4, 4)
    assert torch.equal(flat.built.images, gray.built.images)


def test_tensors_are_accepted():
    train, test = client_arrays()
    as_tensors = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in train]
    dm = ClientDataModule(ClientArrays(train=as_tensors, test=test))
    reference = ClientDataModule(ClientArrays(train=train, test=test))
    assert torch.equal(dm.built.images, reference.built.images)


def test_save_partition_of_client_data(tmp_path):
    train, test = client_arrays()
    dm = ClientDataModule(ClientArrays(train=train, test=test, names=["ann", "bo", "cy"], name="mine"))
    record = read_partition(dm.save_partition(tmp_path))
    assert record.source == "mine"
    assert record.client_names == ["ann", "bo", "cy"]
    assert record.index_space.startswith("client pool")
    assert record.num_source_samples == 12 + 4 + 9 + 3 + 15 + 5
    np.testing.assert_array_equal(record.train[1], np.arange(16, 25))
    np.testing.assert_array_equal(record.test[1], np.arange(25, 28))


def test_saved_partition_of_split_client_data_is_the_split_used(tmp_path):
    train, _ = client_arrays(sizes=(20, 30))
    dm = ClientDataModule(ClientArrays(train=train), seed=2)
    path = dm.save_partition(tmp_path)
    record = read_partition(path)
    for client in range(2):
        np.testing.assert_array_equal(record.train[client], dm.client_indices(client)[0])
        np.testing.assert_array_equal(record.test[client], dm.client_indices(client)[1])


@pytest.mark.parametrize(
    ("train", "test", "kwargs", "message"),
    [
        (
            [(np.zeros((3, 1, 4, 4), np.uint8), [0, 1])],
            None,
            {},
            "client 0 train: x has 3 samples but y has 2 labels",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0, 1]), (np.zeros((2, 1, 5, 5), np.uint8), [0, 1])],
            None,
            {},
            "client 1 train: samples have shape (1, 5, 5) but client 0 train's have (1, 4, 4); all clients must "
            "share one sample shape",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0, 1]), (np.zeros((2, 1, 4, 4), np.float32), [0, 1])],
            None,
            {},
            "client 1 train: x is float32 but client 0 train's is uint8; all clients must share one dtype (uint8 "
            "pixels or floats)",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0, 1]), (np.zeros((2, 1, 4, 4), np.uint8), [0, 5])],
            None,
            {"num_classes": 3},
            "client 1 train: label 5 is out of range for num_classes=3 (labels are 0..2)",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0, -1])],
            None,
            {},
            "client 0 train: label -1 is negative; labels are class ids 0..C-1",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0.0, 0.5])],
            None,
            {},
            "client 0 train: y must be integer class ids, got non-integral values",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0, 1]), (np.zeros((0, 1, 4, 4), np.uint8), [])],
            None,
            {},
            "client 1 train: client 1 has no training samples",
        ),
        (
            [(np.zeros((2, 1, 4, 4), np.uint8), [0, 1])],
            [(np.zeros((0, 1, 4, 4), np.uint8), [])],
            {},
            "client 0 test: client 0 has an empty test split",
        ),
        (
            [(np.zeros((2, 16), np.uint8), [0, 1])],
            None,
            {},
            "client 0 train: x has shape (2, 16); expected (N, C, H, W) or (N, H, W) images, or pass sample_shape "
            "to reshape flat samples (e.g. [1, 28, 28])",
        ),
        (
            [(np.zeros((2, 16), np.uint8), [0, 1])],
            None,
            {"sample_shape": [1, 5, 5]},
            "client 0 train: x has shape (2, 16); samples of 16 values cannot be reshaped to sample_shape [1, 5, 5]",
        ),
        (
            [(np.full((2, 1, 2, 2), 300), [0, 1])],
            None,
            {},
            "client 0 train: integer pixels must lie in [0, 255], got [300, 300]",
        ),
        (
            [(np.full((2, 1, 2, 2), np.nan, np.float32), [0, 1])],
            None,
            {},
            "client 0 train: x has non-finite values (NaN or inf)",
        ),
        (
            [(np.array([["a"], ["b"]]), [0, 1])],
            None,
            {},
            "client 0 train: x must hold numbers, got dtype <U1",
        ),
    ],
)
def test_invalid_client_data(train, test, kwargs, message):
    dm = ClientDataModule(ClientArrays(train=train, test=test, **kwargs))
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str(info.value) == message


def test_build_client_dataset_checks_counts():
    x, y = np.zeros((2, 1, 2, 2), np.uint8), np.array([0, 1])
    with pytest.raises(ValueError) as info:
        build_client_dataset("mine", [(x, y, "a"), (x, y, "b")], test=[(x, y, "t")])
    assert str(info.value) == "mine: 2 clients have training data but 1 test entries were given"
    with pytest.raises(ValueError) as info:
        build_client_dataset("mine", [])
    assert str(info.value) == "mine: no clients"


def test_client_datamodule_refuses_a_dataset_source():
    from lit_fed.data import Synthetic

    with pytest.raises(TypeError, match="clients must be a ClientSource"):
        ClientDataModule(Synthetic())


def test_client_datamodule_is_a_federated_datamodule_with_plain_lightning_loaders(tmp_path):
    train, test = client_arrays()
    dm = ClientDataModule(ClientArrays(train=train, test=test), batch_size=5)
    assert isinstance(dm, FederatedDataModule)
    pooled = torch.cat([y for _, y in dm.train_dataloader()])
    assert pooled.numel() == 36
    assert torch.equal(
        torch.cat([y for _, y in dm.val_dataloader()]), torch.cat([y for _, y in dm.global_test_dataloader()])
    )
    assert dm.client_names == ["0", "1", "2"]
    assert dm.plot_partition(tmp_path / "partition.png").read_bytes()[:4] == b"\x89PNG"
