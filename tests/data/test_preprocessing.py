"""Normalization choices, drop_last and per-client train fractions of the federated datamodules."""

import numpy as np
import pytest
import torch
from helpers import SMALL_SOURCE, small_datamodule

from lit_fed.data import IID, ClientArrays, ClientDataModule, FederatedDataModule
from lit_fed.data.datasets import ArrayDataset, DatasetSource

SOURCE = SMALL_SOURCE


def make_dm(**overrides) -> FederatedDataModule:
    return small_datamodule(**{"seed": 0, **overrides})


def raw_images(dm: FederatedDataModule) -> torch.Tensor:
    """The clients' samples in the datamodule's layout, as [0, 1] floats."""
    built = dm.built
    order = np.concatenate(built.train_indices + built.test_indices)
    return SOURCE.load().train_x[torch.from_numpy(order)].float() / 255.0


def test_dataset_statistics_are_the_default():
    default, explicit = make_dm(), make_dm(normalization="dataset")
    assert torch.equal(default.built.images, explicit.built.images)
    data = SOURCE.load()
    assert default.built.mean == data.mean and default.built.std == data.std
    expected = (raw_images(default) - data.mean[0]) / data.std[0]
    torch.testing.assert_close(default.built.images, expected)


def test_fixed_mean_and_std():
    dm = make_dm(normalization="fixed", mean=[0.5], std=[0.25])
    torch.testing.assert_close(dm.built.images, (raw_images(dm) - 0.5) / 0.25)
    x, _ = next(iter(dm.global_test_dataloader()))
    torch.testing.assert_close(x, (SOURCE.load().test_x[:32].float() / 255.0 - 0.5) / 0.25)
    assert torch.equal(dm.built.fill, torch.tensor([-2.0]))


def test_no_normalization_scales_uint8_to_unit_range_only():
    dm = make_dm(normalization="none")
    torch.testing.assert_close(dm.built.images, raw_images(dm), rtol=0, atol=0)
    assert (dm.built.mean, dm.built.std) == ((0.0,), (1.0,))


def test_no_normalization_leaves_float_data_unchanged():
    x = torch.linspace(-1, 1, 2 * 12 * 16).reshape(24, 1, 4, 4)
    y = np.arange(24) % 3
    source = ClientArrays(train=[(x[:12], y[:12]), (x[12:], y[12:])])
    dm = ClientDataModule(source, normalization="none", batch_size=4)
    order = torch.from_numpy(np.concatenate(dm.built.train_indices + dm.built.test_indices))
    assert torch.equal(dm.built.images, x[order])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"normalization": "zscore"},
            "normalization must be one of ['dataset', 'fixed', 'none'], got normalization='zscore'",
        ),
        ({"normalization": "fixed"}, "normalization='fixed' needs both mean and std, got mean=None, std=None"),
        (
            {"normalization": "fixed", "mean": [0.5]},
            "normalization='fixed' needs both mean and std, got mean=[0.5], std=None",
        ),
        (
            {"normalization": "fixed", "mean": [0.5, 0.5], "std": [0.5]},
            "mean and std need one entry per channel, got mean=[0.5, 0.5], std=[0.5]",
        ),
        (
            {"normalization": "fixed", "mean": [0.5], "std": [0.0]},
            "mean must be finite and std finite and > 0, got mean=[0.5], std=[0.0]",
        ),
        (
            {"mean": [0.5], "std": [0.5]},
            "mean and std are used only with normalization='fixed', got normalization='dataset' with mean=[0.5], "
            "std=[0.5]",
        ),
    ],
)
def test_invalid_normalization_arguments(overrides, message):
    with pytest.raises(ValueError) as info:
        make_dm(**overrides)
    assert str(info.value) == message


