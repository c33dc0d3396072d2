"""Process-wide adjustments to Lightning for running many short ``Trainer.fit`` calls (one per client per round).

Everything here touches Lightning from the outside and is undone on exit; the one private API used
(:data:`PRIVATE_CALLBACK_LOADER`) is checked by ``tests/utils/test_lightning_patches.py``, which fails loudly if a
Lightning release moves or renames it.

* :func:`quiet_lightning` — silences the per-fit banners (device info, "max_epochs reached") and a few warnings
  that are noise for federated fits.
* :func:`cached_callback_discovery` — skips the per-``Trainer`` scan of installed packages' entry points.
* :func:`seed_torch` — seeds the CPU and CUDA generators (cheaper than ``torch.manual_seed``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch

PRIVATE_CALLBACK_LOADER = ("lightning.pytorch.trainer.connectors.callback_connector", "_load_external_callbacks")
"""Module and name of the Lightning function :func:`cached_callback_discovery` replaces while it is active."""

_quiet_depth = 0


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silences Lightning's per-fit banners and federated-fit noise warnings while active.

    Re-entrant: nested uses cost nothing (``Logger.setLevel`` clears every logger's cache, too slow to repeat per
    client fit), so a run enters it once and each fit enters it again cheaply.
    """
    global _quiet_depth
    if _quiet_depth:
        _quiet_depth += 1
        try:
            yield
        finally:
            _quiet_depth -= 1
        return
    _quiet_depth = 1
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*`Trainer\\(barebones=True\\)` is configured.*")
        try:
            yield
        finally:
            _quiet_depth = 0
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def seed_torch(seed: int) -> None:
    """Seeds the CPU generator and, when CUDA exists, every CUDA device.

    Cheaper than ``torch.manual_seed``, which also probes every other backend, on each of a run's client fits.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@functools.cache
def _has_callback_factories(group: str) -> bool:
    return bool(importlib.metadata.entry_points(group=group))


@contextlib.contextmanager
def cached_callback_discovery() -> Iterator[None]:
    """Skips Lightning's per-Trainer scan of every installed package's entry points when none registers callbacks.

    ``Trainer.__init__`` looks up callback factories in package metadata each time (~10 ms), which would be paid
    once per client per round. The answer does not change within a process, so it is looked up once; if a package
    does register factories, Lightning's own loader still runs for every Trainer.
    """
    import importlib

    module_name, name = PRIVATE_CALLBACK_LOADER
    connector = importlib.import_module(module_name)
    original = getattr(connector, name)

    def load(group: str) -> list[Any]:
        return original(group) if _has_callback_factories(group) else []

    setattr(connector, name, load)
    try:
        yield
    finally:
        setattr(connector, name, original)
