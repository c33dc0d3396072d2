"""The partition a run used, as a JSON file: per-client train and test indices plus what is needed to reload them.

Format (``partition.json``, written by the datamodules' ``save_partition`` and read back by
:class:`~lit_fed.data.presets.SavedPartition`)::

    {
      "format": "lit_fed.partition", "version": 1,
      "source": "Fashion-MNIST",                     # the dataset's name
      "source_config": "FashionMNIST(root=None, download=True)",
      "index_space": "source training set",          # what the indices point into
      "num_source_samples": 60000,                    # size of that index space
      "label_digest": "9f1c…",                        # blake2b of its int64 labels (detects another dataset/order)
      "num_clients": 20, "seed": 0,
      "client_names": ["0", "1", …],                  # optional (LEAF users, speakers)
      "metadata": {"partitioner": "Dirichlet(alpha=0.1, …)", "train_fraction": 0.75, …},
      "clients": [{"train": [3, 17, …], "test": [5, …]}, …]
    }

Indices are sorted integers; JSON keeps the file readable and diffable, and loading it runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lit_fed.data.files import DataFileError, read_json

__all__ = ["FORMAT", "PARTITION_FILE_NAME", "VERSION", "PartitionFile", "label_digest", "read_partition"]

FORMAT = "lit_fed.partition"
VERSION = 1
PARTITION_FILE_NAME = "partition.json"
"""The file name ``save_partition(directory)`` writes in ``directory``."""


def label_digest(labels: np.ndarray) -> str:
    """A 16-hex-digit blake2b digest of ``labels`` as little-endian int64: equal labels, equal digest."""
    data = np.ascontiguousarray(np.asarray(labels, dtype="<i8")).tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(eq=False)
class PartitionFile:
    """A partition with its provenance (see the module docstring for the fields' meaning).

    Attributes:
        source: Name of the dataset.
        num_source_samples: Size of the index space the indices point into.
        seed: The run seed that produced the partition.
        train: Per client, sorted ``int64`` train indices.
        test: Per client, sorted ``int64`` test indices.
        label_digest: :func:`label_digest` of the index space's labels (``None``: not checked on reload).
        source_config: ``repr`` of the dataset source's configuration.
        index_space: What the indices point into.
        client_names: Optional per-client names.
        metadata: Free-form settings of the run (partitioner, train fraction, ...), JSON-serializable.
    """

    source: str
    num_source_samples: int
    seed: int
    train: list[np.ndarray]
    test: list[np.ndarray]
    label_digest: str | None = None
    source_config: str = ""
    index_space: str = "source training set"
    client_names: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.train)

    def write(self, path: str | Path) -> Path:
        """Writes the file atomically (a temporary file renamed over ``path``); parent directories are created.

        Returns:
            ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        head = {
            "format": FORMAT,
            "version": VERSION,
            "source": self.source,
            "source_config": self.source_config,
            "index_space": self.index_space,
            "num_source_samples": int(self.num_source_samples),
            "label_digest": self.label_digest,
            "num_clients": self.num_clients,
            "seed": int(self.seed),
            "client_names": self.client_names,
            "metadata": self.metadata,
        }
        lines = ["{"] + [f" {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()] + [' "clients": [']
        for client, (train, test) in enumerate(zip(self.train, self.test, strict=True)):
            entry = json.dumps({"train": [int(i) for i in train], "test": [int(i) for i in test]})
            lines.append(f"  {entry}{',' if client < self.num_clients - 1 else ''}")
        lines.append(" ]\n}\n")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(tmp, path)
        return path


def _index_array(path: Path, values: Any, where: str, bound: int) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataFileError(f"{path}: {where} must be a list of integers")
    array = np.asarray(values, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= bound):
        raise DataFileError(
            f"{path}: {where} has index {int(array.min() if array.min() < 0 else array.max())} outside "
            f"[0, {bound}) (num_source_samples)"
        )
    return np.sort(array)


def read_partition(path: str | Path) -> PartitionFile:
    """Reads and validates a partition file written by ``save_partition``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFileError: Not valid JSON, not a ``lit_fed.partition`` file, an unsupported version, or a malformed
            field (the message names the field or client).
    """
    path = Path(path)
    content = read_json(path)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise DataFileError(f'{path}: not a lit_fed partition file (no "format": "{FORMAT}")')
    if content.get("version") != VERSION:
        raise DataFileError(f"{path}: unsupported partition file version {content.get('version')!r} (known: {VERSION})")
    for key in ("source", "num_source_samples", "num_clients", "seed", "clients"):
        if key not in content:
            raise DataFileError(f'{path}: missing field "{key}"')
    bound, clients = content["num_source_samples"], content["clients"]
    if not isinstance(bound, int) or bound < 1:
        raise DataFileError(f"{path}: num_source_samples must be a positive integer, got {bound!r}")
    if not isinstance(clients, list) or len(clients) != content["num_clients"]:
        count = len(clients) if isinstance(clients, list) else "no list of"
        raise DataFileError(f'{path}: num_clients is {content["num_clients"]!r} but "clients" holds {count} entries')
    train, test = [], []
    for client, entry in enumerate(clients):
        if not isinstance(entry, dict) or "train" not in entry or "test" not in entry:
            raise DataFileError(f'{path}: client {client} must be an object with "train" and "test" index lists')
        train.append(_index_array(path, entry["train"], f"client {client} train", bound))
        test.append(_index_array(path, entry["test"], f"client {client} test", bound))
    names = content.get("client_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(clients)):
        raise DataFileError(f"{path}: client_names must list one name per client")
    return PartitionFile(
        source=str(content["source"]),
        num_source_samples=bound,
        seed=int(content["seed"]),
        train=train,
        test=test,
        label_digest=content.get("label_digest"),
        source_config=str(content.get("source_config", "")),
        index_space=str(content.get("index_space", "source training set")),
        client_names=None if names is None else [str(name) for name in names],
        metadata=dict(content.get("metadata") or {}),
    )
