"""Client modules: plain LightningModules that also speak the federated protocol.

:class:`FederationMixin` holds the protocol every client follows, as small hooks:

* :meth:`~FederationMixin.receive_global` — load the round's shared state (and let regularizers anchor on it);
* :meth:`~FederationMixin.extra_losses` — the method's loss terms, added to the task loss in ``training_step``;
* :meth:`~FederationMixin.build_update` — package the trained shared state as a typed ``ClientUpdate``;
* :meth:`~FederationMixin.personal_state` / :meth:`~FederationMixin.load_personal_state` — what the client keeps
  across rounds (its personal parameters, plus anything a method adds).

:class:`FederatedClient` is lit_fed's own client: a backbone with timm's feature/head contract, whose
``training_step`` is written once (task loss + ``extra_losses``). :func:`federate` gives the same protocol to a
user's existing LightningModule without rewriting it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.client.regularizers import Regularizer
from lit_fed.client.schedule import LocalSchedule
from lit_fed.client.split import ParameterSelector, ParameterSplit

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass
class StepOutput:
    """What one forward pass of a training/evaluation step produced.

    Attributes:
        loss: The task loss (cross-entropy by default).
        logits: ``(B, C)`` class scores.
        target: ``(B,)`` labels.
        embedding: ``(B, d)`` the representation fed to the classifier, when the module computes it.
    """

    loss: Tensor
    logits: Tensor
    target: Tensor
    embedding: Tensor | None = None


class FederationMixin:
    """The federated client protocol, mixed into a ``LightningModule``.

    Attributes set by :meth:`init_federation`: the parameter split, the regularizers, and the round state.
    """

    def init_federation(
        self,
        personal: Sequence[ParameterSelector] | ParameterSplit = (),
        regularizers: Sequence[Regularizer] = (),
    ) -> None:
        """Initializes the protocol state (called from ``__init__`` or by :func:`federate`)."""
        self.split = personal if isinstance(personal, ParameterSplit) else ParameterSplit(personal)
        self.regularizers = list(regularizers)
        self.current_round = 0
        self.client_id = -1
        self._shared_keys: list[str] | None = None
        self._personal_keys: list[str] | None = None
        self._loss_sum: Tensor | None = None
        self._loss_steps = 0

    # -- parameter split -------------------------------------------------------------------------------
    def shared_keys(self) -> list[str]:
        """State-dict keys sent to and aggregated by the server."""
        if self._shared_keys is None:
            self._shared_keys = self.split.shared_keys(self)  # type: ignore[arg-type]
        return self._shared_keys

    def personal_keys(self) -> list[str]:
        """State-dict keys the client keeps across rounds."""
        if self._personal_keys is None:
            self._personal_keys = self.split.personal_keys(self)  # type: ignore[arg-type]
        return self._personal_keys

    def _tensors(self) -> dict[str, Tensor]:
        return self.state_dict(keep_vars=True)  # type: ignore[attr-defined]

    def shared_state(self) -> StateDict:
        """Detached CPU copies of the shared tensors."""
        tensors = self._tensors()
        return {k: tensors[k].detach().to("cpu", copy=True) for k in self.shared_keys()}

    def load_state(self, state: StateDict, *, what: str = "state") -> None:
        """Copies ``state`` into the module's tensors in place, checking names and shapes.

        Raises:
            KeyError: ``state`` names a tensor the module does not have.
            ValueError: a shape differs.
        """
        tensors = self._tensors()
        where = f"client {self.client_id}, round {self.current_round}"
        for key, value in state.items():  # check everything before copying anything: all or nothing
            if key not in tensors:
                raise KeyError(f"{where}: {what} has unknown key '{key}'")
            if tensors[key].shape != value.shape:
                raise ValueError(
                    f"{where}: {what} key '{key}' has shape {tuple(value.shape)}, the module expects "
                    f"{tuple(tensors[key].shape)}"
                )
        with torch.no_grad():
            for key, value in state.items():
                tensors[key].copy_(value)

    # -- round hooks -----------------------------------------------------------------------------------
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the round's shared state; subclasses extend this (teacher copies, generated parameters)."""
        missing = set(self.shared_keys()) - set(message.state)
        if missing:
            raise KeyError(
                f"client {message.client_id}, round {message.round + 1}: the server message lacks shared keys "
                f"{sorted(missing)[:5]}"
            )
        self.load_state(message.state, what=f"server message to client {message.client_id}, round {message.round + 1},")
        self.client_id = message.client_id
        self.current_round = message.round
        for regularizer in self.regularizers:
            regularizer.on_round_start(self, message)
        self._loss_sum, self._loss_steps = None, 0

    def receive_evaluation(self, message: ServerMessage) -> None:  # noqa: B027
        """Called after the global state of a model to evaluate was loaded (the server's ``configure_evaluate``).

        Override to take what the method's server adds for evaluation from ``message.extras`` (e.g. personal
        tensors it generates for the client). Default: nothing.
        """

    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """The method's loss terms for this batch, by name; added to the task loss. Default: regularizers."""
        return {regularizer.name: regularizer(self) for regularizer in self.regularizers}

    def record_training_loss(self, loss: Tensor) -> None:
        """Accumulates the step loss for the round's update metrics (no host sync per step)."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_steps += 1

    def build_update(self, num_samples: int) -> ClientUpdate:
        """Packages the trained shared state for the server. Subclasses add label counts, statistics, extras."""
        metrics = {}
        if self._loss_steps:
            metrics["train_loss"] = float(self._loss_sum) / self._loss_steps  # type: ignore[arg-type]
        return ClientUpdate(
            client_id=self.client_id,
            round=self.current_round,
            state=self.shared_state(),
            num_samples=num_samples,
            metrics=metrics,
        )

    def personal_state(self) -> StateDict:
        """What this client keeps across rounds (CPU tensors). Default: its personal parameters and buffers."""
        tensors = self._tensors()
        return {k: tensors[k].detach().to("cpu", copy=True) for k in self.personal_keys()}

    def load_personal_state(self, state: StateDict) -> None:
        """Restores what :meth:`personal_state` returned."""
        self.load_state(state, what="personal state")

    def fit_limits(self, local_epochs: int, local_steps: int | None) -> dict[str, int]:
        """The client Trainer's ``max_epochs``/``max_steps`` for one round. A local schedule sets its own length."""
        schedule = getattr(self, "schedule", None)
        if schedule is not None:
            self._schedule_epochs = local_epochs
            total = schedule.total(local_epochs)
            return {"max_steps": total, "max_epochs": -1} if schedule.counts_steps else {"max_epochs": total}
        if local_steps is not None:
            return {"max_steps": local_steps, "max_epochs": -1}
        return {"max_epochs": local_epochs}

    def set_trainable(self, part: str) -> None:
        """Makes ``"personal"``, ``"shared"`` or ``"all"`` parameters trainable and freezes the rest.

        BatchNorm layers whose parameters are all frozen are put in eval mode, so a frozen part's running
        statistics do not move either [design: "frozen" means the part's whole state stays unchanged].
        """
        if part == "all":
            trainable = None
        else:
            trainable = set(self.personal_keys() if part == "personal" else self.shared_keys())
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            param.requires_grad_(trainable is None or name in trainable)
        for module in self.modules():  # type: ignore[attr-defined]
            if isinstance(module, _BatchNorm):
                params = list(module.parameters(recurse=False))
                frozen = bool(params) and not any(p.requires_grad for p in params)
                module.train(self.training and not frozen)  # type: ignore[attr-defined]

    def personalize(self, train_dataloader: Iterable[Any]) -> None:  # noqa: B027
        """Local adaptation before personalized evaluation (FedBABU fine-tuning, Per-FedAvg). Default: none."""

    def predict_logits(self, x: Tensor) -> Tensor:
        """Personalized class scores used by the evaluator."""
        return self(x)  # type: ignore[operator]

    def global_logits(self, x: Tensor) -> Tensor:
        """Class scores of the global model (shared state + initial personal state) used by the evaluator."""
        return self.predict_logits(x)


