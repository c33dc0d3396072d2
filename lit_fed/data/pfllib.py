"""PFLlib's on-disk layout of a split dataset: one ``.npz`` file per client, train and test.

PFLlib (Zhang et al. 2023, https://github.com/TsingZ0/PFLlib, ``dataset/utils/dataset_utils.py``) writes a
generated federation as::

    <root>/config.json          {"num_clients": 20, "num_classes": 10, ...}   (optional here)
    <root>/train/0.npz … train/<K-1>.npz
    <root>/test/0.npz  … test/<K-1>.npz

Each ``.npz`` holds a client's samples ``x`` (``(N, C, H, W)`` for images) and labels ``y``. :class:`PFLlibFolder`
reads two encodings of that: plain arrays named ``x`` and ``y`` (what :func:`write_pfllib_folder` writes; nothing
is unpickled), and PFLlib's own, a pickled dict ``{"x": …, "y": …}`` stored under ``data`` — read only with
``allow_pickle=True``, since unpickling runs code from the file. Without a ``test/`` directory every client's
samples are split by the datamodule's ``train_fraction``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_fed.data.clients import ClientDataset, ClientSource, build_client_dataset
from lit_fed.data.files import DataFileError, read_json, read_npz

__all__ = ["PFLlibFolder", "read_client_npz", "write_pfllib_folder"]


def read_client_npz(path: str | Path, allow_pickle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one client file: arrays ``x`` and ``y``, or PFLlib's pickled ``data`` dict.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFileError: The file is truncated or corrupt, holds neither encoding, or holds the pickled one while
            ``allow_pickle`` is false.
    """
    path = Path(path)
    arrays = read_npz(path, allow_pickle=allow_pickle)
    if "x" in arrays and "y" in arrays:
        return arrays["x"], arrays["y"]
    if "data" in arrays:
        content = arrays["data"]
        if content.dtype == object and content.shape == ():
            content = content.item()
        if isinstance(content, dict) and "x" in content and "y" in content:
            return np.asarray(content["x"]), np.asarray(content["y"])
    raise DataFileError(
        f"{path}: expected arrays 'x' and 'y' (or PFLlib's pickled dict 'data' with keys 'x' and 'y'), found "
        f"{sorted(arrays) or 'no arrays'}"
    )


def _client_files(directory: Path) -> dict[int, Path]:
    files: dict[int, Path] = {}
    for path in directory.glob("*.npz"):
        if not path.stem.isdigit():
            raise DataFileError(f"{path}: not a client file; {directory} must hold only <client id>.npz files")
        files[int(path.stem)] = path
    return files


def _numbered(directory: Path, files: dict[int, Path]) -> list[Path]:
    if not files:
        raise FileNotFoundError(f"{directory}: no client files (<client id>.npz)")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise FileNotFoundError(
            f"{directory / f'{missing[0]}.npz'}: missing; client files must be numbered 0..{max(files)} without gaps"
        )
    return [files[k] for k in range(len(files))]


