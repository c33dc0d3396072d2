"""PFLlib-layout folders (train/<i>.npz, test/<i>.npz with x/y) as client data."""

import json

import numpy as np
import pytest
import torch

from lit_fed.data import ClientDataModule, DataFileError, PFLlibFolder, write_pfllib_folder
from lit_fed.data.pfllib import read_client_npz


def client_arrays(sizes=(12, 9, 15), seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = rng.integers(0, 256, (n, 1, 4, 4)).astype(dtype)
        out.append((x, rng.integers(0, 3, n)))
    return out


@pytest.fixture
def folder(tmp_path):
    train, test = client_arrays(), client_arrays(sizes=(4, 3, 5), seed=1)
    write_pfllib_folder(tmp_path / "fed", train, test, num_classes=3)
    return tmp_path / "fed", train, test


def test_writer_layout(folder):
    root, train, _ = folder
    assert sorted(p.name for p in (root / "train").iterdir()) == ["0.npz", "1.npz", "2.npz"]
    assert sorted(p.name for p in (root / "test").iterdir()) == ["0.npz", "1.npz", "2.npz"]
    assert json.loads((root / "config.json").read_text()) == {"num_clients": 3, "num_classes": 3}
    x, y = read_client_npz(root / "train" / "1.npz")
    np.testing.assert_array_equal(x, train[1][0])
    np.testing.assert_array_equal(y, train[1][1])


def test_each_client_is_its_files(folder):
    root, train, test = folder
    dm = ClientDataModule(PFLlibFolder(str(root)), batch_size=4, eval_batch_size=64)
    assert (dm.num_clients, dm.num_classes, dm.input_shape) == (3, 3, (1, 4, 4))
    assert dm.global_test_name == "pooled client test splits"
    for client in range(3):
        assert dm.client_num_train_samples(client) == len(train[client][1])
        ((_, y),) = list(dm.client_test_dataloader(client))
        assert torch.equal(y, torch.from_numpy(test[client][1]))
        np.testing.assert_array_equal(
            dm.client_label_counts(client).numpy(), np.bincount(train[client][1], minlength=3)
        )


def test_pfllib_pickled_encoding_needs_allow_pickle(tmp_path):
    train, test = client_arrays(dtype=np.float32), client_arrays(sizes=(4, 3, 5), seed=1, dtype=np.float32)
    for kind, parts in (("train", train), ("test", test)):
        (tmp_path / kind).mkdir()
        for client, (x, y) in enumerate(parts):
            with open(tmp_path / kind / f"{client}.npz", "wb") as handle:  # PFLlib's save_file encoding
                np.savez_compressed(handle, data={"x": x, "y": y})
    with pytest.raises(DataFileError) as info:
        ClientDataModule(PFLlibFolder(str(tmp_path))).setup()
    assert str(info.value) == (
        f"{tmp_path / 'train' / '0.npz'}: holds pickled Python objects; pass allow_pickle=True only if you trust "
        "the file"
    )
    dm = ClientDataModule(PFLlibFolder(str(tmp_path), allow_pickle=True), normalization="none")
    order = np.concatenate(dm.built.train_indices + dm.built.test_indices)
    pool = np.concatenate([part for pair in zip(train, test, strict=True) for part in (pair[0][0], pair[1][0])])
    np.testing.assert_array_equal(dm.built.images.numpy(), pool[order])


def test_without_test_folder_clients_are_split_by_train_fraction(tmp_path):
    write_pfllib_folder(tmp_path, client_arrays(sizes=(20, 40)))
    dm = ClientDataModule(PFLlibFolder(str(tmp_path)), train_fraction=0.5)
    assert [dm.client_num_test_samples(k) for k in range(2)] == [10, 20]


def test_global_test_file(folder, tmp_path):
    root, _, _ = folder
    gx, gy = client_arrays(sizes=(6,), seed=7)[0]
    np.savez(tmp_path / "global.npz", x=gx, y=gy)
    dm = ClientDataModule(PFLlibFolder(str(root), global_test=str(tmp_path / "global.npz")))
    assert dm.global_test_name == "global test set"
    assert torch.equal(torch.cat([y for _, y in dm.global_test_dataloader()]), torch.from_numpy(gy))


def test_loads_are_cached_until_a_file_changes(folder):
    root, train, _ = folder
    first = PFLlibFolder(str(root)).load()
    assert PFLlibFolder(str(root)).load() is first
    x, y = train[0]
    np.savez_compressed(root / "train" / "0.npz", x=x[:5], y=y[:5])
    again = PFLlibFolder(str(root)).load()
    assert again is not first and len(again.splits[0][0]) == 5


def test_save_partition_names_the_folder(folder, tmp_path):
    root, _, _ = folder
    dm = ClientDataModule(PFLlibFolder(str(root)))
    content = json.loads(dm.save_partition(tmp_path / "run").read_text())
    assert content["source"] == f"PFLlib folder {root}"
    assert content["num_source_samples"] == 12 + 4 + 9 + 3 + 15 + 5
    assert content["clients"][2] == {"train": list(range(28, 43)), "test": list(range(43, 48))}


# -- errors ------------------------------------------------------------------------------------------------


def test_missing_train_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        PFLlibFolder(str(tmp_path)).load()
    assert str(info.value) == (
        f"{tmp_path / 'train'}: no such directory (a PFLlib folder holds train/<i>.npz and test/<i>.npz)"
    )


def test_gap_in_client_files(folder):
    root, _, _ = folder
    (root / "train" / "1.npz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == f"{root / 'train' / '1.npz'}: missing; client files must be numbered 0..2 without gaps"


def test_missing_test_file(folder):
    root, _, _ = folder
    (root / "test" / "2.npz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == (
        f"{root / 'test' / '2.npz'}: missing; {root / 'test'} must hold one file per train/<i>.npz (or remove test/ "
        "to split every client by train_fraction)"
    )


def test_extra_test_file(folder):
    root, _, _ = folder
    np.savez(root / "test" / "3.npz", x=np.zeros((1, 1, 4, 4), np.uint8), y=[0])
    with pytest.raises(DataFileError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == f"{root / 'test' / '3.npz'}: has no matching train/3.npz"


def test_file_that_is_not_a_client(folder):
    root, _, _ = folder
    np.savez(root / "train" / "extra.npz", x=[0])
    with pytest.raises(DataFileError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == (
        f"{root / 'train' / 'extra.npz'}: not a client file; {root / 'train'} must hold only <client id>.npz files"
    )


def test_truncated_client_file(folder):
    root, _, _ = folder
    path = root / "train" / "2.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFileError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value).startswith(f"{path}: not a readable .npz archive (truncated or corrupt): ")


def test_file_without_x_and_y(folder):
    root, _, _ = folder
    np.savez(root / "train" / "0.npz", images=np.zeros((2, 1, 4, 4)), labels=[0, 1])
    with pytest.raises(DataFileError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == (
        f"{root / 'train' / '0.npz'}: expected arrays 'x' and 'y' (or PFLlib's pickled dict 'data' with keys 'x' "
        "and 'y'), found ['images', 'labels']"
    )


def test_label_out_of_range_names_the_file(folder):
    root, train, _ = folder
    x, y = train[1]
    np.savez(root / "train" / "1.npz", x=x, y=np.where(np.arange(len(y)) == 0, 7, y))
    with pytest.raises(ValueError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == f"{root / 'train' / '1.npz'}: label 7 is out of range for num_classes=3 (labels are 0..2)"


def test_shape_mismatch_names_both_files(folder):
    root, _, _ = folder
    np.savez(root / "test" / "1.npz", x=np.zeros((3, 1, 5, 5), np.uint8), y=[0, 1, 2])
    with pytest.raises(ValueError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == (
        f"{root / 'test' / '1.npz'}: samples have shape (1, 5, 5) but {root / 'train' / '0.npz'}'s have (1, 4, 4); "
        "all clients must share one sample shape"
    )


def test_x_and_y_lengths_differ(folder):
    root, _, _ = folder
    np.savez(root / "train" / "0.npz", x=np.zeros((3, 1, 4, 4), np.uint8), y=[0, 1])
    with pytest.raises(ValueError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == f"{root / 'train' / '0.npz'}: x has 3 samples but y has 2 labels"


def test_empty_client(folder):
    root, _, _ = folder
    np.savez(root / "train" / "2.npz", x=np.zeros((0, 1, 4, 4), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(ValueError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == f"{root / 'train' / '2.npz'}: client 2 has no training samples"


def test_config_disagrees_with_files(folder):
    root, _, _ = folder
    (root / "config.json").write_text(json.dumps({"num_clients": 4, "num_classes": 3}))
    with pytest.raises(ValueError) as info:
        PFLlibFolder(str(root)).load()
    assert str(info.value) == f"{root / 'config.json'}: num_clients is 4 but {root / 'train'} holds 3 client files"
    (root / "config.json").write_text(json.dumps({"num_clients": 3, "num_classes": 3}))
    with pytest.raises(ValueError) as info:
        PFLlibFolder(str(root), num_classes=5).load()
    assert str(info.value) == f"{root / 'config.json'}: num_classes is 3 but num_classes=5 was given"
    (root / "config.json").write_text('{"num_clients": 3,')
    with pytest.raises(DataFileError, match="config.json: not valid JSON"):
        PFLlibFolder(str(root)).load()


def test_without_config_num_classes_is_the_largest_label_plus_one(folder):
    root, train, test = folder
    (root / "config.json").unlink()
    labels = np.concatenate([y for _, y in train + test])
    assert ClientDataModule(PFLlibFolder(str(root))).num_classes == int(labels.max()) + 1
