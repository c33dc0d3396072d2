"""The FederatedLoop: rounds of client training driven by Lightning Trainers, aggregated by a strategy.

Each round: sample clients (a seeded stream) → the strategy configures what each receives → for each
sampled client, restore its personal state, receive the global state, ``Trainer.fit`` on its data,
collect its typed update, store its personal state off the device → screen the updates (structure,
finiteness) → aggregate (and optionally train on the server) → evaluate the global and every client's
personalized model → log → checkpoint. A resumed run replays the same random streams and reaches the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import importlib.metadata
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_fed.client.module import FederationMixin
from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import (
    LAST_NAME,
    load_checkpoint,
    prune_checkpoints,
    round_checkpoint_path,
    save_checkpoint,
)
from lit_fed.loop.reporting import plot_accuracy, render_summary, summarize
from lit_fed.loop.runner import ClientEvaluation, ClientRunner, SequentialRunner
from lit_fed.loop.state_store import ClientStateStore, InMemoryStateStore
from lit_fed.metrics.communication import CommunicationMeter
from lit_fed.metrics.evaluation import (
    PersonalizedAccuracy,
    accumulate_accuracy,
    group_accuracy,
    new_accuracy,
    new_class_stats,
    pool_client_metrics,
    shot_groups,
)
from lit_fed.metrics.features import embed_dataset, feature_statistics
from lit_fed.server.sampling import ClientSampler
from lit_fed.server.strategy import FedAvg, ServerContext, Strategy
from lit_fed.server.validation import screen_updates
from lit_fed.utils.seeding import derive_seed

log = logging.getLogger("lit_fed")

CLIENT_TRAINER_DEFAULTS: dict[str, Any] = {
    "barebones": True,  # Lightning's raw-speed mode: no per-step logging bookkeeping (overridable)
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}
"""Per-client Trainer settings the loop owns (logging, checkpoints and progress are per round, not per fit)."""


@dataclass
class FederatedResult:
    """What a finished run returns.

    Attributes:
        history: One dict of scalar metrics per round.
        summary: Last and best of each accuracy metric.
        global_state: The final global state.
        run_dir: Where logs, plots and checkpoints were written.
        last_checkpoint: Path of the last round checkpoint (``None`` if checkpointing was off).
    """

    history: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    global_state: StateDict
    run_dir: Path
    last_checkpoint: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)


_quiet_depth = 0


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silences Lightning's per-fit banners (device info, 'max_epochs reached') during client fits.

    Re-entrant: nested uses cost nothing (``Logger.setLevel`` clears every logger's cache, too slow to repeat
    per client fit), so the loop enters it once per run and each fit enters it again cheaply.
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


def mean_client_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """The mean over clients of every scalar metric the updates report (``train_loss``, fidelity metrics, ...)."""
    values: dict[str, list[float]] = {}
    for update in updates:
        for key, value in update.metrics.items():
            values.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in values.items()}


@functools.cache
def _has_callback_factories(group: str) -> bool:
    return bool(importlib.metadata.entry_points(group=group))


@contextlib.contextmanager
def cached_callback_discovery() -> Iterator[None]:
    """Skips Lightning's per-Trainer scan of every installed package's entry points when none registers callbacks.

    ``Trainer.__init__`` looks up callback factories in package metadata each time (~10 ms here), which would be
    paid once per client per round. The answer does not change within a process, so it is looked up once; if a
    package does register factories, Lightning's own loader still runs for every Trainer.
    """
    from lightning.pytorch.trainer.connectors import callback_connector

    original = callback_connector._load_external_callbacks

    def load(group: str) -> list[Any]:
        return original(group) if _has_callback_factories(group) else []

    callback_connector._load_external_callbacks = load
    try:
        yield
    finally:
        callback_connector._load_external_callbacks = original


def _default_loggers(run_dir: Path, version: str = "") -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(run_dir, name="logs", version=version)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=version, default_hp_metric=False))
    except ImportError:
        pass
    return loggers


class FederatedLoop:
    """Runs federated rounds over a client module, a federated datamodule and a server strategy.

    Args:
        client: The client module (a :class:`~lit_fed.client.module.FederatedClient` or a LightningModule made
            federated by :func:`~lit_fed.client.module.federate`). One instance is the worker trained for every
            client in turn; per-client state lives in ``state_store``.
        datamodule: A :class:`~lit_fed.data.datamodule.FederatedDataModule` (or anything with its client API).
        strategy: The server strategy (FedAvg by default).
        rounds: Number of communication rounds.
        client_fraction: Share of clients sampled per round, in (0, 1].
        client_dropout: Probability that a sampled client fails to report (skipped, logged).
        local_epochs: Local epochs per round (the client Trainer's ``max_epochs``).
        local_steps: If set, local optimizer steps per round instead of epochs (``max_steps``).
        eval_every: Evaluate every this many rounds (and always after the last round); 0 never evaluates.
        personalized_eval: Evaluate every client's personalized model on its own test split.
        seed: The run seed; every random stream derives from it.
        trainer_kwargs: Per-client ``lightning.Trainer`` settings passed through untouched (``precision``,
            ``accelerator``, ``devices``, ``strategy``, ``gradient_clip_val``, ``accumulate_grad_batches``, ...).
        state_store: Where personal client state lives (in memory on CPU by default; or on disk).
        run_dir: Directory for logs, plots and checkpoints.
        checkpoint_every: Write a round checkpoint every this many rounds (0 disables).
        keep_checkpoints: How many round checkpoints to keep besides ``last.ckpt``.
        loggers: Lightning loggers for round metrics; ``None`` → CSV (+ TensorBoard when installed); ``[]`` → none.
        callbacks: Round-level :class:`~lit_fed.loop.callbacks.LoopCallback` hooks.
        progress: Show a rich progress bar over rounds.
        shot_thresholds: ``(few_below, many_above)`` training-sample counts per class that define few-, medium- and
            many-shot classes; when the training pool's classes fall into more than one group (long-tailed data),
            evaluation also reports ``global_acc_many/medium/few`` and ``personal_acc_many/medium/few``.
        runner: Where the clients' local training and personalized evaluation run (this process, one client after
            another, by default; a Flower backend installs a runner that sends them to Flower nodes).
    """

    def __init__(
        self,
        client: L.LightningModule,
        datamodule: Any,
        strategy: Strategy | None = None,
        *,
        rounds: int = 10,
        client_fraction: float = 1.0,
        client_dropout: float = 0.0,
        local_epochs: int = 1,
        local_steps: int | None = None,
        eval_every: int = 1,
        personalized_eval: bool = True,
        seed: int = 0,
        trainer_kwargs: dict[str, Any] | None = None,
        state_store: ClientStateStore | None = None,
        run_dir: str | Path = "runs/lit_fed",
        checkpoint_every: int = 1,
        keep_checkpoints: int = 2,
        loggers: Sequence[Any] | None = None,
        callbacks: Sequence[LoopCallback] = (),
        progress: bool = True,
        shot_thresholds: tuple[int, int] = (20, 100),
        runner: ClientRunner | None = None,
    ) -> None:
        if not isinstance(client, FederationMixin):
            raise TypeError(
                f"FederatedLoop: {type(client).__name__} is not a federated client; use a lit_fed client module "
                "or wrap your LightningModule with lit_fed.federate(module)"
            )
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if local_steps is None and local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
        if local_steps is not None and local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {local_steps}")
        if eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 disables evaluation), got {eval_every}")
        self.client = client
        self.datamodule = datamodule
        self.strategy = strategy if strategy is not None else FedAvg()
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.eval_every = eval_every
        self.personalized_eval = personalized_eval
        self.seed = seed
        self.state_store = state_store if state_store is not None else InMemoryStateStore()
        self.run_dir = Path(run_dir)
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.callbacks = list(callbacks)
        self.progress = progress
        self.shot_thresholds = shot_thresholds
        self.shot_groups: dict[str, torch.Tensor] | None = None
        self._loggers = loggers
        self.client_fraction = client_fraction
        self.client_dropout = client_dropout
        self.trainer_kwargs = dict(trainer_kwargs or {})
        clashes = sorted(set(self.trainer_kwargs) & {"max_epochs", "max_steps"})
        if clashes:
            raise ValueError(f"set local_epochs/local_steps instead of the client Trainer's {clashes}")
        self.history: list[dict[str, Any]] = []
        self.last_personalized: PersonalizedAccuracy | None = None
        self.comm = CommunicationMeter()
        self.global_state: StateDict = {}
        self.round = 0
        self.trained_rounds = 0
        """Rounds whose client training is done (a client's node-kept state versions below it count)."""
        self._kept_bounds: collections.deque[dict[int, int]] = collections.deque(maxlen=max(1, keep_checkpoints))
        self.eval_device = self._resolve_eval_device()
        self.runner: ClientRunner = runner if runner is not None else SequentialRunner()

    # -- setup -----------------------------------------------------------------------------------------
    def _resolve_eval_device(self) -> torch.device:
        accelerator = str(self.trainer_kwargs.get("accelerator", "auto"))
        if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def client_trainer_kwargs(self) -> dict[str, Any]:
        """The settings of every client Trainer: the user's pass-through plus the loop's own."""
        kwargs = {**CLIENT_TRAINER_DEFAULTS, **self.trainer_kwargs}
        for key in ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary"):
            kwargs[key] = CLIENT_TRAINER_DEFAULTS[key]
        if self.local_steps is not None:
            kwargs.update(max_steps=self.local_steps, max_epochs=-1)
        else:
            kwargs.update(max_epochs=self.local_epochs)
        return kwargs

    def setup(self) -> None:
        """Prepares a run: data, sampler, initial global and personal state, output directory."""
        self.datamodule.setup("fit")
        self.num_clients = int(self.datamodule.num_clients)
        self.sampler = ClientSampler(self.num_clients, self.client_fraction, self.seed, self.client_dropout)
        shared = self.client.shared_keys()
        if not shared:
            raise ValueError("the client shares no parameters: every key is personal, nothing to aggregate")
        self.global_state = self.client.shared_state()
        self.initial_personal = self.client.personal_state()
        if hasattr(self.datamodule, "client_label_counts"):
            class_counts = sum(self.datamodule.client_label_counts(c) for c in range(self.num_clients))
            self.shot_groups = shot_groups(torch.as_tensor(class_counts), *self.shot_thresholds)
        self._client_kwargs = self.client_trainer_kwargs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.loggers: list[Any] = [] if self._loggers is None else list(self._loggers)
        self.round = self.trained_rounds = 0
        self.strategy.bind(self)
        self._server_personalizes = bool(self.strategy.personal_overlay(0))  # hypernetworks
        self._needs_per_client_eval = (
            bool(self.initial_personal)
            or type(self.client).personalize is not FederationMixin.personalize
            or self._server_personalizes
        )

    # -- where clients keep their state (Flower nodes) ------------------------------------------------------
    def node_state_bound(self, client_id: int) -> int:
        """The versions of ``client_id``'s node-kept personal state that count now are those below this.

        Synchronous rounds version a client's state by the round it trained in, so this is :attr:`trained_rounds`;
        asynchronous mode versions it by dispatch index. Used for evaluation (the newest version below it) and
        when a run begins (the versions from it on are forgotten).
        """
        return self.trained_rounds

    def node_state_keep_from(self, client_id: int) -> int:
        """The lowest :meth:`node_state_bound` a resume from a kept round checkpoint would use.

        A node keeps ``client_id``'s versions from it on and the newest one below it, and may delete older ones.
        Without a kept checkpoint (none written yet, or checkpointing off) this is the current bound.
        """
        return self._kept_bounds[0][client_id] if self._kept_bounds else self.node_state_bound(client_id)

    # -- one client --------------------------------------------------------------------------------------
    def train_client(self, message: ServerMessage) -> ClientUpdate:
        """Restores a client, trains it with a Lightning Trainer, stores its personal state, returns its update."""
        cid, rnd = message.client_id, message.round
        self.client.load_personal_state(self.state_store.get(cid) or self.initial_personal)
        self.client.receive_global(message)
        seed_torch(derive_seed(self.seed, "fit", rnd, cid))
        dataloader = self.datamodule.client_train_dataloader(cid, rnd)
        for callback in self.callbacks:
            dataloader = callback.client_dataloader(self, cid, rnd, dataloader)
        with quiet_lightning(), cached_callback_discovery():
            limits = self.client.fit_limits(self.local_epochs, self.local_steps)
            trainer = L.Trainer(**{**self._client_kwargs, **limits})
            trainer.fit(self.client, train_dataloaders=dataloader)
        update = self.client.build_update(num_samples=self.datamodule.client_num_train_samples(cid))
        for callback in self.callbacks:
            update = callback.client_update(self, update, message)
        personal = self.client.personal_state()
        if personal:
            self.state_store.put(cid, personal, rnd)
        return update

    def prepare_message(self, message: ServerMessage) -> ServerMessage:
        """What leaves the server for ``message.client_id``: the callbacks' version of it, counted as downloaded."""
        for callback in self.callbacks:
            message = callback.server_message(self, message)
        self.comm.download(message)
        return message

    def receive_update(self, update: ClientUpdate) -> ClientUpdate:
        """Counts an arriving client update as uploaded, shows it to the callbacks' ``update_received``; returns it."""
        self.comm.upload(update)
        for callback in self.callbacks:
            callback.update_received(self, update)
        return update

    # -- evaluation --------------------------------------------------------------------------------------
    def load_client(self, client_id: int | None, overlay: StateDict | None = None) -> None:
        """Loads ``client_id``'s personalized model into the worker module.

        That is its stored personal state (else the initial one), the strategy's
        :meth:`~lit_fed.server.strategy.Strategy.personal_overlay` for it (or ``overlay``, as a Flower node receives
        it with the evaluate message), and the global state. ``None`` loads the initial personal state (the "global
        model" of split-personalized methods).
        """
        if client_id is None:
            personal = self.initial_personal
        else:
            personal = self.state_store.get(client_id) or self.initial_personal
            overlay = self.strategy.personal_overlay(client_id) if overlay is None else overlay
            if overlay:
                personal = {**personal, **overlay}
        self.client.load_personal_state(personal)
        self.client.load_state(self.global_state, what="global state")

    def _overlaid(self, overlays: Mapping[int, StateDict] | None) -> bool:
        """Whether a personal overlay applies: any of ``overlays`` (sent to a node), else the strategy's own."""
        return any(overlays.values()) if overlays is not None else self._server_personalizes

    def _loaded_clients(
        self, client_ids: Sequence[int], overlays: Mapping[int, StateDict] | None, per_client: bool
    ) -> Iterator[int]:
        """Yields each client id with its model in the worker (the global model once, when not ``per_client``)."""
        if not per_client:
            self.load_client(None)
        for cid in client_ids:
            if per_client:
                self.load_client(cid, None if overlays is None else overlays.get(cid, {}))
            yield cid

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[torch.nn.Module]:
        """The worker module on the evaluation device in eval mode; back on CPU in its previous mode afterwards."""
        module = self.client
        was_training = module.training
        module.to(self.eval_device)
        module.eval()
        try:
            yield module
        finally:
            module.to("cpu")
            module.train(was_training)

    def evaluate_clients(
        self, client_ids: Sequence[int], overlays: Mapping[int, StateDict] | None = None
    ) -> list[ClientEvaluation]:
        """Each client's personalized model (:meth:`load_client`, then ``personalize``) on its own test split.

        The same code runs in every backend: the sequential runner calls it for all clients, a Flower ClientApp
        for the client it hosts, with the personal overlays the server sent (``overlays``; default: the strategy's).
        """
        num_classes = int(self.datamodule.num_classes)
        per_client = self._needs_per_client_eval or self._overlaid(overlays)
        results = []
        with self._eval_mode() as module:
            # without personalization every client evaluates the global model on its own test split
            for cid in self._loaded_clients(client_ids, overlays, per_client):
                if per_client:
                    module.personalize(self.datamodule.client_train_dataloader(cid, self.round))
                    module.eval()
                stats = new_class_stats(num_classes)
                accuracy = accumulate_accuracy(
                    new_accuracy(num_classes),
                    module.predict_logits,
                    self.datamodule.client_test_dataloader(cid),
                    self.eval_device,
                    also=[stats],
                )
                results.append(ClientEvaluation(client_id=cid, accuracy=accuracy, class_stats=stats))
        return results

    def client_feature_statistics(
        self, client_ids: Sequence[int], round: int, overlays: Mapping[int, StateDict] | None = None
    ) -> list[ClientUpdate]:
        """Each client's per-class feature statistics on its training split, in ``ClientUpdate.feature_stats``.

        CCVR's client step (Luo et al. 2021, §4; :func:`~lit_fed.metrics.features.feature_statistics`), with the
        model :meth:`load_client` gives the client (the global model when no client keeps personal state). A
        client without training samples yields no update. Runs where the client lives: the sequential runner
        calls it for all clients, a Flower ClientApp for the client it hosts.
        """
        num_classes = int(self.datamodule.num_classes)
        per_client = bool(self.initial_personal) or self._overlaid(overlays)
        updates = []
        with self._eval_mode() as module, torch.no_grad():
            for cid in self._loaded_clients(client_ids, overlays, per_client):
                dataloader = self.datamodule.client_train_dataloader(cid, round)
                features, labels = embed_dataset(module, dataloader, self.eval_device)
                if features.numel() == 0:
                    continue
                stats = feature_statistics(features, labels, num_classes, dtype=torch.float32)
                update = ClientUpdate(cid, round, state={}, num_samples=int(labels.numel()), feature_stats=stats)
                updates.append(update)
        return updates

    def evaluate(self) -> dict[str, float]:
        """Global accuracy on the global test set and personalized accuracy on every client's test split."""
        num_classes = int(self.datamodule.num_classes)
        metrics: dict[str, float] = {}
        with self._eval_mode() as module:
            self.load_client(None)
            global_stats = new_class_stats(num_classes)
            glob = accumulate_accuracy(
                new_accuracy(num_classes),
                module.global_logits,
                self.datamodule.global_test_dataloader(),
                self.eval_device,
                also=[global_stats],
            )
        metrics["global_acc"] = float(glob.compute())
        grouped = self.shot_groups is not None and len(self.shot_groups) > 1
        if grouped:
            metrics.update(group_accuracy(global_stats, self.shot_groups, "global"))  # type: ignore[arg-type]
        if self.personalized_eval:
            evaluations = self.runner.evaluate(self, range(self.num_clients))
            personal_stats = new_class_stats(num_classes)
            for evaluation in evaluations:
                personal_stats.merge_state(evaluation.class_stats)
            self.last_personalized = pool_client_metrics({e.client_id: e.accuracy for e in evaluations}, num_classes)
            metrics.update(self.last_personalized.as_metrics())
            if grouped:
                metrics.update(group_accuracy(personal_stats, self.shot_groups, "personal"))  # type: ignore[arg-type]
        return metrics

    # -- checkpoints -------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_clients": self.num_clients, "strategy": type(self.strategy).__name__}

    def checkpoint_payload(self, completed_round: int) -> dict[str, Any]:
        """Everything needed to resume after ``completed_round``."""
        return {
            "round": completed_round,
            "identity": self._identity(),
            "global_state": self.global_state,
            "initial_personal": self.initial_personal,
            "strategy": self.strategy.state_dict(),
            "store": self.state_store.state_dict(),
            "comm": self.comm.state_dict(),
            "history": self.history,
            "callbacks": [callback.state_dict() for callback in self.callbacks],  # stateless ones save {}
        }

    def save_checkpoint(self, completed_round: int) -> Path:
        """Writes ``round_<r>.ckpt`` and ``last.ckpt``; returns the latter."""
        self._kept_bounds.append({cid: self.node_state_bound(cid) for cid in range(self.num_clients)})
        payload = self.checkpoint_payload(completed_round)
        save_checkpoint(payload, round_checkpoint_path(self.checkpoint_dir, completed_round))
        last = self.checkpoint_dir / LAST_NAME
        save_checkpoint(payload, last)
        prune_checkpoints(self.checkpoint_dir, self.keep_checkpoints)
        return last

    def restore(self, path: str | Path) -> int:
        """Restores a round checkpoint; returns the first round still to run."""
        payload = load_checkpoint(path)
        identity = payload["identity"]
        if identity != self._identity():
            raise ValueError(
                f"checkpoint {path} belongs to a different run: it has {identity}, this run has {self._identity()}"
            )
        missing = set(self.global_state) ^ set(payload["global_state"])
        if missing:
            raise ValueError(f"checkpoint {path}: global state keys differ from the client's: {sorted(missing)[:5]}")
        self.global_state = payload["global_state"]
        self.initial_personal = payload["initial_personal"]
        self.strategy.load_state_dict(payload["strategy"])
        self.state_store.load_state_dict(payload["store"])
        self.comm.load_state_dict(payload["comm"])
        self.history = list(payload["history"])
        saved = [state for state in payload.get("callbacks", []) if state]
        stateful = [callback for callback in self.callbacks if callback.state_dict()]
        if len(saved) != len(stateful):
            raise ValueError(
                f"checkpoint {path} holds state for {len(saved)} loop callbacks, this run has {len(stateful)} stateful"
            )
        for callback, state in zip(stateful, saved, strict=True):
            callback.load_state_dict(state)
        self.round = int(payload["round"])
        self.trained_rounds = self.round + 1
        return self.round + 1

    # -- logging ---------------------------------------------------------------------------------------
    def _log(self, metrics: dict[str, Any], round: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "round"}
        for logger in self.loggers:
            logger.log_metrics(scalars, step=round)
            logger.save()

    def _log_partition(self) -> None:
        """Logs the partition's summary as hyper-parameters and writes the per-client class histogram CSV."""
        if not hasattr(self.datamodule, "partition_histogram"):
            return
        histogram = self.datamodule.partition_histogram()
        lines = ["client," + ",".join(f"class_{c}" for c in range(histogram.shape[1]))]
        lines += [f"{cid}," + ",".join(str(int(v)) for v in row) for cid, row in enumerate(histogram)]
        (self.run_dir / "partition.csv").write_text("\n".join(lines) + "\n")
        summary = self.datamodule.partition_summary() if hasattr(self.datamodule, "partition_summary") else {}
        for logger in self.loggers:
            logger.log_hyperparams({f"partition/{k}": v for k, v in summary.items()})

    def _write_communication(self) -> Path:
        path = self.run_dir / "communication.csv"
        lines = ["client,bytes_down,bytes_up"]
        for cid in range(self.num_clients):
            lines.append(f"{cid},{self.comm.per_client_down.get(cid, 0)},{self.comm.per_client_up.get(cid, 0)}")
        lines.append(f"total,{self.comm.total_down},{self.comm.total_up}")
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- the run -----------------------------------------------------------------------------------------
    def run_round(self, rnd: int) -> dict[str, Any]:
        """Runs one round and returns its metrics."""
        self.round = rnd
        started = time.perf_counter()
        for callback in self.callbacks:
            callback.on_round_start(self, rnd)
        participants = self.sampler.sample(rnd)
        self.comm.start_round()
        messages = self.strategy.configure_train(rnd, participants.reporting, self.global_state)
        for cid in participants.dropped:
            log.info("round %d: client %d dropped out (did not report)", rnd, cid)
        updates = self.runner.train(self, messages)
        self.trained_rounds = rnd + 1
        accepted, rejected = screen_updates(updates, self.global_state)
        for _, reason in rejected:
            log.warning(reason)
        server_metrics: dict[str, Any] = {}
        if accepted:
            self.global_state = self.strategy.aggregate_train(rnd, accepted, self.global_state)
            context = ServerContext(
                round=rnd,
                client_template=self.client,
                datamodule=self.datamodule,
                trainer_kwargs=dict(self._client_kwargs),
                logger=server_metrics.update,
            )
            self.global_state = self.strategy.server_train(self.global_state, accepted, context)
        else:
            log.warning("round %d: no client update was accepted; the global state is unchanged", rnd)
        metrics: dict[str, Any] = {
            "round": rnd,
            "clients": len(participants.sampled),
            "dropped": len(participants.dropped),
            "rejected": len(rejected),
            **self.comm.round_metrics(),
        }
        metrics.update(mean_client_metrics(accepted))
        metrics.update(server_metrics)
        if self.eval_every and ((rnd + 1) % self.eval_every == 0 or rnd == self.rounds - 1):
            metrics.update(self.evaluate())
        metrics["round_seconds"] = time.perf_counter() - started
        return self.finish_round(rnd, metrics)

    def finish_round(self, rnd: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Lets callbacks add to the round's metrics, then records and logs them."""
        for callback in self.callbacks:
            callback.on_round_end(self, rnd, metrics)
        self.history.append(metrics)
        self._log(metrics, rnd)
        return metrics

    def run(self, resume_from: str | Path | None = None) -> FederatedResult:
        """Runs all rounds (from a round checkpoint if ``resume_from`` is given) and writes the report."""
        self.setup()
        self.strategy.initialize(copy.deepcopy(self.global_state))
        start = self.restore(resume_from) if resume_from is not None else 0
        self._kept_bounds.clear()
        if start > 0:  # the checkpoint resumed from is the oldest a later resume of this run can rely on
            self._kept_bounds.append({cid: self.node_state_bound(cid) for cid in range(self.num_clients)})
        self.runner.begin(self, start)
        if self._loggers is None:  # a resumed run logs into its own version: earlier rounds' logs stay intact
            self.loggers = _default_loggers(self.run_dir, version="" if start == 0 else f"resumed_at_round_{start}")
        self._log_partition()
        last_ckpt: Path | None = None
        if start > 0:
            last_ckpt = Path(resume_from)  # type: ignore[arg-type]
        with self._progress() as progress, quiet_lightning():
            task = progress.add_task("rounds", total=self.rounds, completed=start, status="")
            for rnd in range(start, self.rounds):
                metrics = self.run_round(rnd)
                if self.checkpoint_every and ((rnd + 1) % self.checkpoint_every == 0 or rnd == self.rounds - 1):
                    last_ckpt = self.save_checkpoint(rnd)
                progress.update(task, advance=1, status=self._status(metrics))
        return self._finish(last_ckpt)

    def _status(self, metrics: dict[str, Any]) -> str:
        parts = [f"{k}={100 * metrics[k]:.2f}%" for k in ("global_acc", "personal_acc") if k in metrics]
        if "train_loss" in metrics:
            parts.append(f"loss={metrics['train_loss']:.4f}")
        return " ".join(parts)

    def _progress(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        class _RoundsPerSecond(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text(f"{speed:.3f} rounds/s" if speed else "")

        return Progress(
            TextColumn("[bold]federated"),
            BarColumn(),
            MofNCompleteColumn(),
            _RoundsPerSecond(""),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not self.progress,
        )

    def _finish(self, last_ckpt: Path | None) -> FederatedResult:
        summary = summarize(self.history)
        artifacts = {
            "accuracy_plot": plot_accuracy(self.history, self.run_dir / "accuracy.png"),
            "communication": self._write_communication(),
        }
        if hasattr(self.datamodule, "plot_partition"):
            artifacts["partition_plot"] = Path(self.datamodule.plot_partition(self.run_dir / "partition.png"))
        totals = {"MB down (total)": self.comm.total_down / 1e6, "MB up (total)": self.comm.total_up / 1e6}
        if self.progress:
            from rich.console import Console

            Console().print(render_summary(summary, totals))
        for logger in self.loggers:
            logger.finalize("success")
        return FederatedResult(
            history=self.history,
            summary=summary,
            global_state=self.global_state,
            run_dir=self.run_dir,
            last_checkpoint=last_ckpt,
            artifacts=artifacts,
        )
