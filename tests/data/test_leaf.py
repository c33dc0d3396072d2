"""LEAF-style JSON (users / num_samples / user_data) as client data, one client per user."""

import json

import numpy as np
import pytest
import torch

from lit_fed.data import ClientDataModule, DataFileError, LeafJSON, read_partition


def leaf_split(users: dict[str, int], seed: int = 0) -> dict:
    """A LEAF file: each user gets ``n`` flat 16-value samples in [0, 1] and labels in 0..3."""
    rng = np.random.default_rng(seed)
    data = {
        user: {"x": rng.random((n, 16)).round(3).tolist(), "y": rng.integers(0, 4, n).tolist()}
        for user, n in users.items()
    }
    return {"users": list(users), "num_samples": list(users.values()), "user_data": data}


def write(path, content) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return str(path)


@pytest.fixture
def leaf(tmp_path):
    train = {"f_a": 10, "f_b": 7}, {"f_c": 12}
    test = {"f_a": 3, "f_c": 4, "f_b": 2}
    files = [leaf_split(train[0], seed=0), leaf_split(train[1], seed=1)]
    write(tmp_path / "train" / "part_0.json", files[0])
    write(tmp_path / "train" / "part_1.json", files[1])
    test_file = leaf_split(test, seed=2)
    write(tmp_path / "test" / "all.json", test_file)
    return tmp_path, files, test_file


def test_one_client_per_user_in_train_file_order(leaf):
    root, files, test_file = leaf
    source = LeafJSON(train=str(root / "train"), test=str(root / "test"), num_classes=4, sample_shape=(1, 4, 4))
    dm = ClientDataModule(source, batch_size=4, eval_batch_size=50)
    assert dm.client_names == ["f_a", "f_b", "f_c"]
    assert (dm.num_clients, dm.num_classes, dm.input_shape) == (3, 4, (1, 4, 4))
    assert [dm.client_num_train_samples(k) for k in range(3)] == [10, 7, 12]
    assert [dm.client_num_test_samples(k) for k in range(3)] == [3, 2, 4]
    train_users = {**files[0]["user_data"], **files[1]["user_data"]}
    for client, user in enumerate(dm.client_names):
        np.testing.assert_array_equal(
            dm.client_label_counts(client).numpy(), np.bincount(train_users[user]["y"], minlength=4)
        )
        ((_, y),) = list(dm.client_test_dataloader(client))
        assert y.tolist() == test_file["user_data"][user]["y"]
    ((x, _),) = list(dm.client_test_dataloader(0))
    expected = torch.tensor(test_file["user_data"]["f_a"]["x"], dtype=torch.float32).view(3, 1, 4, 4)
    torch.testing.assert_close(x, (expected - dm.built.mean[0]) / dm.built.std[0])
    assert dm.global_test_name == "pooled client test splits"


def test_a_single_file_without_test_data_is_split_by_train_fraction(leaf):
    root, _, _ = leaf
    dm = ClientDataModule(LeafJSON(train=str(root / "train" / "part_0.json"), sample_shape=(16, 1)), train_fraction=0.5)
    assert dm.client_names == ["f_a", "f_b"]
    assert dm.input_shape == (1, 16, 1)
    assert [dm.client_num_train_samples(k) + dm.client_num_test_samples(k) for k in range(2)] == [10, 7]


def test_save_partition_lists_the_users(leaf, tmp_path):
    root, _, _ = leaf
    dm = ClientDataModule(LeafJSON(train=str(root / "train"), test=str(root / "test"), sample_shape=(1, 4, 4)))
    record = read_partition(dm.save_partition(tmp_path / "run"))
    assert record.client_names == ["f_a", "f_b", "f_c"]
    np.testing.assert_array_equal(record.test[1], np.arange(13 + 7, 13 + 7 + 2))


# -- errors ------------------------------------------------------------------------------------------------


def load(root, **kwargs):
    kwargs.setdefault("sample_shape", (1, 4, 4))
    return LeafJSON(train=str(root / "train"), test=str(root / "test"), **kwargs).load()


