"""Round checkpoints: everything a resume needs, written atomically.

A checkpoint holds the global state, the strategy's state (server-optimizer moments, server-side models), each
server step's and stateful loop callback's state, the round stage's state (the asynchronous event queue), the
runner's client state (the client-state store, in process), the communication counters, the metric history and the
run's fingerprint (:mod:`lit_fed.loop.fingerprint`: data, model, method, seed, federation settings). Writing goes
through a temporary file and ``os.replace`` so an interrupted write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lit_fed.loop.fingerprint import TRAINING_ONLY, fingerprint_differences

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop

log = logging.getLogger("lit_fed")

CHECKPOINT_VERSION = 2  # 2: server steps, round stage and runner state
LAST_NAME = "last.ckpt"
_REQUIRED = {"round", "fingerprint", "global_state", "strategy", "history"}


def round_checkpoint_path(directory: Path, round: int) -> Path:
    """``<directory>/round_<n>.ckpt`` after the ``round`` (0-based) index, named by its number ``n = round + 1``."""
    return directory / f"round_{round + 1:05d}.ckpt"


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Atomically writes ``payload`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"lit_fed_checkpoint": CHECKPOINT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A file that is not a readable lit_fed round checkpoint (truncated, corrupt, foreign)."""


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint ``path`` names: the file itself, or ``last.ckpt`` of a run or checkpoint directory.

    Raises:
        FileNotFoundError: nothing to load there.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / LAST_NAME, path / "checkpoints" / LAST_NAME):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"no federated checkpoint in {path} (looked for {LAST_NAME} and checkpoints/{LAST_NAME})"
        )
    if not path.exists():
        raise FileNotFoundError(f"no federated checkpoint at {path}")
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a lit_fed round checkpoint: a file, or the ``last.ckpt`` of a run directory or its ``checkpoints/``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, truncated, corrupt or not a lit_fed round checkpoint (the message names
            the file and what is wrong).
    """
    path = checkpoint_file(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch reports truncation and foreign files in many internal ways
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({size} bytes; truncated or corrupt: {type(error).__name__})"
        ) from None
    if not isinstance(payload, dict) or "lit_fed_checkpoint" not in payload:
        kind = type(payload).__name__
        raise CheckpointError(f"{path}: a {kind}, not a lit_fed round checkpoint (it was not written by FederatedLoop)")
    missing = sorted(_REQUIRED - set(payload))
    if missing:
        raise CheckpointError(f"{path}: an incomplete lit_fed round checkpoint (missing {missing})")
    return payload


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Deletes round checkpoints beyond the newest ``keep_last`` (``last.ckpt`` is kept)."""
    if keep_last <= 0:
        return
    rounds = sorted(directory.glob("round_*.ckpt"))
    for old in rounds[:-keep_last]:
        old.unlink(missing_ok=True)


def loop_payload(loop: FederatedLoop, completed_round: int) -> dict[str, Any]:
    """Everything ``loop`` needs to resume after ``completed_round``."""
    return {
        "round": completed_round,
        "fingerprint": loop.fingerprint,
        "global_state": loop.global_state,
        "initial_personal": loop.initial_personal,
        "strategy": loop.strategy.state_dict(),
        "server_steps": {step.state_key: step.state_dict() for step in loop.steps},
        "stage": loop.stage.state_dict(),
        "clients": loop.runner.state_dict(),
        "comm": loop.comm.state_dict(),
        "history": loop.history,
        "callbacks": {c.state_key: state for c in loop.callbacks if (state := c.state_dict())},
    }


def _check_same_run(loop: FederatedLoop, payload: dict[str, Any], path: Path, evaluation: bool) -> None:
    ignore = TRAINING_ONLY if evaluation else ()
    differences = fingerprint_differences(payload["fingerprint"], loop.fingerprint, ignore)
    if differences and not loop.settings.allow_config_change:
        lines = "\n  ".join(differences)
        raise ValueError(
            f"checkpoint {path} was written by a run with other settings:\n  {lines}\n"
            "resume with the settings of that run, or pass --trainer.allow_config_change true to resume anyway"
        )
    for line in differences:
        log.warning("resuming %s with a changed setting (allow_config_change): %s", path, line)
    missing = set(loop.global_state) ^ set(payload["global_state"])
    if missing:
        raise ValueError(f"checkpoint {path}: global state keys differ from the client's: {sorted(missing)[:5]}")
    live = {c.state_key for c in loop.callbacks if c.state_dict()}
    saved = set(payload["callbacks"])
    steps = {s.state_key for s in loop.steps}
    if saved != live or set(payload["server_steps"]) - steps:
        raise ValueError(
            f"checkpoint {path} holds state for loop callbacks {sorted(saved)} and server steps "
            f"{sorted(payload['server_steps'])}; this run has {sorted(live)} and {sorted(steps)}"
        )


def restore_loop(loop: FederatedLoop, path: str | os.PathLike[str], evaluation: bool = False) -> int:
    """Restores a round checkpoint into a set-up ``loop``; returns the first round still to run.

    ``evaluation=True`` (validate/test) ignores the settings that only change training (:data:`TRAINING_ONLY`).

    Raises:
        CheckpointError: an unreadable or foreign file.
        ValueError: a checkpoint of a run with other settings (unless ``allow_config_change``), or of other keys.
    """
    file = checkpoint_file(path)
    payload = load_checkpoint(file)
    _check_same_run(loop, payload, file, evaluation)
    live = {c.state_key: c for c in loop.callbacks if c.state_dict()}
    loop.global_state = payload["global_state"]
    loop.initial_personal = loop.context.initial_personal = payload["initial_personal"]
    loop.strategy.load_state_dict(payload["strategy"])
    for step in loop.steps:
        step.load_state_dict(payload["server_steps"].get(step.state_key, {}))
    loop.round = loop.context.round = int(payload["round"])
    loop.stage.load_state_dict(payload["stage"], loop.round)
    loop.runner.load_state_dict(payload["clients"])
    loop.comm.load_state_dict(payload["comm"])
    loop.history = list(payload["history"])
    for key, state in payload["callbacks"].items():
        live[key].load_state_dict(state)
    loop.last_checkpoint = file
    return loop.round + 1
