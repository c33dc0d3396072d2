"""FedDF: ensemble distillation for robust model fusion in federated learning.

Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated Learning" (NeurIPS 2020),
Alg. 1 and §3; the authors' code ``epfml/federated-learning-public-code`` (``pcode/aggregation``) [code].

Clients train plainly (any client module; FedAvg's local objective). :class:`FedDF` is a server step
(``trainer.server_steps``), so it follows any strategy's aggregation: the server first fuses the sampled clients'
models (FedAvg: ``student ← Σ_k p_k w_k``), then the step distils the *ensemble* of the clients' models into the
student on unlabeled server data:

* teacher: the mean of the clients' logits ``z̄(x) = (1/|S|) Σ_k f(x; w_k)`` (each client's model is built from its
  update; :func:`ensemble_logits`);
* loss: ``T² · KL(softmax(z̄/T) ‖ softmax(z_s/T))`` (batchmean, :func:`distillation_kl`), T 1;
* Adam lr 1e-3 with a cosine schedule over at most ``max_steps`` steps (10 000 in the paper), batch 64, gradient
  norm clipped at 5;
* validation every 100 steps on a held-out split of the server data, early stopping after 1000 steps without
  improvement, and the best student is kept.

The distillation runs as a server-side Lightning fit (:class:`EnsembleDistillation` under a ``lightning.Trainer``
with ``max_steps``, ``gradient_clip_val`` and ``val_check_interval``; :class:`KeepBestState` keeps the best state
and stops early), with the client Trainer's device/precision settings (``ServerContext.trainer_kwargs``).

Server data [design]. The server's data is *unlabeled*: FedDF reads only the images of a :class:`DatasetSource`
and drops its labels. By default it is the held-out counterpart of the federation's own dataset when that dataset
is a :class:`HeldOut` source (a stratified split of a training set the clients never see); any other source (e.g.
another dataset of the same image shape) can be set with ``server_data``. Because the server data carries no
labels, the validation criterion is the student's average predictive KL to the ensemble on the held-out server
split (lower is better); the student before distillation (plain FedAvg) is a candidate too, so distillation never
returns a student that fits the ensemble worse than FedAvg did.

Fidelity (Stanton et al. 2021): top-1 agreement and average predictive KL of the student to the ensemble on the
held-out server split, before and after distillation, are reported in :attr:`FedDF.last_metrics`
(``feddf_before_fidelity_agreement``, ``feddf_before_fidelity_kl``, ``feddf_after_...``), logged through
``ServerContext.log``, which adds them to the round's metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederationMixin
from lit_fed.client.payloads import ClientUpdate, StateDict
from lit_fed.data.batching import TensorBatchDataset, normalize_images, sequential_loader, shuffled_loader
from lit_fed.data.datasets import ArrayDataset, DatasetSource
from lit_fed.data.partition import split_train_test
from lit_fed.metrics.fidelity import DistillationFidelity, PredictiveKL
from lit_fed.server.strategy import ServerContext, ServerStep
from lit_fed.utils.lightning import cached_callback_discovery, quiet_lightning
from lit_fed.utils.seeding import derive_seed, numpy_rng, torch_generator

__all__ = [
    "EnsembleDistillation",
    "FedDF",
    "HeldOut",
    "KeepBestState",
    "distillation_kl",
    "ensemble_logits",
]

_HELD_OUT_PARTS = ("rest", "held_out")

# Trainer settings the server-side distillation owns (everything else of the client Trainer's settings is reused).
_OWNED_TRAINER_KEYS = frozenset(
    {
        "barebones",  # the validation-based best-state selection needs self.log, which barebones disables
        "max_epochs",
        "max_steps",
        "min_epochs",
        "min_steps",
        "max_time",
        "limit_train_batches",
        "limit_val_batches",
        "val_check_interval",
        "check_val_every_n_epoch",
        "num_sanity_val_steps",
        "gradient_clip_val",
        "gradient_clip_algorithm",
        "accumulate_grad_batches",
        "callbacks",
        "logger",
        "enable_checkpointing",
        "enable_progress_bar",
        "enable_model_summary",
        "default_root_dir",
    }
)


# ----------------------------------------------------------------------------------------------------------------
# Unlabeled server data: a held-out split
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _held_out(source: DatasetSource, fraction: float, part: str, seed: int) -> ArrayDataset:
    data = source.load()
    labels = data.train_y.numpy()
    rest, held = split_train_test(np.arange(labels.size), labels, 1.0 - fraction, seed=seed, client_id=-1)
    index = torch.from_numpy(rest if part == "rest" else held)
    return ArrayDataset(
        train_x=data.train_x[index].contiguous(),
        train_y=data.train_y[index].clone(),
        test_x=data.test_x,
        test_y=data.test_y,
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
        name=f"{data.name}[{part}]",
    )


@dataclass(frozen=True)
class HeldOut(DatasetSource):
    """A stratified split of a source's *training* set into the clients' part and a held-out part [design].

    Use ``part="rest"`` as the federation's dataset (``data.init_args.dataset``) and the same source with
    ``part="held_out"`` as FedDF's unlabeled server data (the default of :class:`FedDF` when the federation's
    dataset is a ``HeldOut``): the clients never see the held-out images, the server never sees their labels. The
    test set is the source's, unchanged, in both parts; both keep the source's normalization statistics so the
    server's images are scaled exactly like the clients'. The split is stratified by label (per class
    ``floor(n_c·(1 − fraction))`` samples stay with the clients, :func:`~lit_fed.data.partition.split_train_test`,
    stream ``(seed, "split", -1)``) and cached per process.

    Attributes:
        source: The dataset to split.
        fraction: Share of the training set held out, in ``(0, 1)``.
        part: ``"rest"`` (the clients' part) or ``"held_out"`` (the server's part).
        seed: Split seed.
    """

    source: DatasetSource
    fraction: float = 0.1
    part: str = "rest"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.source, DatasetSource):
            raise TypeError(f"HeldOut: source must be a DatasetSource, got {self.source!r}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"HeldOut: fraction must be in (0, 1), got fraction={self.fraction!r}")
        if self.part not in _HELD_OUT_PARTS:
            raise ValueError(f"HeldOut: part must be one of {_HELD_OUT_PARTS}, got part={self.part!r}")

    def load(self) -> ArrayDataset:
        """The selected part (training images and labels) with the source's test set."""
        return _held_out(self.source, float(self.fraction), self.part, int(self.seed))

    def counterpart(self) -> HeldOut:
        """The other part of the same split."""
        return dataclasses.replace(self, part="held_out" if self.part == "rest" else "rest")