def _signature(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    stats = [(path, path.stat()) for path in paths]
    return tuple((str(path), stat.st_size, stat.st_mtime_ns) for path, stat in stats)


@functools.lru_cache(maxsize=4)
def _load_folder(
    root: str,
    num_classes: int | None,
    sample_shape: tuple[int, ...] | None,
    allow_pickle: bool,
    global_test: str | None,
    signature: tuple[tuple[str, int, int], ...],
) -> ClientDataset:
    del signature  # part of the cache key only: a changed file is read again
    base = Path(root)
    train_files = _numbered(base / "train", _client_files(base / "train"))
    test_dir = base / "test"
    test_files: list[Path] | None = None
    if test_dir.is_dir():
        found = _client_files(test_dir)
        extra = sorted(set(found) - set(range(len(train_files))))
        if extra:
            raise DataFileError(f"{found[extra[0]]}: has no matching train/{extra[0]}.npz")
        for client in range(len(train_files)):
            if client not in found:
                raise FileNotFoundError(
                    f"{test_dir / f'{client}.npz'}: missing; {test_dir} must hold one file per train/<i>.npz "
                    "(or remove test/ to split every client by train_fraction)"
                )
        test_files = [found[k] for k in range(len(train_files))]
    config_path = base / "config.json"
    if config_path.is_file():
        config = read_json(config_path)
        if not isinstance(config, dict):
            raise DataFileError(f"{config_path}: expected a JSON object")
        if "num_clients" in config and config["num_clients"] != len(train_files):
            raise ValueError(
                f"{config_path}: num_clients is {config['num_clients']} but {base / 'train'} holds "
                f"{len(train_files)} client files"
            )
        if "num_classes" in config:
            if num_classes is not None and num_classes != config["num_classes"]:
                raise ValueError(
                    f"{config_path}: num_classes is {config['num_classes']} but num_classes={num_classes} was given"
                )
            num_classes = config["num_classes"]

    def samples(path: Path) -> tuple[Any, Any, str]:
        x, y = read_client_npz(path, allow_pickle)
        return x, y, str(path)

    extra_test = None
    if global_test is not None:
        extra_test = samples(Path(global_test).expanduser())
    return build_client_dataset(
        f"PFLlib folder {base}",
        [samples(path) for path in train_files],
        None if test_files is None else [samples(path) for path in test_files],
        extra_test,
        num_classes,
        sample_shape,
    )


@dataclass(frozen=True)
class PFLlibFolder(ClientSource):
    """A federation saved in PFLlib's layout (see the module docstring): client ``i`` is ``train/<i>.npz``.

    Attributes:
        root: The folder holding ``train/`` (and ``test/``, ``config.json``).
        num_classes: Number of classes; ``None``: ``config.json``'s ``num_classes``, else the largest label + 1.
        sample_shape: Reshape flat samples to ``(C, H, W)`` or ``(H, W)``.
        allow_pickle: Read PFLlib's own pickled encoding (only for files you trust).
        global_test: An optional ``.npz`` with ``x``/``y`` of a global test set; ``None``: the global model is
            evaluated on the pooled client test splits.
    """

    root: str
    num_classes: int | None = None
    sample_shape: tuple[int, ...] | None = None
    allow_pickle: bool = False
    global_test: str | None = None

    def load(self) -> ClientDataset:
        """Reads and validates every client file (process-cached until a file changes).

        Raises:
            FileNotFoundError: No ``train/`` directory, a gap in the client numbering, or a missing test file.
            DataFileError: A truncated or corrupt file, or one without ``x``/``y``.
            ValueError: Invalid data (see :func:`~lit_fed.data.clients.build_client_dataset`) or a
                ``config.json`` that disagrees with the files.
        """
        root = Path(self.root).expanduser()
        if not (root / "train").is_dir():
            raise FileNotFoundError(
                f"{root / 'train'}: no such directory (a PFLlib folder holds train/<i>.npz and test/<i>.npz)"
            )
        paths = sorted(root.glob("train/*.npz")) + sorted(root.glob("test/*.npz"))
        paths += [root / "config.json"] if (root / "config.json").is_file() else []
        if self.global_test is not None:
            paths.append(Path(self.global_test).expanduser())
        existing = [path for path in paths if path.is_file()]
        shape = None if self.sample_shape is None else tuple(int(s) for s in self.sample_shape)
        return _load_folder(
            str(root), self.num_classes, shape, self.allow_pickle, self.global_test, _signature(existing)
        )


def write_pfllib_folder(
    root: str | Path,
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    test: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    num_classes: int | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Writes client arrays in the layout :class:`PFLlibFolder` reads (plain ``x``/``y`` arrays, compressed).

    Args:
        root: Output folder (created).
        train: Per client ``(x, y)`` of its training samples.
        test: Per client ``(x, y)`` of its test samples, or ``None`` (no ``test/`` directory).
        num_classes: Written to ``config.json`` (``None``: largest label + 1).
        config: Extra entries for ``config.json`` (e.g. how the split was made).

    Returns:
        ``root``.
    """
    root = Path(root)
    for kind, parts in (("train", train), ("test", test)):
        if parts is None:
            continue
        (root / kind).mkdir(parents=True, exist_ok=True)
        for client, (x, y) in enumerate(parts):
            np.savez_compressed(root / kind / f"{client}.npz", x=np.asarray(x), y=np.asarray(y))
    if num_classes is None:
        num_classes = int(max(np.asarray(y).max() for _, y in train)) + 1
    entries = {"num_clients": len(train), "num_classes": int(num_classes), **(config or {})}
    (root / "config.json").write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    return root
