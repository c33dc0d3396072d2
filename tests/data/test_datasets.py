import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_fed.data import datasets as datasets_module
from lit_fed.data.datasets import (
    CIFAR10,
    DATA_ENV_VAR,
    IDX_FILE_STEMS,
    ArrayDataset,
    DatasetSource,
    Digits,
    FashionMNIST,
    Synthetic,
    channel_stats,
    find_idx_files,
)
from lit_fed.data.idx import read_idx, write_idx

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------
# IDX reader
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 255], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 5, dtype=np.float32),
    ],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / f"data-idx{suffix}", array)
    with open(path, "rb") as handle:
        assert (handle.read(2) == b"\x1f\x8b") == (suffix == ".gz")
    loaded = read_idx(path)
    assert loaded.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(loaded, array)


def test_idx_reader_detects_gzip_by_content_and_matches_the_spec(tmp_path):
    # Hand-written header: magic 0x00000801 (uint8, 1 dimension), size 3.
    raw = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "zipped").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), [1, 2, 3])
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped"), [1, 2, 3])


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (bytes([1, 0, 8, 1]) + (1).to_bytes(4, "big") + b"\x00", "magic"),
        (bytes([0, 0, 0x42, 1]) + (1).to_bytes(4, "big") + b"\x00", "type code"),
        (bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big"), "header"),
        (bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00\x01", "payload"),
    ],
)
def test_idx_reader_rejects_malformed_files(tmp_path, payload, match):
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        read_idx(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------------


def write_fake_mnist(directory: Path, num_train: int = 12, num_test: int = 6, gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = (
        rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        (np.arange(num_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        (np.arange(num_test) % 10).astype(np.uint8),
    )
    for stem, array in zip(IDX_FILE_STEMS, arrays, strict=True):
        write_idx(directory / f"{stem}{suffix}", array)


@pytest.fixture
def no_data_anywhere(monkeypatch, tmp_path):
    """No ``$LIT_FED_DATA`` and no system directory: only what a test passes explicitly is found."""
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(tmp_path / "no-system-dir"),))
    return tmp_path


@pytest.mark.parametrize("layout", [".", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files_from_root(no_data_anywhere, layout, gz):
    root = no_data_anywhere / f"root-{gz}"
    write_fake_mnist(root / layout, gz=gz)
    data = FashionMNIST(root=str(root), download=False).load()
    assert data.train_x.shape == (12, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 1, 28, 28)
    assert data.train_y.dtype == torch.int64
    assert data.num_classes == 10
    assert data.input_shape == (1, 28, 28)


@pytest.mark.parametrize("subdir", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_reads_from_env_directory(no_data_anywhere, monkeypatch, subdir):
    env = no_data_anywhere / "env"
    write_fake_mnist(env / subdir, num_train=20)
    monkeypatch.setenv(DATA_ENV_VAR, str(env))
    assert FashionMNIST(download=False).load().train_x.shape[0] == 20


def test_missing_fashion_mnist_lists_every_place_it_looked(no_data_anywhere, monkeypatch):
    env = no_data_anywhere / "empty-env"
    env.mkdir()
    monkeypatch.setenv(DATA_ENV_VAR, str(env))
    root = no_data_anywhere / "does-not-exist"
    source = FashionMNIST(root=str(root), download=False)
    with pytest.raises(FileNotFoundError) as info:
        source.load()
    message = str(info.value)
    for place in source.candidate_dirs():
        assert str(place) in message
    for place in (
        root,
        root / "FashionMNIST" / "raw",
        env / "fashion-mnist",
        no_data_anywhere / "no-system-dir",
    ):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert DATA_ENV_VAR in message
    assert "download=False" in message


def test_find_idx_files_needs_all_four(tmp_path):
    write_fake_mnist(tmp_path)
    assert find_idx_files(tmp_path) is not None
    (tmp_path / f"{IDX_FILE_STEMS[3]}.gz").unlink()
    assert find_idx_files(tmp_path) is None


@pytest.mark.skipif(not SYSTEM_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_system_package(monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    data = FashionMNIST(download=False).load()
    assert data.train_x.shape == (60000, 1, 28, 28)
    assert data.test_x.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10
    np.testing.assert_array_equal(torch.bincount(data.train_y).numpy(), np.full(10, 6000))
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3)
    assert data.std[0] == pytest.approx(0.3530, abs=1e-3)
    assert FashionMNIST(download=False).load() is data, "loaded once per process"


def test_missing_cifar_lists_roots(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    source = CIFAR10(root=str(tmp_path / "cifar"), download=False)
    with pytest.raises(FileNotFoundError) as info:
        source.load()
    message = str(info.value)
    assert "CIFAR-10 not found" in message
    assert str(tmp_path / "cifar") in message and str(tmp_path / "env") in message
    assert "download=False" in message


# ---------------------------------------------------------------------------------------------------------
# Synthetic and Digits
# ---------------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced():
    source = Synthetic(num_classes=5, num_train=100, num_test=50, image_size=6, channels=3, seed=1)
    data = source.load()
    assert isinstance(source, DatasetSource)
    assert data.train_x.shape == (100, 3, 6, 6) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (50, 3, 6, 6)
    np.testing.assert_array_equal(torch.bincount(data.train_y).numpy(), np.full(5, 20))
    fresh = datasets_module._synthetic.__wrapped__(5, 100, 50, 6, 3, 1, source.noise)
    assert torch.equal(fresh.train_x, data.train_x) and torch.equal(fresh.test_y, data.test_y)
    other = Synthetic(num_classes=5, num_train=100, num_test=50, image_size=6, channels=3, seed=2).load()
    assert not torch.equal(other.train_x, data.train_x)


def test_synthetic_is_learnable():
    data = Synthetic().load()
    torch.manual_seed(0)
    x = (data.train_x.float() / 255).flatten(1)
    x_test = (data.test_x.float() / 255).flatten(1)
    model = torch.nn.Linear(x.shape[1], data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):  # epochs
        for batch in torch.randperm(x.shape[0]).split(20):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), data.train_y[batch]).backward()
            optimizer.step()
    accuracy = (model(x_test).argmax(1) == data.test_y).float().mean().item()
    assert accuracy > 0.9, f"chance is 0.25, got {accuracy}"


def test_synthetic_validates():
    with pytest.raises(ValueError, match="num_classes"):
        Synthetic(num_classes=0)


def test_digits_split():
    data = Digits().load()
    assert data.train_x.shape[1:] == (1, 8, 8) and data.train_x.dtype == torch.uint8
    assert data.train_x.shape[0] + data.test_x.shape[0] == 1797
    assert data.test_x.shape[0] / 1797 == pytest.approx(0.2, abs=0.01)
    assert data.num_classes == 10
    assert set(data.test_y.tolist()) == set(range(10))
    assert int(data.train_x.max()) == 255
    again = datasets_module._digits.__wrapped__(0, 0.2)
    assert torch.equal(again.test_y, data.test_y)
    assert not torch.equal(Digits(seed=1).load().test_y, data.test_y)


# ---------------------------------------------------------------------------------------------------------
# ArrayDataset
# ---------------------------------------------------------------------------------------------------------


def test_channel_stats_matches_numpy():
    images = torch.randint(0, 256, (30, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk_size=7)
    values = images.numpy() / 255.0
    np.testing.assert_allclose(mean, values.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, values.std(axis=(0, 2, 3)), rtol=1e-6)


def test_array_dataset_validates_shapes():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    ArrayDataset(x, y, x, y, num_classes=2, mean=(0.5,), std=(0.5,), name="ok")
    with pytest.raises(ValueError, match="N×C×H×W"):
        ArrayDataset(x[:, 0], y, x, y, num_classes=2, mean=(0.5,), std=(0.5,), name="bad")
    with pytest.raises(ValueError, match="int64"):
        ArrayDataset(x, y[:3], x, y, num_classes=2, mean=(0.5,), std=(0.5,), name="bad")
    with pytest.raises(ValueError, match="outside"):
        ArrayDataset(x, y + 2, x, y, num_classes=2, mean=(0.5,), std=(0.5,), name="bad")
    with pytest.raises(ValueError, match="one entry per channel"):
        ArrayDataset(x, y, x, y, num_classes=2, mean=(0.5, 0.5), std=(0.5,), name="bad")
