"""Where a Flower node keeps its client's personal state between rounds.

The personal state never leaves the node. Two places, chosen per node:

* :class:`ContextState` — Flower's own per-node ``Context.state`` (kept by the SuperNode, or by the simulation
  engine, for the duration of a run);
* :class:`DirectoryState` — a local client-state directory (one file per client and round), which also survives
  the run: a run resumed from a round checkpoint reads, for round ``r``, the newest version written before ``r``,
  so versions written after the checkpoint are ignored exactly as the in-process loop's store discards them.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from typing_extensions import override

from lit_fed.client.payloads import StateDict
from lit_fed.flower.records import record_to_state, state_to_record


class NodeState(ABC):
    """A node's store of its client's personal state, versioned by round."""

    @abstractmethod
    def load(self, client_id: int, before_round: int) -> StateDict | None:
        """The newest state saved in a round ``< before_round``, or ``None`` (the client never trained)."""

    @abstractmethod
    def save(self, client_id: int, round: int, state: StateDict, keep_from: int | None = None) -> None:
        """Stores the client's state as version ``round``.

        ``keep_from``: a resume may still need the versions from it on and the newest one below it (the server
        says so); older ones may go. ``None``: the store's own policy.
        """

    @abstractmethod
    def discard_from(self, client_id: int, round: int) -> None:
        """Forgets the client's states of rounds ``>= round`` (0: all), as a fresh or a resumed run needs."""


class ContextState(NodeState):
    """Personal state in Flower's ``Context.state`` of the node (one ``ArrayRecord`` per client)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @override
    def load(self, client_id: int, before_round: int) -> StateDict | None:
        state = self.context.state
        arrays, meta = f"lit_fed.personal.{client_id}", f"lit_fed.personal_round.{client_id}"
        if arrays not in state.array_records or int(state.config_records[meta]["round"]) >= before_round:  # type: ignore[arg-type]
            return None
        return record_to_state(state.array_records[arrays])

    @override
    def save(self, client_id: int, round: int, state: StateDict, keep_from: int | None = None) -> None:
        self.context.state[f"lit_fed.personal.{client_id}"] = state_to_record(state)
        self.context.state[f"lit_fed.personal_round.{client_id}"] = ConfigRecord({"round": round})

    @override
    def discard_from(self, client_id: int, round: int) -> None:
        state = self.context.state
        meta = f"lit_fed.personal_round.{client_id}"
        if meta in state.config_records and int(state.config_records[meta]["round"]) >= round:  # type: ignore[arg-type]
            del state[f"lit_fed.personal.{client_id}"]
            del state[meta]


class DirectoryState(NodeState):
    """Personal state as ``<directory>/client_<id>/r<round>.pt`` files, versioned.

    After each save, the versions a resume from a kept round checkpoint may need stay (the server's ``keep_from``:
    every version from it on and the newest below it); without that information, the newest ``keep``.

    Args:
        directory: The node's client-state directory (created if absent).
        keep: Versions kept per client when a save does not say which a resume needs.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"DirectoryState: keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def _versions(self, client_id: int) -> list[tuple[int, Path]]:
        folder = self.directory / f"client_{client_id}"
        if not folder.is_dir():
            return []
        return sorted((int(path.stem[1:]), path) for path in folder.glob("r*.pt"))

    @override
    def load(self, client_id: int, before_round: int) -> StateDict | None:
        versions = [path for rnd, path in self._versions(client_id) if rnd < before_round]
        if not versions:
            return None
        return torch.load(versions[-1], map_location="cpu", weights_only=True)

    @override
    def discard_from(self, client_id: int, round: int) -> None:
        for rnd, path in self._versions(client_id):
            if rnd >= round:
                path.unlink(missing_ok=True)

    @override
    def save(self, client_id: int, round: int, state: StateDict, keep_from: int | None = None) -> None:
        path = self.directory / f"client_{client_id}" / f"r{round}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
        os.replace(tmp, path)
        versions = self._versions(client_id)
        if keep_from is None:
            stale = versions[: max(0, len(versions) - self.keep)]
        else:  # everything from keep_from on, and the newest version below it
            below = [version for version in versions if version[0] < keep_from]
            stale = below[:-1]
        for _, old in stale:
            old.unlink(missing_ok=True)
