"""Truncated, corrupt and missing dataset files raise one clear error that names the file."""

import gzip

import numpy as np
import pytest

from lit_fed.data import DataFileError, FashionMNIST, read_json, read_npz
from lit_fed.data.datasets import IDX_FILE_STEMS
from lit_fed.data.idx import read_idx, write_idx


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_data_file_error_is_a_value_error():
    assert issubclass(DataFileError, ValueError)


# -- npz ---------------------------------------------------------------------------------------------------


def test_read_npz_reads_every_array(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, x=np.arange(6).reshape(2, 3), y=np.array([1, 0]))
    arrays = read_npz(path)
    assert sorted(arrays) == ["x", "y"]
    np.testing.assert_array_equal(arrays["x"], np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("compressed", [True, False])
def test_truncated_npz_names_the_file(tmp_path, compressed):
    path = tmp_path / "client.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, x=np.random.default_rng(0).random((50, 8)), y=np.arange(50))
    truncate(path)
    with pytest.raises(DataFileError) as info:
        read_npz(path)
    assert str(info.value).startswith(f"{path}: not a readable .npz archive (truncated or corrupt): ")


def test_garbage_npz_names_the_file(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataFileError) as info:
        read_npz(path)
    assert str(info.value) == f"{path}: not a readable .npz archive (truncated or corrupt): no zip header"


def test_npz_with_a_corrupt_member_names_the_file(tmp_path):
    path = tmp_path / "flipped.npz"
    np.savez(path, x=np.arange(4000, dtype=np.int64))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored array: the CRC check fails when the member is read
    path.write_bytes(bytes(data))
    with pytest.raises(DataFileError) as info:
        read_npz(path)
    assert str(info.value).startswith(f"{path}: not a readable .npz archive (truncated or corrupt): ")


def test_single_npy_is_not_an_npz(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.arange(3))
    with pytest.raises(DataFileError) as info:
        read_npz(path)
    assert str(info.value) == f"{path}: is a single .npy array, not an .npz archive of named arrays"


def test_pickled_npz_needs_allow_pickle(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, data={"x": [1], "y": [0]})
    with pytest.raises(DataFileError) as info:
        read_npz(path)
    assert str(info.value) == f"{path}: holds pickled Python objects; pass allow_pickle=True only if you trust the file"
    assert read_npz(path, allow_pickle=True)["data"].item() == {"x": [1], "y": [0]}


def test_missing_npz(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_npz(tmp_path / "absent.npz")
    assert str(info.value) == f"{tmp_path / 'absent.npz'}: no such file"
    with pytest.raises(FileNotFoundError) as info:
        read_npz(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a file"


# -- json --------------------------------------------------------------------------------------------------


def test_truncated_json_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "users.json"
    path.write_text('{"users": ["a", "b"], "num_samples": [1', encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        read_json(path)
    assert str(info.value) == (
        f"{path}: not valid JSON (truncated or corrupt?) at line 1 column 40: Expecting ',' delimiter"
    )


def test_binary_json_names_the_file(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataFileError) as info:
        read_json(path)
    assert str(info.value).startswith(f"{path}: not UTF-8 text, so not JSON: ")


def test_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json: no such file"):
        read_json(tmp_path / "absent.json")


# -- idx ---------------------------------------------------------------------------------------------------


def test_truncated_gzipped_idx_names_the_file(tmp_path):
    path = write_idx(
        tmp_path / "train-images-idx3-ubyte.gz", np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    )
    truncate(path)
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: truncated or corrupt gzip data: ")


def test_corrupt_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03")[:10] + b"junk" * 8)
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: truncated or corrupt gzip data: ")


def test_truncated_idx_payload_says_truncated(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(10, dtype=np.uint8))
    truncate(path, keep=0.9)
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(info.value) == (f"{path}: truncated IDX payload: 8 bytes, expected 10 for shape (10,) and dtype uint8")


def test_idx_with_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataFileError, match="trailing bytes after the IDX payload: 5 bytes, expected 4"):
        read_idx(path)


def test_missing_idx(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_idx(tmp_path / "absent")
    assert str(info.value) == f"{tmp_path / 'absent'}: no such file"


def test_fashion_mnist_with_a_truncated_file_names_it(tmp_path):
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        (np.arange(12) % 10).astype(np.uint8),
        rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        (np.arange(6) % 10).astype(np.uint8),
    )
    for stem, array in zip(IDX_FILE_STEMS, arrays, strict=True):
        write_idx(tmp_path / f"{stem}.gz", array)
    broken = tmp_path / "t10k-images-idx3-ubyte.gz"
    truncate(broken)
    with pytest.raises(DataFileError) as info:
        FashionMNIST(root=str(tmp_path), download=False).load()
    assert str(info.value).startswith(f"{broken}: truncated or corrupt gzip data: ")