class FederatedClient(FederationMixin, L.LightningModule):
    """A federated client around a backbone with timm's feature/head contract.

    ``training_step`` is written once: task loss (:meth:`compute_step`) plus the method's
    :meth:`~FederationMixin.extra_losses`. Methods override those hooks, never the step. The module trains
    under a plain ``lightning.Trainer().fit(...)`` outside federation too.

    Args:
        backbone: A model exposing ``forward_features``, ``forward_head(x, pre_logits)`` and ``get_classifier``
            (every :mod:`lit_fed.models` model and every timm model).
        personal: Selectors of the personal parameters (see :mod:`lit_fed.client.split`); empty for FedAvg.
        regularizers: Parameter loss terms, e.g. ``[ProximalTerm(mu=0.01)]`` for FedProx.
        optimizer: A factory ``params -> Optimizer``; default SGD with lr 0.005 (PFLlib's setting).
        lr_scheduler: Optional factory ``optimizer -> LRScheduler`` (stepped per epoch).
        schedule: Optional phased local schedule (FedRep, FedBABU, FedAlt, FFGG); default: everything trains
            for the loop's ``local_epochs``/``local_steps``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        personal: Sequence[ParameterSelector] = (),
        regularizers: Sequence[Regularizer] = (),
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        schedule: LocalSchedule | None = None,
    ) -> None:
        super().__init__()
        for attr in ("forward_features", "forward_head", "get_classifier"):
            if not callable(getattr(backbone, attr, None)):
                raise TypeError(
                    f"{type(self).__name__}: the backbone {type(backbone).__name__} lacks '{attr}()' — wrap it in "
                    "lit_fed.models.TimmBackbone or implement timm's forward_features/forward_head/get_classifier"
                )
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.schedule = schedule
        self._phase: str | None = None
        self._schedule_epochs = 1  # the loop's local_epochs, for phases without their own length
        self.init_federation(personal, regularizers)
        classifier = backbone.get_classifier()
        self.num_classes = int(getattr(classifier, "out_features", getattr(backbone, "num_classes", 0)))
        self.val_accuracy = MulticlassAccuracy(num_classes=max(self.num_classes, 2), average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=max(self.num_classes, 2), average="micro")

    # -- forward ---------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """The representation fed to the classifier, ``(B, d)``."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def classify(self, embedding: Tensor) -> Tensor:
        """Class scores from an embedding through the backbone's classifier."""
        return self.backbone.get_classifier()(embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores of the client's (personalized) model."""
        return self.classify(self.embed(x))

    def compute_step(self, batch: tuple[Tensor, Tensor]) -> StepOutput:
        """Forward pass and task loss for one batch. Override for another task loss."""
        x, y = batch
        embedding = self.embed(x)
        logits = self.classify(embedding)
        return StepOutput(loss=F.cross_entropy(logits, y), logits=logits, target=y, embedding=embedding)

    # -- Lightning hooks -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Task loss plus the sum of :meth:`~FederationMixin.extra_losses`."""
        output = self.compute_step(batch)
        extras = self.extra_losses(batch, output)
        loss = output.loss
        for term in extras.values():
            loss = loss + term
        self.record_training_loss(loss)
        if self._trainer is not None and self.trainer.loggers:
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(output.target))
            for name, term in extras.items():
                self.log(f"train_{name}", term, on_step=False, on_epoch=True, batch_size=len(output.target))
        return loss

    @override
    def on_train_start(self) -> None:
        self._phase = None

    @override
    def on_train_epoch_start(self) -> None:
        if self.schedule is not None and not self.schedule.counts_steps:
            self._apply_phase(self.current_epoch)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.schedule is not None and self.schedule.counts_steps:
            self._apply_phase(self.trainer.global_step)

    def _apply_phase(self, position: int) -> None:
        phase = self.schedule.phase_at(position, self._schedule_epochs)  # type: ignore[union-attr]
        if phase.train != self._phase:
            self._phase = phase.train
            self.set_trainable(phase.train)

    @override
    def on_train_end(self) -> None:
        if self.schedule is not None:
            self.set_trainable("all")
            self._phase = None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accuracy of the personalized prediction (standalone Lightning use)."""
        x, y = batch
        self.val_accuracy(self.predict_logits(x), y)
        self.log("val_acc", self.val_accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accuracy of the personalized prediction (standalone Lightning use)."""
        x, y = batch
        self.test_accuracy(self.predict_logits(x), y)
        self.log("test_acc", self.test_accuracy, on_step=False, on_epoch=True)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters handed to the optimizer. Override for phased schedules (FedRep, FedBABU)."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self) -> Any:
        """SGD(lr=0.005) unless an optimizer factory was given; an optional per-epoch scheduler."""
        params = list(self.trainable_parameters())
        if self.optimizer_factory is None:
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.005)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}