# ----------------------------------------------------------------------------------------------------------------
# The distillation: functions, the Lightning module, the best-state callback
# ----------------------------------------------------------------------------------------------------------------


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``, batchmean, in float32 (FedDF's distillation loss).

    The teacher is a constant (detached). The ``T²`` gradient-scale factor of Hinton et al. (2015) is 1 at FedDF's
    default T 1.

    Args:
        student_logits: ``(B, C)`` logits of the student.
        teacher_logits: ``(B, C)`` ensemble logits.
        temperature: Softmax temperature ``T > 0``.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"distillation_kl: student and teacher logits must both be (B, C); got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"distillation_kl: temperature must be > 0, got {temperature}")
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return temperature**2 * F.kl_div(student, teacher, reduction="batchmean", log_target=True)


@torch.no_grad()
def _logits(model: Callable[[Tensor], Tensor], images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    outputs = [model(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def ensemble_logits(
    template: nn.Module,
    states: Sequence[StateDict],
    images: Tensor,
    *,
    base_state: StateDict | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Tensor:
    """The mean of the clients' logits, ``z̄ = (1/K) Σ_k f(x; w_k)`` (FedDF's teacher), in eval mode, float32, CPU.

    One copy of ``template`` is loaded with each state in turn (``base_state`` first, for keys a state lacks), so
    memory stays at one model whatever the number of clients.

    Args:
        template: A module of the clients' architecture (e.g. the client module); it is copied, never changed.
        states: The clients' state dicts (keys of ``template``'s state dict).
        images: ``(N, …)`` inputs.
        base_state: Values for keys the states do not carry (e.g. the global state).
        batch_size: Inference batch size.
        device: Where to run the models.

    Returns:
        ``(N, C)`` ensemble logits.
    """
    if not states:
        raise ValueError("ensemble_logits: no client state")
    device = torch.device(device)
    model = copy.deepcopy(template).to(device)
    model.eval()
    total: Tensor | None = None
    with torch.no_grad():
        for state in states:
            result = model.load_state_dict({**(base_state or {}), **state}, strict=False)
            if result.unexpected_keys:
                raise KeyError(f"ensemble_logits: the state has keys the model lacks: {result.unexpected_keys[:5]}")
            logits = _logits(model, images, batch_size, device).double()
            total = logits if total is None else total + logits
    assert total is not None
    return (total / len(states)).float()


class EnsembleDistillation(L.LightningModule):
    """Distils fixed teacher logits into a student: ``T² KL(softmax(z̄/T) ‖ softmax(z_s/T))`` (FedDF, §3).

    Batches are ``(x, teacher_logits)``. Adam (lr 1e-3) with a per-step cosine schedule over ``max_steps``.
    ``validation_step`` accumulates the student's average predictive KL to the teacher
    (:class:`~lit_fed.metrics.fidelity.PredictiveKL`, temperature 1) and logs it as ``val_kl``.

    Args:
        student: The model being distilled (its forward returns logits); trained in place.
        temperature: Softmax temperature ``T``.
        lr: Adam learning rate.
        max_steps: Length of the cosine schedule (the Trainer's ``max_steps``).
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        student: nn.Module,
        temperature: float = 1.0,
        lr: float = 1e-3,
        max_steps: int = 10_000,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.temperature = temperature
        self.lr = lr
        self.max_steps = max_steps
        self.weight_decay = weight_decay
        self.val_kl = PredictiveKL()

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, teacher = batch
        loss = distillation_kl(self.student(x), teacher, self.temperature)
        self.log("distill_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, teacher = batch
        self.val_kl.update(self.student(x), teacher)
        self.log("val_kl", self.val_kl, on_step=False, on_epoch=True, batch_size=len(x))

    @override
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.student.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _cpu_state(module: nn.Module) -> StateDict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class KeepBestState(Callback):
    """Keeps the best state of a module by a monitored metric (lower is better) and stops after a patience.

    ``ModelCheckpoint`` + ``EarlyStopping`` without the disk: at every validation end, if ``monitor`` improved on the
    best value so far, a CPU copy of the module's state is kept; with ``patience_steps``, training stops once that many
    optimizer steps passed since the best (FedDF: 1000). The state before training competes too
    (``initial_value`` at step 0), so the patience also counts from there.

    Args:
        module: The module whose state is kept (e.g. the student).
        monitor: The logged metric (``trainer.callback_metrics``) to minimize.
        initial_value: The metric's value for ``initial_state`` (step 0).
        initial_state: The state before training (``None``: the module's state now).
        patience_steps: Stop after this many steps without improvement (``None``: never).
    """

    def __init__(
        self,
        module: nn.Module,
        monitor: str,
        initial_value: float,
        initial_state: StateDict | None = None,
        patience_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.monitor = monitor
        self.best_value = float(initial_value)
        self.best_state = initial_state if initial_state is not None else _cpu_state(module)
        self.best_step = 0
        self.patience_steps = patience_steps
        self.history: list[tuple[int, float]] = []

    def offer(self, value: float, step: int) -> bool:
        """Records ``value`` at ``step``; keeps the module's state if it is the best so far. Returns whether kept."""
        self.history.append((step, value))
        if value < self.best_value:
            self.best_value, self.best_state, self.best_step = value, _cpu_state(self.module), step
            return True
        return False

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        step = trainer.global_step
        self.offer(float(trainer.callback_metrics[self.monitor]), step)
        if self.patience_steps is not None and step - self.best_step >= self.patience_steps:
            trainer.should_stop = True


# ----------------------------------------------------------------------------------------------------------------
# The server strategy
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _ServerData:
    """Normalized unlabeled server images, split into a distillation and a held-out validation part."""

    train: Tensor
    val: Tensor
    source: str


class FedDF(ServerStep):
    """FedDF's server step (Lin et al. 2020, Alg. 1, lines 7–10) [code]: ensemble distillation into the fused model.

    After the strategy's aggregation (the student's starting point; FedAvg in the paper), :meth:`run` builds every
    sampled client's model from its update, averages their logits on the server data (the teacher,
    :func:`ensemble_logits`) and distils it into the student by a Lightning fit (see the module docstring for the
    rules and the server data). The distilled student becomes the next global state. The step keeps no state
    between rounds.

    Args:
        server_data: The unlabeled server data's source; ``None``: the held-out counterpart of the federation's
            :class:`HeldOut` dataset (an error for any other dataset). Its labels are never read.
        server_split: Which split of ``server_data`` to use, ``"train"`` or ``"test"``.
        server_samples: Use at most this many server images (a seeded random subset); ``None``: all.
        val_fraction: Share of the server images held out for validation, in ``(0, 1)``.
        temperature: Distillation temperature T (1).
        lr: Adam learning rate (1e-3).
        max_steps: Distillation steps at most (10 000 in the paper).
        batch_size: Distillation batch size (64).
        gradient_clip_val: Gradient-norm clip (5).
        val_every: Validate every this many steps (100).
        patience_steps: Stop after this many steps without improvement (1000); ``None``: never stop early.
        eval_batch_size: Batch size of teacher inference and validation.
        weight_decay: Adam weight decay (0).

    Raises:
        ValueError: An argument out of range.
    """

    def __init__(
        self,
        server_data: DatasetSource | None = None,
        server_split: str = "train",
        server_samples: int | None = None,
        val_fraction: float = 0.2,
        temperature: float = 1.0,
        lr: float = 1e-3,
        max_steps: int = 10_000,
        batch_size: int = 64,
        gradient_clip_val: float | None = 5.0,
        val_every: int = 100,
        patience_steps: int | None = 1000,
        eval_batch_size: int = 256,
        weight_decay: float = 0.0,
    ) -> None:
        if server_split not in ("train", "test"):
            raise ValueError(f"FedDF: server_split must be 'train' or 'test', got {server_split!r}")
        if server_samples is not None and server_samples < 2:
            raise ValueError(f"FedDF: server_samples must be >= 2 or None, got {server_samples}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"FedDF: val_fraction must be in (0, 1), got {val_fraction}")
        for name, value in (("temperature", temperature), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"FedDF: {name} must be > 0, got {value}")
        for name, value in (("max_steps", max_steps), ("batch_size", batch_size), ("val_every", val_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FedDF: {name} must be an integer >= 1, got {value!r}")
        if patience_steps is not None and patience_steps < 1:
            raise ValueError(f"FedDF: patience_steps must be >= 1 or None, got {patience_steps}")
        self.server_data = server_data
        self.server_split = server_split
        self.server_samples = server_samples
        self.val_fraction = val_fraction
        self.temperature = temperature
        self.lr = lr
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.gradient_clip_val = gradient_clip_val
        self.val_every = val_every
        self.patience_steps = patience_steps
        self.eval_batch_size = eval_batch_size
        self.weight_decay = weight_decay
        self.last_metrics: dict[str, float] = {}
        self.last_teacher: Tensor | None = None
        """The ensemble logits on the distillation split in the last round (for inspection and tests)."""
        self.last_validation: list[tuple[int, float]] = []
        """``(step, val_kl)`` of every validation in the last round's distillation (step 0: the FedAvg student)."""
        self._data: _ServerData | None = None
        self._data_key: Any = None

    # -- server data -----------------------------------------------------------------------------------------
    def resolve_server_source(self, datamodule: Any) -> DatasetSource:
        """The unlabeled data's source: ``server_data``, or the held-out part of the federation's ``HeldOut`` data.

        Raises:
            ValueError: no ``server_data`` and the federation's dataset is not a :class:`HeldOut` source.
        """
        if self.server_data is not None:
            return self.server_data
        dataset = getattr(datamodule, "dataset", None)
        if isinstance(dataset, HeldOut):
            return dataset.counterpart()
        raise ValueError(
            "FedDF needs unlabeled server data: set trainer.server.init_args.server_data to a dataset source (e.g. "
            "lit_fed.data.MNIST for Fashion-MNIST clients), or wrap the federation's dataset in "
            f"lit_fed.methods.HeldOut (part: rest) so FedDF uses its held-out part; the dataset is {dataset!r}"
        )

    def server_images(self, datamodule: Any) -> tuple[Tensor, Tensor]:
        """``(distillation, validation)`` normalized server images (labels dropped), cached per datamodule.

        Images are normalized with the server source's own statistics; a random subset of ``server_samples`` and the
        validation split are drawn from the streams ``(seed, "feddf", "subset")`` / ``(seed, "feddf", "val")``.

        Raises:
            ValueError: the server images' shape differs from the federation's input shape.
        """
        seed = int(getattr(datamodule, "seed", 0))
        source = self.resolve_server_source(datamodule)
        key = (source, self.server_split, self.server_samples, self.val_fraction, seed)
        if self._data is not None and self._data_key == key:
            return self._data.train, self._data.val
        data = source.load()
        images = data.train_x if self.server_split == "train" else data.test_x
        expected = getattr(datamodule, "input_shape", None)
        if expected is not None and tuple(images.shape[1:]) != tuple(expected):
            raise ValueError(
                f"FedDF: the server images ({data.name}, {self.server_split}) have shape {tuple(images.shape[1:])}, "
                f"the clients' have {tuple(expected)}"
            )
        count = images.shape[0]
        if self.server_samples is not None and self.server_samples < count:
            subset = np.sort(numpy_rng(seed, "feddf", "subset").permutation(count)[: self.server_samples])
            images = images[torch.from_numpy(subset)]
            count = images.shape[0]
        num_val = min(max(1, round(self.val_fraction * count)), count - 1)
        if num_val < 1:
            raise ValueError(f"FedDF: {count} server image(s) cannot be split into distillation and validation")
        order = torch.from_numpy(numpy_rng(seed, "feddf", "val").permutation(count))
        normalized = normalize_images(images, data.mean, data.std)
        self._data = _ServerData(
            train=normalized[order[num_val:]], val=normalized[order[:num_val]], source=f"{data.name}"
        )
        self._data_key = key
        return self._data.train, self._data.val

    # -- the distillation ------------------------------------------------------------------------------------
    def _trainer_kwargs(self, context: ServerContext, callbacks: list[Callback]) -> dict[str, Any]:
        kwargs = {k: v for k, v in context.trainer_kwargs.items() if k not in _OWNED_TRAINER_KEYS}
        kwargs.update(
            max_steps=self.max_steps,
            max_epochs=-1,
            gradient_clip_val=self.gradient_clip_val,
            val_check_interval=self.val_every,
            check_val_every_n_epoch=None,
            limit_val_batches=1.0,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        return kwargs

    @staticmethod
    def _device(context: ServerContext) -> torch.device:
        accelerator = str(context.trainer_kwargs.get("accelerator", "auto"))
        if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def _fidelity(
        self, student: nn.Module, images: Tensor, teacher: Tensor, prefix: str, device: torch.device
    ) -> dict[str, float]:
        student.eval()
        fidelity = DistillationFidelity(prefix=prefix)
        with torch.no_grad():
            fidelity.update(_logits(student, images, self.eval_batch_size, device), teacher)
        return fidelity.compute()

    @override
    def run(self, global_state: StateDict, updates: Sequence[ClientUpdate], context: ServerContext) -> StateDict:
        """Distils the ensemble of the updates' models into the aggregated student; returns the best student.

        Raises:
            ValueError: no client template in ``context``, a client with personal parameters, or no server data.
        """
        if not updates:
            return global_state
        template = context.client_template
        if template is None:
            raise ValueError("FedDF needs ServerContext.client_template to build the clients' models")
        if isinstance(template, FederationMixin) and template.personal_keys():
            raise ValueError(
                f"FedDF distils the whole model, but {type(template).__name__} keeps personal parameters "
                f"({template.personal_keys()[:3]}...); use a client without personal parameters"
            )
        seed = int(getattr(context.datamodule, "seed", 0))
        device = self._device(context)
        train_x, val_x = self.server_images(context.datamodule)
        states = [u.state for u in updates]
        teacher_train = ensemble_logits(
            template, states, train_x, base_state=global_state, batch_size=self.eval_batch_size, device=device
        )
        teacher_val = ensemble_logits(
            template, states, val_x, base_state=global_state, batch_size=self.eval_batch_size, device=device
        )
        self.last_teacher = teacher_train

        student = copy.deepcopy(template)
        student.load_state_dict({**_cpu_state(student), **global_state}, strict=True)
        student.to(device)
        before = self._fidelity(student, val_x, teacher_val, "feddf_before_", device)
        initial_kl = before["feddf_before_fidelity_kl"]

        module = EnsembleDistillation(student, self.temperature, self.lr, self.max_steps, self.weight_decay)
        module.train()  # Lightning keeps the modes it finds: the student trains in train mode (BatchNorm batch stats)
        keep = KeepBestState(student, "val_kl", initial_kl, patience_steps=self.patience_steps)
        callbacks: list[Callback] = [keep]
        generator = torch_generator(seed, "feddf", "batches", context.round)
        train_loader = shuffled_loader(TensorBatchDataset(train_x, teacher_train), self.batch_size, generator)
        val_loader = sequential_loader(TensorBatchDataset(val_x, teacher_val), self.eval_batch_size)

        with torch.random.fork_rng(devices=[]), quiet_lightning(), cached_callback_discovery():
            torch.manual_seed(derive_seed(seed, "feddf", "fit", context.round))
            trainer = L.Trainer(**self._trainer_kwargs(context, callbacks))
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        steps = int(trainer.global_step)
        student.to(device)
        final = self._fidelity(student, val_x, teacher_val, "feddf_final_", device)
        if not keep.history or keep.history[-1][0] != steps:  # the last steps were never validated
            keep.offer(final["feddf_final_fidelity_kl"], steps)
        self.last_validation = [(0, initial_kl), *keep.history]
        student.load_state_dict(keep.best_state)
        student.to(device)
        after = self._fidelity(student, val_x, teacher_val, "feddf_after_", device)
        student.to("cpu")
        self.last_metrics = {
            **before,
            **after,
            "feddf_steps": float(steps),
            "feddf_best_step": float(keep.best_step),
            "feddf_server_images": float(train_x.shape[0]),
        }
        context.log(self.last_metrics)
        best = keep.best_state
        return {key: best[key].to(global_state[key].dtype) for key in global_state}

    def __repr__(self) -> str:
        return (
            f"FedDF(server_data={self.server_data!r}, max_steps={self.max_steps}, "
            f"lr={self.lr}, temperature={self.temperature})"
        )
