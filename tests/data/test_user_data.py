"""Your own data per client: a factory of loaders or datamodules, or your datamodule split by index lists."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lit_fed.data import ClientLoaders, PartitionedDataModule
from lit_fed.data.protocol import FederatedData


def pairs(n: int, offset: int = 0) -> TensorDataset:
    x = torch.arange(offset, offset + n, dtype=torch.float32).view(-1, 1)
    return TensorDataset(x, x.squeeze(1).long())


def as_dicts(samples):
    """A user collate function: dict batches."""
    return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}


class CountingDataModule(L.LightningDataModule):
    """A client's datamodule that counts its calls."""

    def __init__(self, client_id: int) -> None:
        super().__init__()
        self.client_id = client_id
        self.calls = {"prepare_data": 0, "setup": 0, "train_dataloader": 0}

    def prepare_data(self) -> None:
        self.calls["prepare_data"] += 1

    def setup(self, stage: str) -> None:
        self.calls["setup"] += 1
        self.train, self.val = pairs(10 + 5 * self.client_id), pairs(4, offset=100)

    def train_dataloader(self) -> DataLoader:
        self.calls["train_dataloader"] += 1
        return DataLoader(self.train, batch_size=4, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=4)


def test_a_datamodule_factory_is_set_up_once_per_client_and_asked_for_loaders_each_round() -> None:
    data = ClientLoaders(CountingDataModule, num_clients=3)
    assert isinstance(data, FederatedData)
    assert [data.client_num_train_samples(c) for c in range(3)] == [10, 15, 20]  # len(dataset), drop_last aside
    for rnd in range(3):
        batches = list(data.client_train_dataloader(1, rnd))
        assert [len(b[0]) for b in batches] == [4, 4, 4]  # its own drop_last: the 15th sample is dropped
    module = data._built[1]
    assert module.calls == {"prepare_data": 1, "setup": 1, "train_dataloader": 4}
    assert [b[0].view(-1).tolist() for b in data.client_test_dataloader(1)] == [[100.0, 101.0, 102.0, 103.0]]
    assert data.global_test_dataloader() is None
    # Shipped to a Flower node: the factory travels, what it built does not
    shipped = pickle.loads(pickle.dumps(data))
    assert shipped._built == {} and shipped.client_num_train_samples(2) == 20


def loader_pair(client_id: int):
    return DataLoader(pairs(6 + client_id), batch_size=4, collate_fn=as_dicts), None


def test_a_loader_factory_is_used_as_given_and_a_client_without_val_loader_has_none() -> None:
    data = ClientLoaders(loader_pair, num_clients=2)
    batch = next(iter(data.client_train_dataloader(1)))
    assert set(batch) == {"x", "y"} and batch["x"].shape == (4, 1)  # the user's collate_fn: dict batches
    assert data.client_test_dataloader(0) is None
    assert data.client_num_train_samples(1) == 7
    with pytest.raises(IndexError, match="client 2"):
        data.client_train_dataloader(2)
    with pytest.raises(ValueError, match="num_clients"):
        ClientLoaders(loader_pair, num_clients=0)


class UserDataModule(L.LightningDataModule):
    def __init__(self, sampler: type | None = None) -> None:
        super().__init__()
        self.sampler = sampler

    def setup(self, stage: str) -> None:
        self.train, self.val = pairs(20), pairs(8, offset=50)

    def train_dataloader(self) -> DataLoader:
        if self.sampler is not None:
            return DataLoader(self.train, batch_size=3, sampler=self.sampler(self.train))
        return DataLoader(self.train, batch_size=3, shuffle=True, drop_last=True, collate_fn=as_dicts)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=5)


def test_a_partitioned_datamodule_keeps_the_users_loader_settings_on_each_clients_subset() -> None:
    data = PartitionedDataModule(
        UserDataModule(), train_partition=[range(0, 7), range(7, 20)], val_partition=[[0, 1], []]
    )
    data.setup()
    assert data.num_clients == 2 and data.client_num_train_samples(1) == 13
    torch.manual_seed(0)
    batches = list(data.client_train_dataloader(0))
    assert all(set(b) == {"x", "y"} and len(b["x"]) == 3 for b in batches) and len(batches) == 2  # drop_last
    seen = torch.cat([b["x"] for b in batches]).view(-1).tolist()
    assert set(seen) <= set(range(7))
    torch.manual_seed(1)
    again = torch.cat([b["x"] for b in data.client_train_dataloader(0)]).view(-1).tolist()
    assert seen != again  # shuffled from the (per-fit seeded) global generator
    assert [b[0].view(-1).tolist() for b in data.client_test_dataloader(0)] == [[50.0, 51.0]]
    assert data.client_test_dataloader(1) is None  # no validation samples
    assert len(data.global_test_dataloader().dataset) == 8  # the whole validation set
    assert pickle.loads(pickle.dumps(data))._train is None  # nodes rebuild the loaders


class EveryOther(Sampler[int]):
    def __init__(self, dataset) -> None:
        self.n = len(dataset)

    def __iter__(self):
        return iter(range(0, self.n, 2))

    def __len__(self) -> int:
        return (self.n + 1) // 2


def test_a_partitioned_datamodule_refuses_what_it_cannot_partition() -> None:
    with pytest.raises(ValueError, match="EveryOther.*ClientLoaders"):
        PartitionedDataModule(UserDataModule(EveryOther), train_partition=[range(5)]).setup()
    with pytest.raises(ValueError, match="client 1 holds index 20"):
        PartitionedDataModule(UserDataModule(), train_partition=[range(5), [3, 20]]).setup()
    with pytest.raises(ValueError, match="client 1 has no samples"):
        PartitionedDataModule(UserDataModule(), train_partition=[range(5), []]).setup()
    with pytest.raises(ValueError, match="lists 2 clients but val_partition lists 1"):
        PartitionedDataModule(UserDataModule(), train_partition=[[0], [1]], val_partition=[[0]])