class _FederatedUserModule:
    """What :func:`federate` mixes into a user's LightningModule class (before :class:`FederationMixin`).

    * Automatic optimization: ``extra_losses`` are added to the loss its own ``training_step`` returns.
    * Manual optimization: they are added to every loss passed to ``manual_backward`` (the module's own steps run
      as written; with several ``manual_backward`` calls per optimizer step, each call gets the terms).
    * Evaluation: the torchmetrics ``Metric`` objects it ``self.log``-s are captured, with their states at the end
      of the validation epoch, so the server can pool them exactly (see :mod:`lit_fed.metrics.logged`).
    * Pickling: instances pickle as ``(user class, state)`` and are rebuilt through :func:`federated_class`, so
      the generated class never needs to be found by name.
    """

    _federated_base: type[L.LightningModule]
    _metric_capture: dict[str, Metric] | None = None
    _captured_states: dict[str, dict[str, Any]] | None = None

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        result = super().training_step(*args, **kwargs)  # type: ignore[misc]
        if not self.automatic_optimization:  # type: ignore[attr-defined]
            return result  # the terms went into manual_backward
        loss = result["loss"] if isinstance(result, dict) else result
        if loss is None:
            return result
        for term in self.extra_losses(args[0] if args else None, None).values():  # type: ignore[attr-defined]
            loss = loss + term
        self.record_training_loss(loss)  # type: ignore[attr-defined]
        if isinstance(result, dict):
            return {**result, "loss": loss}
        return loss

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The module's own ``manual_backward``, on its loss plus the method's ``extra_losses``."""
        for term in self.extra_losses(None, None).values():  # type: ignore[attr-defined]
            loss = loss + term
        self.record_training_loss(loss)  # type: ignore[attr-defined]
        super().manual_backward(loss, *args, **kwargs)  # type: ignore[misc]

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log``; a ``Metric`` logged while an evaluation captures is remembered by its name."""
        if self._metric_capture is not None and isinstance(value, Metric):
            self._metric_capture[name] = value
        super().log(name, value, *args, **kwargs)  # type: ignore[misc]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # type: ignore[misc]
        if self._metric_capture is not None:  # before Lightning computes and resets the logged metrics
            self._captured_states = {name: _metric_state(m) for name, m in self._metric_capture.items()}

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        state = self.__getstate__()  # type: ignore[attr-defined]
        state = {k: v for k, v in state.items() if k not in ("_metric_capture", "_captured_states")}
        return (_rebuild_federated, (self._federated_base,), state)