def test_num_samples_must_match(leaf):
    root, files, _ = leaf
    files[1]["num_samples"] = [11]
    path = root / "train" / "part_1.json"
    write(path, files[1])
    with pytest.raises(DataFileError) as info:
        load(root)
    assert str(info.value) == f"{path}: user 'f_c': num_samples says 11 but user_data has 12 labels"


def test_missing_user_data(leaf):
    root, files, _ = leaf
    del files[0]["user_data"]["f_b"]
    path = write(root / "train" / "part_0.json", files[0])
    with pytest.raises(DataFileError) as info:
        load(root)
    assert str(info.value) == f'{path}: user \'f_b\' has no "x" and "y" in user_data'


def test_missing_key(leaf):
    root, _, _ = leaf
    path = write(root / "train" / "part_0.json", {"users": ["a"]})
    with pytest.raises(DataFileError) as info:
        load(root)
    assert str(info.value) == f'{path}: missing "user_data" (a LEAF file has users, num_samples and user_data)'


def test_user_in_two_train_files(leaf):
    root, files, _ = leaf
    files[1] = leaf_split({"f_a": 2}, seed=5)
    path = write(root / "train" / "part_1.json", files[1])
    with pytest.raises(DataFileError) as info:
        load(root)
    assert str(info.value) == f"{path}: user 'f_a' appears again (first in {root / 'train' / 'part_0.json'})"


def test_user_without_test_data(leaf):
    root, _, test_file = leaf
    del test_file["user_data"]["f_c"]
    test_file["users"].remove("f_c")
    test_file["num_samples"] = [3, 2]
    write(root / "test" / "all.json", test_file)
    with pytest.raises(ValueError) as info:
        load(root)
    assert str(info.value) == (
        f"{root / 'train' / 'part_1.json'} user 'f_c': has train data but no test data "
        f"(in {root / 'test' / 'all.json'})"
    )


def test_test_user_without_train_data(leaf):
    root, _, _ = leaf
    write(root / "test" / "extra.json", leaf_split({"f_z": 2}, seed=3))
    with pytest.raises(ValueError) as info:
        load(root)
    assert str(info.value) == f"{root / 'test' / 'extra.json'} user 'f_z': has test data but no train data"


def test_flat_samples_need_sample_shape(leaf):
    root, _, _ = leaf
    with pytest.raises(ValueError) as info:
        load(root, sample_shape=None)
    assert str(info.value) == (
        f"{root / 'train' / 'part_0.json'} user 'f_a': x has shape (10, 16); expected (N, C, H, W) or (N, H, W) "
        "images, or pass sample_shape to reshape flat samples (e.g. [1, 28, 28])"
    )


def test_label_out_of_range_names_file_and_user(leaf):
    root, files, _ = leaf
    files[0]["user_data"]["f_b"]["y"][0] = 9
    path = write(root / "train" / "part_0.json", files[0])
    with pytest.raises(ValueError) as info:
        load(root, num_classes=4)
    assert str(info.value) == f"{path} user 'f_b': label 9 is out of range for num_classes=4 (labels are 0..3)"


def test_text_samples_are_refused(leaf):
    root, files, _ = leaf
    files[0]["user_data"]["f_a"]["x"] = ["some text"] * 10
    path = write(root / "train" / "part_0.json", files[0])
    with pytest.raises(ValueError) as info:
        load(root)
    assert str(info.value) == f"{path} user 'f_a': x must hold numbers, got dtype <U9"


def test_truncated_file(leaf):
    root, _, _ = leaf
    path = root / "train" / "part_1.json"
    path.write_text(path.read_text()[:-30])
    with pytest.raises(DataFileError, match=r"part_1\.json: not valid JSON \(truncated or corrupt\?\) at line 1"):
        load(root)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        LeafJSON(train=str(tmp_path / "nothing")).load()
    assert str(info.value) == f"{tmp_path / 'nothing'}: no such file or directory (expected LEAF .json files)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        LeafJSON(train=str(tmp_path / "empty")).load()
    assert str(info.value) == (
        f"{tmp_path / 'empty'}: no .json files (expected LEAF files with users/num_samples/user_data)"
    )
