"""Round checkpoints: everything a resume needs, written atomically.

A checkpoint holds the global state, the strategy's state (server-optimizer moments, server-side models), the
client-state store's snapshot, the communication counters, the metric history and the run's identity
(seed, number of clients, rounds). Writing goes through a temporary file and ``os.replace`` so an
interrupted write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_VERSION = 1
LAST_NAME = "last.ckpt"


def round_checkpoint_path(directory: Path, round: int) -> Path:
    """``<directory>/round_<round>.ckpt`` (zero-padded)."""
    return directory / f"round_{round:05d}.ckpt"


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Atomically writes ``payload`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"lit_fed_checkpoint": CHECKPOINT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a lit_fed round checkpoint.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a lit_fed round checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no federated checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "lit_fed_checkpoint" not in payload:
        raise ValueError(f"{path} is not a lit_fed round checkpoint (was it written by FederatedLoop?)")
    return payload


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Deletes round checkpoints beyond the newest ``keep_last`` (``last.ckpt`` is kept)."""
    if keep_last <= 0:
        return
    rounds = sorted(directory.glob("round_*.ckpt"))
    for old in rounds[:-keep_last]:
        old.unlink(missing_ok=True)