def _metric_state(metric: Metric) -> dict[str, Any]:
    """Detached CPU copies of a metric's states (list states as lists)."""
    out: dict[str, Any] = {}
    for key, value in metric.metric_state.items():
        if isinstance(value, list):
            out[key] = [v.detach().to("cpu", copy=True) for v in value]
        else:
            out[key] = value.detach().to("cpu", copy=True)
    return out


_FEDERATED_CLASSES: dict[type, type] = {}


def federated_class(cls: type[L.LightningModule]) -> type[L.LightningModule]:
    """The federated client class of a user's LightningModule class (created once per process, then reused)."""
    federated_cls = _FEDERATED_CLASSES.get(cls)
    if federated_cls is None:
        federated_cls = type(
            f"Federated{cls.__name__}",
            (_FederatedUserModule, FederationMixin, cls),
            {"_federated_base": cls, "__module__": cls.__module__},
        )
        _FEDERATED_CLASSES[cls] = federated_cls
    return federated_cls


def _rebuild_federated(cls: type[L.LightningModule]) -> L.LightningModule:
    """An empty instance of ``federated_class(cls)``; pickle then restores its state (``__setstate__``)."""
    federated_cls = federated_class(cls)
    return federated_cls.__new__(federated_cls)


def is_user_module(module: Any) -> bool:
    """Whether ``module`` is a user's LightningModule made federated by :func:`federate`."""
    return isinstance(module, _FederatedUserModule)


def federate(
    module: L.LightningModule,
    personal: Sequence[ParameterSelector] | ParameterSplit = (),
    regularizers: Sequence[Regularizer] = (),
) -> L.LightningModule:
    """Gives a user's LightningModule the federated client protocol, without rewriting it.

    The instance keeps its own ``training_step``, ``validation_step``, optimizers, schedulers, callbacks, hooks
    and logging; the returned object is the same instance, re-classed to :func:`federated_class` of its class,
    which mixes in :class:`FederationMixin` and adds the regularizers' terms (e.g. FedProx's proximal term) to
    the loss its ``training_step`` returns (with manual optimization: to every loss it passes to
    ``manual_backward``). Its batches are whatever its steps take. It pickles (as its class and state), so it
    runs on Flower's nodes. In a federated run each client evaluates it with its own ``validation_step``
    (through ``Trainer.validate``) and the server pools what it logs; a module without ``validation_step`` is
    evaluated as a classifier (``forward`` as class scores) on ``(x, y)`` data, and not at all on other data.

    Args:
        module: Any LightningModule.
        personal: Selectors of personal parameters (e.g. ``[Modules(["net.fc"])]``, ``[BatchNorm()]``).
        regularizers: Parameter loss terms such as :class:`~lit_fed.client.regularizers.ProximalTerm`.

    Returns:
        The same module, now a federated client.
    """
    if isinstance(module, FederationMixin):
        module.init_federation(personal, regularizers)
        return module
    module.__class__ = federated_class(type(module))
    module.init_federation(personal, regularizers)  # type: ignore[attr-defined]
    return module
