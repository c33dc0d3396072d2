"""LEAF's JSON format of a federated dataset: one client per user.

LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings", https://github.com/TalwalkarLab/leaf)
stores each split (``data/train/``, ``data/test/``) as one or more JSON files of the form::

    {"users": ["f0000_14", ...],
     "num_samples": [120, ...],
     "user_data": {"f0000_14": {"x": [[0.0, 1.0, ...], ...], "y": [4, ...]}, ...},
     "hierarchies": [...]}                                  (optional, ignored)

:class:`LeafJSON` reads numeric ``x`` (e.g. FEMNIST's 784 pixel values per sample: pass
``sample_shape=[1, 28, 28]``) and integer ``y``. Clients are the users in the order of the train files' ``users``
lists (files sorted by name); a user's test samples come from the test files. ``num_samples`` must agree with the
data. Without test files every user's samples are split by the datamodule's ``train_fraction``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_fed.data.clients import ClientDataset, ClientSource, build_client_dataset
from lit_fed.data.files import DataFileError, read_json

__all__ = ["LeafJSON", "leaf_files", "read_leaf_file"]


def leaf_files(path: str | Path) -> list[Path]:
    """``[path]`` for a file, the sorted ``*.json`` files of a directory.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the directory holds no ``.json`` file.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (expected LEAF .json files)")
    files = sorted(path.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{path}: no .json files (expected LEAF files with users/num_samples/user_data)")
    return files


def read_leaf_file(path: str | Path) -> list[tuple[str, Any, Any]]:
    """``[(user, x, y), …]`` of one LEAF JSON file, in the order of its ``users`` list.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFileError: Not valid JSON, a missing or malformed ``users``/``user_data`` entry, or a
            ``num_samples`` count that disagrees with the user's labels (each message names the user).
    """
    path = Path(path)
    content = read_json(path)
    if not isinstance(content, dict):
        raise DataFileError(f'{path}: expected a JSON object with "users" and "user_data"')
    for key in ("users", "user_data"):
        if key not in content:
            raise DataFileError(f'{path}: missing "{key}" (a LEAF file has users, num_samples and user_data)')
    users, user_data = content["users"], content["user_data"]
    if not isinstance(users, list) or not isinstance(user_data, dict):
        raise DataFileError(f'{path}: "users" must be a list and "user_data" an object')
    counts = content.get("num_samples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
        raise DataFileError(f'{path}: "num_samples" must list one count per user ({len(users)} users)')
    result = []
    for position, user in enumerate(users):
        entry = user_data.get(user) if isinstance(user, str) else None
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DataFileError(f'{path}: user {user!r} has no "x" and "y" in user_data')
        if not isinstance(entry["y"], list) or not isinstance(entry["x"], list):
            raise DataFileError(f'{path}: user {user!r}: "x" and "y" must be lists')
        if counts is not None and counts[position] != len(entry["y"]):
            raise DataFileError(
                f"{path}: user {user!r}: num_samples says {counts[position]} but user_data has {len(entry['y'])} labels"
            )
        result.append((user, entry["x"], entry["y"]))
    return result


def _read_split(files: Sequence[Path]) -> dict[str, tuple[Any, Any, str]]:
    by_user: dict[str, tuple[Any, Any, str]] = {}
    first_file: dict[str, Path] = {}
    for path in files:
        for user, x, y in read_leaf_file(path):
            if user in by_user:
                raise DataFileError(f"{path}: user {user!r} appears again (first in {first_file[user]})")
            by_user[user] = (x, y, f"{path} user {user!r}")
            first_file[user] = path
    return by_user


@functools.lru_cache(maxsize=4)
def _load_leaf(
    train: tuple[str, ...],
    test: tuple[str, ...] | None,
    num_classes: int | None,
    sample_shape: tuple[int, ...] | None,
    signature: tuple[tuple[int, int], ...],
) -> ClientDataset:
    del signature  # cache key only
    train_users = _read_split([Path(p) for p in train])
    if not train_users:
        raise DataFileError(f"{train[0]}: no users")
    tests = None
    if test is not None:
        test_users = _read_split([Path(p) for p in test])
        for user, (_, _, origin) in test_users.items():
            if user not in train_users:
                raise ValueError(f"{origin}: has test data but no train data")
        for user, (_, _, origin) in train_users.items():
            if user not in test_users:
                raise ValueError(f"{origin}: has train data but no test data (in {', '.join(test)})")
        tests = [test_users[user] for user in train_users]
    return build_client_dataset(
        f"LEAF {Path(train[0]).parent}",
        list(train_users.values()),
        tests,
        None,
        num_classes,
        sample_shape,
        names=list(train_users),
    )


@dataclass(frozen=True)
class LeafJSON(ClientSource):
    """A federation in LEAF's JSON format (see the module docstring); one client per user.

    Attributes:
        train: A LEAF ``.json`` file, or a directory of them, with the users' training data.
        test: The same for their test data; ``None``: split each user by the datamodule's ``train_fraction``.
        num_classes: Number of classes (``None``: largest label + 1; FEMNIST has 62).
        sample_shape: Reshape flat samples to ``(C, H, W)`` or ``(H, W)`` (FEMNIST: ``[1, 28, 28]``).
    """

    train: str
    test: str | None = None
    num_classes: int | None = None
    sample_shape: tuple[int, ...] | None = None

    def load(self) -> ClientDataset:
        """Reads and validates the files (process-cached until a file changes).

        Raises:
            FileNotFoundError: A missing file or directory.
            DataFileError: A truncated or malformed file (naming the file and user).
            ValueError: A user with train but no test data (or the reverse), or invalid data.
        """
        train = leaf_files(self.train)
        test = None if self.test is None else leaf_files(self.test)
        files = train + (test or [])
        signature = tuple((path.stat().st_size, path.stat().st_mtime_ns) for path in files)
        shape = None if self.sample_shape is None else tuple(int(s) for s in self.sample_shape)
        return _load_leaf(
            tuple(str(p) for p in train),
            None if test is None else tuple(str(p) for p in test),
            self.num_classes,
            shape,
            signature,
        )
