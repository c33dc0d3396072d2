"""What determines a run, as strings: checkpoints record it, and a resume with a different run is refused.

:func:`run_fingerprint` describes the data (the datamodule, its source and partitioner, and a digest of the
partition actually drawn), the model (the client class and every tensor's name, shape and dtype), the method (the
client's personal selectors and regularizers, the strategy and the server steps), the seed and the
federation settings that change what clients train (fraction, dropout, local epochs/steps, asynchronous mode, the
client Trainer's settings). The number of rounds, evaluation, output and checkpoint settings are not part of it:
more rounds, another run directory or evaluation period are deliberate and safe. Round callbacks (attacks,
compression, presentation) are the run's own choice and not compared either.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from lit_fed.data.protocol import PartitionReport

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_UNTRACKED_TRAINER_KEYS = {"callbacks", "logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary"}


def describe(value: Any, depth: int = 0) -> str:
    """A stable text of ``value``: its ``repr`` when its class defines one, else its class and public scalar state."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in sorted(value.items(), key=str)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(describe(v, depth + 1) for v in value) + "]"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    cls = type(value)
    if cls.__repr__ is not object.__repr__ or depth > 2:
        return _ADDRESS.sub("", repr(value))
    public = {
        k: v
        for k, v in vars(value).items()
        if not k.startswith("_") and (v is None or isinstance(v, bool | int | float | str | list | tuple | Mapping))
    }
    return f"{cls.__qualname__}({', '.join(f'{k}={describe(v, depth + 1)}' for k, v in sorted(public.items()))})"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def model_description(module: torch.nn.Module) -> str:
    """The client class and a digest of its tensors' names, shapes and dtypes."""
    tensors = [f"{k}|{tuple(v.shape)}|{v.dtype}" for k, v in module.state_dict().items()]
    return f"{type(module).__qualname__}, {len(tensors)} tensors, architecture {_digest(tensors)}"


def data_description(loop: FederatedLoop) -> str:
    """The datamodule's class, source and partitioner, and a digest of the partition drawn."""
    from lit_fed.data.datamodule import FederatedDataModule

    data = loop.datamodule
    parts = [type(data).__qualname__]
    if isinstance(data, FederatedDataModule):
        # subclasses with their own sources (e.g. Tiny Shakespeare by speaker) lack some of these: the partition digest
        # below still tells their runs apart
        for name in ("dataset", "partitioner", "batch_size", "train_fraction", "imbalance_ratio"):
            if hasattr(data, name):
                parts.append(f"{name}={describe(getattr(data, name))}")
    counts = [str(data.client_num_train_samples(c)) for c in range(loop.num_clients)]
    if isinstance(data, PartitionReport):
        counts += [",".join(str(int(v)) for v in row) for row in data.partition_histogram()]
    parts.append(f"partition {_digest(counts)}")
    return ", ".join(parts)


def run_fingerprint(loop: FederatedLoop) -> dict[str, str]:
    """What determines ``loop``'s run (see the module docstring), by name."""
    settings, client = loop.settings, loop.client
    trainer = {k: v for k, v in settings.trainer_kwargs.items() if k not in _UNTRACKED_TRAINER_KEYS}
    return {
        "seed": str(settings.seed),
        "num_clients": str(loop.num_clients),
        "data": data_description(loop),
        "model": model_description(client),
        "personal": describe(getattr(client, "split", None)),
        "regularizers": describe(list(getattr(client, "regularizers", []))),
        "strategy": describe(loop.strategy),
        "server_steps": describe(list(loop.steps)),
        "client_fraction": str(settings.client_fraction),
        "client_dropout": str(settings.client_dropout),
        "local_training": f"epochs={settings.local_epochs}, steps={settings.local_steps}",
        "asynchronous": describe(settings.asynchronous),
        "client_trainer": describe(trainer),
    }


TRAINING_ONLY = ("client_fraction", "client_dropout", "local_training", "asynchronous", "client_trainer")
"""Fingerprint keys that only change how clients train: evaluating a checkpoint (validate/test) ignores them."""


def fingerprint_differences(
    saved: Mapping[str, str], current: Mapping[str, str], ignore: tuple[str, ...] = ()
) -> list[str]:
    """One line per differing key (except ``ignore``): ``key: checkpoint <a> / this run <b>``."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [
        f"{key}: checkpoint {saved.get(key, '(absent)')} / this run {current.get(key, '(absent)')}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]
