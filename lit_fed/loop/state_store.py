"""Client-state stores: where each client's personal state lives between its rounds — off the device.

Only the module being trained sits on the accelerator. Everything a client keeps (personal parameters,
a method's extra state such as a previous local model) is stored here as CPU
tensors, in memory (:class:`InMemoryStateStore`) or on disk (:class:`DiskStateStore`), so memory grows with
the size of the *personal* state, not with ``clients × model size``.

Both stores support round checkpoints: :meth:`ClientStateStore.state_dict` snapshots what a resume needs.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from lit_fed.client.payloads import StateDict


def _cpu_copy(state: StateDict) -> StateDict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class ClientStateStore(ABC):
    """Per-client persistent state, keyed by client id."""

    @abstractmethod
    def get(self, client_id: int) -> StateDict | None:
        """The client's stored state, or ``None`` if it never trained."""

    @abstractmethod
    def put(self, client_id: int, state: StateDict, round: int) -> None:
        """Stores the client's state after ``round``."""

    @abstractmethod
    def __contains__(self, client_id: object) -> bool:
        """Whether the client has stored state."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """A snapshot for a round checkpoint."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`, discarding anything written after it."""

    def nbytes(self) -> int:
        """Bytes of tensor data held in process memory."""
        return 0


class InMemoryStateStore(ClientStateStore):
    """Client states as CPU tensors in a dictionary (the default)."""

    def __init__(self) -> None:
        self._states: dict[int, StateDict] = {}

    @override
    def get(self, client_id: int) -> StateDict | None:
        return self._states.get(client_id)

    @override
    def put(self, client_id: int, state: StateDict, round: int) -> None:
        self._states[client_id] = _cpu_copy(state)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"states": {cid: dict(s) for cid, s in self._states.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._states = {int(cid): _cpu_copy(s) for cid, s in state["states"].items()}

    @override
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self._states.values() for t in s.values())


class DiskStateStore(ClientStateStore):
    """Client states as one file per client and version, under ``directory``.

    Each ``put`` writes ``client_<id>/r<round>.pt`` atomically; the snapshot in a checkpoint is the map of
    the current version per client, so resuming discards versions written after the checkpoint. Versions
    older than the last snapshot's are pruned after each snapshot.

    Args:
        directory: Where client files live (created if absent).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._versions: dict[int, int] = {}

    def _path(self, client_id: int, round: int) -> Path:
        return self.directory / f"client_{client_id}" / f"r{round}.pt"

    @override
    def get(self, client_id: int) -> StateDict | None:
        version = self._versions.get(client_id)
        if version is None:
            return None
        return torch.load(self._path(client_id, version), map_location="cpu", weights_only=True)

    @override
    def put(self, client_id: int, state: StateDict, round: int) -> None:
        path = self._path(client_id, round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(_cpu_copy(state), tmp)
        os.replace(tmp, path)
        self._versions[client_id] = round

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._versions

    @override
    def state_dict(self) -> dict[str, Any]:
        snapshot = dict(self._versions)
        self._prune(keep=snapshot)
        return {"directory": str(self.directory), "versions": snapshot}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._versions = {int(c): int(r) for c, r in state["versions"].items()}
        for client_dir in self.directory.glob("client_*"):
            client_id = int(client_dir.name.split("_", 1)[1])
            keep = self._versions.get(client_id)
            for file in client_dir.glob("r*.pt"):
                if keep is None or int(file.stem[1:]) > keep:
                    file.unlink()
        missing = [c for c, r in self._versions.items() if not self._path(c, r).exists()]
        if missing:
            raise FileNotFoundError(
                f"DiskStateStore: state files of clients {missing[:5]} are missing under {self.directory}"
            )

    def _prune(self, keep: dict[int, int]) -> None:
        for client_id, version in keep.items():
            for file in self._path(client_id, version).parent.glob("r*.pt"):
                if int(file.stem[1:]) < version:
                    file.unlink()

    def clear(self) -> None:
        """Deletes every stored file."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._versions = {}