def test_fixed_statistics_must_match_the_channels():
    dm = make_dm(normalization="fixed", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str(info.value) == "normalization='fixed': mean and std have 3 entries but the images have 1 channel(s)"


# -- drop_last ---------------------------------------------------------------------------------------------


def test_drop_last_drops_each_clients_incomplete_batch():
    keep, drop = make_dm(), make_dm(drop_last=True)
    for client in range(5):
        n = drop.client_num_train_samples(client)
        kept = [y for _, y in keep.client_train_dataloader(client, round=2)]
        dropped = [y for _, y in drop.client_train_dataloader(client, round=2)]
        assert len(dropped) == n // 8
        assert all(y.numel() == 8 for y in dropped)
        for a, b in zip(kept, dropped, strict=False):  # same order: only the tail is dropped
            assert torch.equal(a, b)
    pooled = [y for _, y in drop.train_dataloader()]
    assert len(pooled) == drop.partition_summary()["train_samples"] // 8
    assert sum(y.numel() for _, y in drop.client_test_dataloader(0)) == drop.client_num_test_samples(0)


def test_drop_last_with_a_client_smaller_than_a_batch_fails_at_setup():
    dm = make_dm(partitioner=IID(), num_clients=5, batch_size=64, drop_last=True)
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str(info.value) == (
        "drop_last=True with batch_size=64: client 0 has only 60 training samples, so it would train on no batch; "
        "lower batch_size or set drop_last=False"
    )


# -- train fractions ---------------------------------------------------------------------------------------


def test_default_train_fraction_is_one_float():
    assert make_dm().train_fraction == 0.75


def test_per_client_train_fractions():
    fractions = [0.5, 0.6, 0.7, 0.8, 0.9]
    dm = make_dm(partitioner=IID(), train_fraction=fractions)
    assert dm.train_fraction == tuple(fractions)
    for client, fraction in enumerate(fractions):
        n_train, n_test = dm.client_num_train_samples(client), dm.client_num_test_samples(client)
        assert n_train + n_test == 80
        assert n_train == round(80 * fraction)
    same = make_dm(partitioner=IID(), train_fraction=0.7)
    np.testing.assert_array_equal(dm.client_indices(2)[0], same.client_indices(2)[0])


@pytest.mark.parametrize(
    ("train_fraction", "message"),
    [
        ([0.5, 0.5], "train_fraction has 2 entries for 5 clients; give one per client"),
        ([0.5, 0.5, 1.0, 0.5, 0.5], "train_fraction[2] must be in (0, 1), got 1.0"),
        ("0.5", "train_fraction must be a number or one number per client, got '0.5'"),
    ],
)
def test_invalid_per_client_train_fractions(train_fraction, message):
    with pytest.raises(ValueError) as info:
        make_dm(train_fraction=train_fraction)
    assert str(info.value) == message


def test_client_datamodule_checks_fractions_against_the_loaded_clients():
    y = np.arange(20) % 2
    source = ClientArrays(train=[(np.zeros((10, 2, 2), np.uint8), y[:10]), (np.zeros((10, 2, 2), np.uint8), y[10:])])
    dm = ClientDataModule(source, train_fraction=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str(info.value) == "train_fraction has 3 entries for 2 clients; give one per client"


# -- global test set ---------------------------------------------------------------------------------------


class NoTestSet(DatasetSource):
    def load(self) -> ArrayDataset:
        data = SOURCE.load()
        return ArrayDataset(
            data.train_x, data.train_y, data.train_x[:0], data.train_y[:0], 4, data.mean, data.std, "no test set"
        )


def test_global_test_name_with_a_test_set():
    assert make_dm().global_test_name == "global test set"


def test_without_a_test_set_the_global_model_sees_the_pooled_client_test_splits():
    dm = make_dm(dataset=NoTestSet())
    assert dm.global_test_name == "pooled client test splits"
    pooled = list(dm.global_test_dataloader())
    x = torch.cat([x for x, _ in pooled])
    y = torch.cat([y for _, y in pooled])
    clients_x = torch.cat([x for k in range(5) for x, _ in dm.client_test_dataloader(k)])
    clients_y = torch.cat([y for k in range(5) for _, y in dm.client_test_dataloader(k)])
    assert torch.equal(x, clients_x) and torch.equal(y, clients_y)
    assert [b.shape[0] for _, b in pooled][:-1] == [32] * (len(pooled) - 1)
    assert dm.partition_summary()["global_test_samples"] == dm.partition_summary()["test_samples"]
