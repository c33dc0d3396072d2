"""Execution backends: what runs a configured :class:`~lit_fed.loop.federated_loop.FederatedLoop`.

A backend takes the loop exactly as the config built it and runs it to the end; the round logic (strategy,
screening, aggregation, evaluation, logging, checkpoints) is the loop's in every backend.

* :class:`Sequential` (``"sequential"``, the default): the in-process loop, clients one after another.
* :class:`lit_fed.flower.FlowerSimulation` (``"flower-simulation"``, needs ``pip install "lit_fed[flower]"``):
  Flower's Ray-based simulation engine, clients in parallel Ray actors with per-client resources.

In a config: ``trainer.backend: flower-simulation`` (one line), or a typed class with its options::

    trainer:
      backend:
        class_path: lit_fed.flower.FlowerSimulation
        init_args: {client_resources: {num_cpus: 1, num_gpus: 0.0}}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from typing_extensions import override

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult

BackendName = Literal["sequential", "flower-simulation"]
"""The backends selectable by name."""


class Backend(ABC):
    """Runs a federated loop."""

    @abstractmethod
    def run(self, loop: FederatedLoop, resume_from: str | Path | None = None) -> FederatedResult:
        """Runs all of ``loop``'s rounds (from a round checkpoint if ``resume_from`` is given)."""

    def load_client_states(self, loop: FederatedLoop, before_round: int) -> None:  # noqa: B027
        """Puts the clients' personal states as of ``before_round`` into the store of the loop's in-process worker.

        Called after a round checkpoint is restored for an in-process evaluation (``lit-fed validate/test``).
        Default: nothing — the worker's store, restored from the checkpoint, already holds them.
        """

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Sequential(Backend):
    """The in-process loop: each sampled client trains in turn with its own Lightning ``Trainer.fit``."""

    @override
    def run(self, loop: FederatedLoop, resume_from: str | Path | None = None) -> FederatedResult:
        return loop.run(resume_from=resume_from)


def resolve_backend(backend: Backend | BackendName | None) -> Backend:
    """The backend a config names: a :class:`Backend` as is, ``"sequential"``/``None`` or ``"flower-simulation"``.

    Raises:
        ImportError: ``"flower-simulation"`` without Flower installed (install ``lit_fed[flower]``).
        ValueError: An unknown name.
    """
    if backend is None or backend == "sequential":
        return Sequential()
    if isinstance(backend, Backend):
        return backend
    if backend == "flower-simulation":
        try:
            from lit_fed.flower.backend import FlowerSimulation
        except ImportError as error:
            raise ImportError(
                "backend 'flower-simulation' needs Flower with its simulation engine: pip install 'lit_fed[flower]'"
            ) from error
        return FlowerSimulation()
    raise ValueError(f"unknown backend {backend!r}: use 'sequential', 'flower-simulation' or a Backend instance")
