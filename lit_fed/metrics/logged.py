"""A user module's own evaluation: its ``validation_step`` through ``Trainer.validate``, pooled across clients.

A LightningModule made federated by :func:`~lit_fed.client.module.federate` is evaluated the way it evaluates
itself: each client runs ``Trainer.validate`` on its own validation batches and reports what the module
``self.log``-s (the epoch-level values Lightning returns), the number of samples it saw, and — for every
torchmetrics ``Metric`` object it logs — the metric's states at the end of the epoch. The server pools them
(:func:`pool_logged`):

* a logged ``Metric`` that is an attribute of the module: its clients' states are merged (``Metric.merge_state``)
  into a fresh copy of the server module's metric, whose ``compute()`` is the exact pooled value;
* any other logged value (a tensor or a number): the mean over clients weighted by their numbers of samples —
  the pooled per-sample mean when the value is itself a per-sample mean (Lightning's default ``on_epoch``
  reduction, weighted by batch size).

Next to each pooled value, ``<name>_mean`` and ``<name>_std`` give the spread of the clients' own values.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.model_helpers import is_overridden
from torchmetrics import Metric

__all__ = [
    "LoggedMetrics",
    "evaluation_mode",
    "evaluation_trainer_kwargs",
    "has_validation_step",
    "pool_logged",
    "validate_logged",
]

_FIT_ONLY = ("max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches")


@dataclass
class LoggedMetrics:
    """What one ``Trainer.validate`` of a module logged, in a form the server can pool.

    Attributes:
        num_samples: Samples evaluated (batch sizes as Lightning infers them).
        values: Every epoch-level value the module logged, by name.
        states: The end-of-epoch states of the ``Metric`` objects it logged, by logged name.
        paths: The module attribute path of each logged ``Metric`` (``""`` when it is not a submodule).
    """

    num_samples: int
    values: dict[str, float] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        """Plain nested containers (for :mod:`lit_fed.client.codec`)."""
        return {"num_samples": self.num_samples, "values": self.values, "states": self.states, "paths": self.paths}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> LoggedMetrics:
        """The inverse of :meth:`to_payload`."""
        return cls(
            num_samples=int(payload["num_samples"]),
            values={k: float(v) for k, v in payload["values"].items()},
            states=dict(payload["states"]),
            paths=dict(payload["paths"]),
        )


def has_validation_step(module: L.LightningModule) -> bool:
    """Whether ``module`` defines its own ``validation_step``."""
    return is_overridden("validation_step", module, L.LightningModule)


def evaluation_trainer_kwargs(trainer_kwargs: dict[str, Any], client_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings of an evaluation Trainer: the client Trainer's, with logging on (``self.log`` must work).

    Args:
        trainer_kwargs: The user's pass-through Trainer settings (an explicit ``limit_val_batches`` is kept).
        client_kwargs: The client Trainer's full settings.
    """
    kwargs = {k: v for k, v in client_kwargs.items() if k not in _FIT_ONLY}
    kwargs.update(barebones=False, logger=False, enable_progress_bar=False, enable_model_summary=False)
    kwargs["enable_checkpointing"] = False
    kwargs["limit_val_batches"] = trainer_kwargs.get("limit_val_batches")
    return kwargs


class _SampleCount(L.Callback):
    def __init__(self) -> None:
        self.samples = 0

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        self.samples += int(extract_batch_size(batch))


