"""Shared test helpers (importable from every test module: ``tests`` is on pytest's ``pythonpath``).

Fixtures built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from lit_fed.client.module import FederatedClient
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.runner import SequentialRunner
from lit_fed.loop.state_store import ClientStateStore
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (configs, recipes, benchmarks)."""

CPU = {"accelerator": "cpu", "devices": 1}
"""Client Trainer settings for tests."""


def sgd(lr: float = 0.1, momentum: float = 0.0) -> Callable[[Any], torch.optim.Optimizer]:
    """An optimizer factory ``params -> SGD(lr, momentum)`` (picklable, as Flower ships clients by pickle)."""
    return functools.partial(torch.optim.SGD, lr=lr, momentum=momentum)


def tiny_client(cls: type = FederatedClient, seed: int = 0, *, width: int | None = None, **kwargs: Any) -> Any:
    """A ``cls`` client around a seeded ``TinyCNN`` (1 channel, 4 classes); SGD lr 0.1 unless ``optimizer`` is given."""
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", sgd(0.1))
    backbone = TinyCNN(in_channels=1, num_classes=4) if width is None else TinyCNN(1, 4, width=width)
    return cls(backbone, **kwargs)


def tiny_datamodule(num_clients: int = 4, seed: int = 0, batch_size: int = 16, **kwargs: Any) -> FederatedDataModule:
    """Synthetic 8x8 grey images, 4 classes, Dirichlet(1.0) over ``num_clients`` clients."""
    return FederatedDataModule(
        dataset=Synthetic(num_classes=4, num_train=320, num_test=120, image_size=8),
        partitioner=Dirichlet(alpha=1.0, min_size=10),
        num_clients=num_clients,
        batch_size=batch_size,
        eval_batch_size=64,
        seed=seed,
        **kwargs,
    )


def store_of(loop: FederatedLoop) -> ClientStateStore:
    """The client-state store of the loop's in-process worker."""
    assert isinstance(loop.runner, SequentialRunner), type(loop.runner)
    return loop.runner.worker.store


@contextlib.contextmanager
def client_model(loop: FederatedLoop, client_id: int) -> Iterator[Any]:
    """``client_id``'s model as the loop evaluates it (before local adaptation), in eval mode."""
    assert isinstance(loop.runner, SequentialRunner), type(loop.runner)
    (message,) = loop.strategy.configure_evaluate(loop.round, [client_id], loop.global_state)
    with loop.runner.worker.evaluation_model(message) as module:
        yield module


@contextlib.contextmanager
def global_model(loop: FederatedLoop) -> Iterator[Any]:
    """The loop's global model (initial personal state + global state), in eval mode on the CPU."""
    module = loop.client
    was_training = module.training
    module.load_personal_state(loop.initial_personal)
    module.load_state(loop.global_state)
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def logged_rounds(run_dir: Path) -> list[int]:
    """The round numbers (``step``) of the rows of ``run_dir/logs/metrics.csv``, in file order."""
    import csv

    with (Path(run_dir) / "logs" / "metrics.csv").open(newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file)]


class InterruptAt(LoopCallback):
    """Raises ``KeyboardInterrupt`` (what Ctrl-C raises) when round ``at_round`` (1-based) ends, before its
    checkpoint is written; only in a run that started from scratch, so the resumed run completes."""

    def __init__(self, at_round: int) -> None:
        self.at_round = at_round
        self.fresh = True

    def on_run_start(self, loop: FederatedLoop, start_round: int) -> None:
        self.fresh = start_round == 0

    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        if self.fresh and metrics["round"] == self.at_round:
            raise KeyboardInterrupt


SMALL_SOURCE = Synthetic(num_classes=4, num_train=400, num_test=200, image_size=8, channels=1, seed=0)
"""The data tests' source: 400 training and 200 test 8x8 grey images, 4 classes."""


def small_datamodule(seed: int = 0, **overrides: Any) -> FederatedDataModule:
    """:data:`SMALL_SOURCE` split Dirichlet(0.5) over 5 clients, batch 8 (``overrides`` replace any argument)."""
    arguments: dict[str, Any] = {
        "dataset": SMALL_SOURCE,
        "partitioner": Dirichlet(alpha=0.5, min_size=10),
        "num_clients": 5,
        "batch_size": 8,
        "eval_batch_size": 32,
        "seed": seed,
        **overrides,
    }
    return FederatedDataModule(**arguments)


def batches(loader: Iterable[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(x, y)`` batches of ``loader``, copied."""
    return [(x.clone(), y.clone()) for x, y in loader]
