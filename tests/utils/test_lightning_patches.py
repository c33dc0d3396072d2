"""The process-wide Lightning adjustments: they must fail loudly, here, if Lightning's private API they touch moves."""

import importlib
import inspect
import logging

import lightning as L

from lit_fed.utils import lightning as patches


def test_the_private_callback_loader_exists_with_the_signature_replaced():
    module_name, name = patches.PRIVATE_CALLBACK_LOADER
    loader = getattr(importlib.import_module(module_name), name, None)
    assert callable(loader), f"Lightning moved {module_name}.{name}; update lit_fed.utils.lightning"
    assert list(inspect.signature(loader).parameters) == ["group"], inspect.signature(loader)


def test_cached_callback_discovery_is_what_trainer_init_calls_and_is_restored(monkeypatch):
    module_name, name = patches.PRIVATE_CALLBACK_LOADER
    connector = importlib.import_module(module_name)
    original = getattr(connector, name)
    groups = []

    def spy(group):
        groups.append(group)
        return original(group)

    monkeypatch.setattr(connector, name, spy)
    with patches.cached_callback_discovery():
        assert getattr(connector, name) is not spy
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert getattr(connector, name) is spy  # restored
    L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert groups, "Trainer.__init__ no longer calls the callback loader: the patch would silently do nothing"


def test_quiet_lightning_is_reentrant_and_restores_levels():
    logger = logging.getLogger("lightning.pytorch")
    before = logger.level
    with patches.quiet_lightning():
        assert logger.level == logging.WARNING
        with patches.quiet_lightning():
            assert logger.level == logging.WARNING
        assert logger.level == logging.WARNING
    assert logger.level == before
