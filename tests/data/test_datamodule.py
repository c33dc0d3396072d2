from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from helpers import SMALL_SOURCE, batches, small_datamodule

from lit_fed.data import FederatedDataModule
from lit_fed.data.batching import random_crop_flip
from lit_fed.data.datasets import Digits, FashionMNIST, Synthetic
from lit_fed.data.partition import IID, Dirichlet, Pathological, long_tail_class_sizes

SOURCE = SMALL_SOURCE


def make_dm(**overrides) -> FederatedDataModule:
    return small_datamodule(**{"seed": 0, **overrides})


@pytest.fixture(scope="module")
def dm() -> FederatedDataModule:
    module = make_dm()
    module.setup("fit")
    return module


def test_shape_of_the_federation(dm):
    assert dm.num_classes == 4
    assert dm.input_shape == (1, 8, 8)
    assert dm.num_clients == 5
    histogram = dm.partition_histogram()
    assert histogram.shape == (5, 4)
    assert histogram.sum() + sum(dm.client_num_test_samples(k) for k in range(5)) == 400


def test_client_train_batches(dm):
    for client in range(dm.num_clients):
        loader = dm.client_train_dataloader(client, round=0)
        seen = batches(loader)
        assert len(loader) == len(seen) == -(-dm.client_num_train_samples(client) // 8)
        for x, y in seen[:-1]:
            assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32
            assert y.shape == (8,) and y.dtype == torch.int64
        labels = torch.cat([y for _, y in seen])
        assert labels.numel() == dm.client_num_train_samples(client)
        assert torch.equal(torch.bincount(labels, minlength=4), dm.client_label_counts(client))


def test_label_counts_sum_to_train_samples(dm):
    for client in range(dm.num_clients):
        counts = dm.client_label_counts(client)
        assert counts.shape == (4,) and counts.dtype == torch.int64
        assert int(counts.sum()) == dm.client_num_train_samples(client)
        np.testing.assert_array_equal(counts.numpy(), dm.partition_histogram()[client])


def test_local_splits_are_75_25_and_follow_the_client(dm):
    all_train, all_test = [], []
    for client in range(dm.num_clients):
        train_idx, test_idx = dm.client_indices(client)
        n_train, n_test = dm.client_num_train_samples(client), dm.client_num_test_samples(client)
        assert (train_idx.size, test_idx.size) == (n_train, n_test)
        assert n_train / (n_train + n_test) == pytest.approx(0.75, abs=0.03)
        test_labels = torch.cat([y for _, y in dm.client_test_dataloader(client)])
        assert test_labels.numel() == n_test
        assert set(test_labels.tolist()) <= set(torch.nonzero(dm.client_label_counts(client)).flatten().tolist())
        all_train.append(train_idx)
        all_test.append(test_idx)
    merged = np.concatenate(all_train + all_test)
    np.testing.assert_array_equal(np.sort(merged), np.arange(400))


def test_batch_order_is_a_function_of_seed_round_and_client(dm):
    first = batches(dm.client_train_dataloader(2, round=3))
    again = batches(make_dm().client_train_dataloader(2, round=3))
    assert len(first) == len(again)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_round = batches(dm.client_train_dataloader(2, round=4))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other_round, strict=True))


def test_different_seed_gives_a_different_partition(dm):
    other = make_dm(seed=1)
    assert not np.array_equal(other.partition_histogram(), dm.partition_histogram())
    same = make_dm(seed=0)
    np.testing.assert_array_equal(same.partition_histogram(), dm.partition_histogram())


def test_global_test_loader_is_the_source_test_set_in_order(dm):
    seen = batches(dm.global_test_dataloader())
    assert [x.shape[0] for x, _ in seen] == [32] * 6 + [8]
    labels = torch.cat([y for _, y in seen])
    assert torch.equal(labels, SOURCE.load().test_y)
    assert batches(dm.test_dataloader())[0][1].equal(seen[0][1])
    assert batches(dm.val_dataloader())[-1][1].equal(seen[-1][1])


def test_images_are_normalized(dm):
    x = torch.cat([x for x, _ in dm.train_dataloader()])
    assert x.shape[0] == dm.partition_histogram().sum()
    assert x.mean().item() == pytest.approx(0.0, abs=0.1)
    assert x.std().item() == pytest.approx(1.0, abs=0.1)


def test_setup_is_idempotent(dm):
    built = dm.built
    dm.setup("fit")
    dm.setup("test")
    assert dm.built is built


def test_properties_set_up_lazily():
    module = make_dm()
    assert module.num_classes == 4