def validate_logged(
    module: L.LightningModule, dataloader: Iterable[Any], trainer_kwargs: dict[str, Any]
) -> LoggedMetrics:
    """Runs ``Trainer.validate(module, dataloader)`` and returns what the module logged.

    ``module`` is a :func:`~lit_fed.client.module.federate`-d module (it captures the ``Metric`` objects it logs).
    """
    counter = _SampleCount()
    callbacks = list(trainer_kwargs.get("callbacks") or [])
    trainer = L.Trainer(**{**trainer_kwargs, "callbacks": [*callbacks, counter]})
    module._metric_capture, module._captured_states = {}, None  # type: ignore[attr-defined]
    try:
        results = trainer.validate(module, dataloaders=dataloader, verbose=False)
        captured: dict[str, Metric] = module._metric_capture  # type: ignore[attr-defined]
        states = module._captured_states or {}  # type: ignore[attr-defined]
    finally:
        module._metric_capture, module._captured_states = None, None  # type: ignore[attr-defined]
    values: dict[str, float] = {}
    for result in results:
        values.update({k: float(v) for k, v in result.items()})
    submodules = {id(m): name for name, m in module.named_modules()}
    paths = {name: submodules.get(id(metric), "") for name, metric in captured.items()}
    return LoggedMetrics(num_samples=counter.samples, values=values, states=dict(states), paths=paths)


def _value_names(name: str, values: dict[str, float]) -> list[str]:
    """The returned names of a logged ``Metric``: ``name`` (epoch only) or ``name_epoch`` (step and epoch)."""
    return [key for key in (name, f"{name}_epoch") if key in values]


def _merged(template: L.LightningModule, path: str, states: list[dict[str, Any]]) -> float | None:
    try:
        metric = template.get_submodule(path)
    except AttributeError:
        return None
    if not isinstance(metric, Metric):
        return None
    pooled = copy.deepcopy(metric).to("cpu")
    pooled.reset()
    with warnings.catch_warnings():  # merged states are complete although ``update`` was never called
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        for state in states:
            pooled.merge_state({k: list(v) if isinstance(v, list | tuple) else v for k, v in state.items()})
        value = pooled.compute()
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        return None
    return float(value)


def pool_logged(results: Sequence[LoggedMetrics], template: L.LightningModule | None = None) -> dict[str, float]:
    """The clients' logged metrics pooled (see the module docstring).

    Args:
        results: One per client.
        template: The server's copy of the module (its logged ``Metric`` attributes are merged into); ``None``:
            every value is a weighted mean.

    Returns:
        ``{name: pooled, name_mean: ..., name_std: ...}`` for every name some client logged.
    """
    results = [r for r in results if r.values or r.states]  # clients without validation data count for nothing
    names: list[str] = []
    for result in results:
        names += [name for name in result.values if name not in names]
    exact: dict[str, float] = {}
    metric_names = {name for result in results for name in result.states}
    for name in sorted(metric_names):
        holders = [r for r in results if name in r.states]
        paths = {r.paths.get(name, "") for r in holders}
        if template is None or len(holders) != len(results) or len(paths) != 1 or "" in paths:
            continue
        value = _merged(template, paths.pop(), [r.states[name] for r in holders])
        if value is not None:
            for key in {key for r in holders for key in _value_names(name, r.values)}:
                exact[key] = value
    pooled: dict[str, float] = {}
    for name in names:
        if name.endswith("_step") and name.removesuffix("_step") in metric_names:
            continue
        pairs = [(r.values[name], r.num_samples) for r in results if name in r.values]
        per_client = np.array([v for v, _ in pairs], dtype=np.float64)
        weights = np.array([n for _, n in pairs], dtype=np.float64)
        if name in exact:
            pooled[name] = exact[name]
        elif weights.sum() > 0:
            pooled[name] = float((per_client * weights).sum() / weights.sum())
        else:
            pooled[name] = float(per_client.mean())
        pooled[f"{name}_mean"] = float(per_client.mean())
        pooled[f"{name}_std"] = float(per_client.std())
    return pooled


def evaluation_mode(module: Any, data: Any) -> str:
    """How a run evaluates ``module`` on ``data``.

    Returns:
        ``"logged"``: a federated user module with its own ``validation_step`` (pooled logged metrics);
        ``"none"``: a federated user module without one, on data that is not a classification (``num_classes``
        is 0): nothing to evaluate; ``"accuracy"``: lit_fed's classification evaluation (``(x, y)`` batches).
    """
    from lit_fed.client.module import is_user_module

    if not is_user_module(module):
        return "accuracy"
    if has_validation_step(module):
        return "logged"
    return "accuracy" if int(getattr(data, "num_classes", 0) or 0) > 0 else "none"