def test_summary_and_plot(dm, tmp_path):
    summary = dm.partition_summary()
    assert summary["num_clients"] == 5
    assert summary["train_samples"] + summary["test_samples"] == 400
    assert summary["min_train_samples"] <= summary["mean_train_samples"] <= summary["max_train_samples"]
    assert summary["mean_train_samples"] == pytest.approx(summary["train_samples"] / 5)
    assert summary["min_train_samples"] == dm.partition_histogram().sum(axis=1).min()  # as partition.csv
    assert 1 <= summary["classes_per_client_mean"] <= 4
    path = dm.plot_partition(tmp_path / "plots" / "partition.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pathological_datamodule_has_k_classes_per_client():
    module = make_dm(partitioner=Pathological(classes_per_client=2), num_clients=6)
    assert np.all((module.partition_histogram() > 0).sum(axis=1) == 2)


def test_long_tail_pool():
    module = make_dm(partitioner=IID(), imbalance_ratio=10.0)
    counts = module.partition_histogram().sum(axis=0)
    counts += sum(
        torch.bincount(torch.cat([y for _, y in module.client_test_dataloader(k)]), minlength=4).numpy()
        for k in range(5)
    )
    np.testing.assert_array_equal(counts, long_tail_class_sizes(100, 4, 10.0))
    assert module.partition_summary()["global_test_samples"] == 200, "the global test set stays balanced"


def test_augmentation_is_deterministic_and_changes_images():
    rgb = Synthetic(num_classes=3, num_train=120, num_test=30, image_size=8, channels=3, seed=0)
    plain = make_dm(dataset=rgb, partitioner=IID(), num_clients=2)
    augmented = make_dm(dataset=rgb, partitioner=IID(), num_clients=2, augment=True)
    again = make_dm(dataset=rgb, partitioner=IID(), num_clients=2, augment=True)
    first = batches(augmented.client_train_dataloader(1, round=2))
    second = batches(again.client_train_dataloader(1, round=2))
    reference = batches(plain.client_train_dataloader(1, round=2))
    for (xa, ya), (xb, yb), (xp, yp) in zip(first, second, reference, strict=True):
        assert xa.shape == xp.shape
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya, yp), "augmentation does not change the batch order"
    assert not all(torch.equal(xa, xp) for (xa, _), (xp, _) in zip(first, reference, strict=True))
    test_plain = batches(plain.client_test_dataloader(1))
    test_augmented = batches(augmented.client_test_dataloader(1))
    assert torch.equal(test_plain[0][0], test_augmented[0][0]), "evaluation is never augmented"


def test_random_crop_flip_geometry():
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    for original, result in zip(images, out, strict=True):
        assert torch.equal(result, original) or torch.equal(result, original.flip(-1))
    padded = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2, fill=torch.tensor([-7.0]))
    assert padded.shape == images.shape
    assert set(padded.unique().tolist()) <= set(images.unique().tolist()) | {-7.0}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_clients": 0}, "num_clients=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"eval_batch_size": -1}, "eval_batch_size=-1"),
        ({"train_fraction": 1.0}, "train_fraction=1.0"),
        ({"train_fraction": 0}, "train_fraction=0"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio=0.5"),
    ],
)
def test_invalid_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_dm(**overrides)


def test_more_clients_than_samples_propagates_the_partitioner_error():
    module = make_dm(dataset=Synthetic(num_train=20), partitioner=IID(), num_clients=50)
    with pytest.raises(ValueError, match="num_clients=50"):
        module.setup()


def test_client_id_out_of_range(dm):
    with pytest.raises(IndexError, match="client_id=5"):
        dm.client_train_dataloader(5)


def test_defaults_and_yaml_construction():
    from jsonargparse import ArgumentParser

    default = FederatedDataModule()
    assert isinstance(default.dataset, FashionMNIST)
    assert default.partitioner == Dirichlet(alpha=0.1)
    parser = ArgumentParser()
    parser.add_class_arguments(FederatedDataModule, "data")
    config = {
        "data": {
            "dataset": {"class_path": "lit_fed.data.Digits", "init_args": {"seed": 2}},
            "partitioner": {
                "class_path": "lit_fed.data.Pathological",
                "init_args": {"classes_per_client": 3},
            },
            "num_clients": 7,
            "imbalance_ratio": 2.0,
        }
    }
    module = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).data
    assert module.dataset == Digits(seed=2)
    assert module.partitioner == Pathological(classes_per_client=3)
    assert (module.num_clients, module.imbalance_ratio) == (7, 2.0)
    bad = {"data": {"partitioner": {"class_path": "lit_fed.data.Dirichlet", "init_args": {"alpha": -1}}}}
    with pytest.raises((ValueError, SystemExit)):
        parser.instantiate(parser.parse_string(yaml.safe_dump(bad)))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="no Fashion-MNIST")
def test_default_fashion_mnist_federation():
    module = FederatedDataModule(num_clients=20)
    summary = module.partition_summary()
    assert summary["train_samples"] + summary["test_samples"] == 60000
    assert summary["global_test_samples"] == 10000
    assert summary["min_train_samples"] >= 7  # Dirichlet's min_size 10, 75% of it for training
    x, y = next(iter(module.client_train_dataloader(0)))
    assert x.shape == (10, 1, 28, 28) and y.shape == (10,)


class TinyClassifier(L.LightningModule):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_plain_lightning_fit_and_test():
    module = make_dm(partitioner=IID(), batch_size=16)
    model = TinyClassifier(64, 4)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=module)
    assert trainer.state.finished
    assert trainer.global_step == 2 * -(-module.partition_summary()["train_samples"] // 16)
    (result,) = trainer.test(model, datamodule=module, verbose=False)
    assert result["test_acc"] > 0.8
