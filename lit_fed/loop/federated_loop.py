"""The FederatedLoop: the server's round, with the clients' work handed to a runner.

Each round: the collect-and-apply stage (synchronous: sample clients from a seeded stream → the strategy
configures their messages → the runner trains them → screen the updates → aggregate; or the asynchronous stage)
→ the strategy's and the run's server steps → evaluation of the global model and every client's model → round
callbacks (logging, progress, user hooks) → round checkpoint. A resumed run replays the same random streams and
reaches the same numbers as an uninterrupted one.

The client side lives in a :class:`~lit_fed.client.worker.ClientWorker`, reached through the loop's
:class:`~lit_fed.loop.runner.ClientRunner` (in this process by default; on Flower nodes with the Flower backends).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from lit_fed.client.codec import packed_nbytes
from lit_fed.client.module import FederationMixin
from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage, StateDict
from lit_fed.client.tasks import ClientTask
from lit_fed.client.worker import ClientWorker, resolve_device
from lit_fed.data.protocol import FederatedData
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import (
    LAST_NAME,
    loop_payload,
    prune_checkpoints,
    restore_loop,
    round_checkpoint_path,
    save_checkpoint,
)
from lit_fed.loop.compatibility import check_model_accepts_data
from lit_fed.loop.evaluation import RoundEvaluation
from lit_fed.loop.fingerprint import run_fingerprint
from lit_fed.loop.presentation import RoundLogging, presentation_callbacks
from lit_fed.loop.reporting import summarize
from lit_fed.loop.result import FederatedResult, mean_client_metrics
from lit_fed.loop.rounds import RoundStage, SynchronousRounds
from lit_fed.loop.run_lock import run_directory_lock
from lit_fed.loop.runner import ClientRunner, SequentialRunner
from lit_fed.loop.settings import FederationSettings
from lit_fed.loop.state_store import ClientStateStore
from lit_fed.loop.timing import RoundTimer
from lit_fed.metrics.communication import CommunicationMeter
from lit_fed.metrics.evaluation import data_shot_groups
from lit_fed.server.fedavg import FedAvg
from lit_fed.server.strategy import ServerContext, ServerStep, Strategy
from lit_fed.utils.lightning import quiet_lightning

log = logging.getLogger("lit_fed")


def _unique_keys(kind: str, objects: Sequence[Any]) -> None:
    keys = [obj.state_key for obj in objects]
    doubles = sorted({k for k in keys if keys.count(k) > 1})
    if doubles:
        raise ValueError(f"two {kind} share the state_key {doubles}: give one of them another state_key")


class FederatedLoop:
    """Runs federated rounds over a client module, federated data and a server strategy.

    Args:
        client: The client module (a :class:`~lit_fed.client.module.FederatedClient` or a LightningModule made
            federated by :func:`~lit_fed.client.module.federate`): the server's model (global evaluation, server
            steps) and, in this process, the worker module every client is trained with in turn.
        datamodule: The clients' data (:class:`~lit_fed.data.protocol.FederatedData`).
        strategy: The server strategy (FedAvg by default).
        settings: The run's settings; ``None``: :class:`~lit_fed.loop.settings.FederationSettings` from
            ``**settings_kwargs`` (e.g. ``rounds=5, run_dir="runs/x"``).
        callbacks: Round-level :class:`~lit_fed.loop.callbacks.LoopCallback` hooks (before the loop's own logging,
            progress and report callbacks, so they see and may extend every round's metrics).
        server_steps: Server steps run after the strategy's own, in order (distillation, calibration, ...).
        state_store: Where personal client state lives in this process (in memory by default; or on disk).
        loggers: Lightning loggers for round metrics; ``None`` → CSV (+ TensorBoard when installed); ``[]`` → none.
        runner: Where the clients' work runs (default: a :class:`~lit_fed.loop.runner.SequentialRunner` over a
            :class:`~lit_fed.client.worker.ClientWorker` in this process).
        report_callbacks: Server-side callbacks run after the loop's own (never sent to clients: they may hold
            what does not pickle).
        **settings_kwargs: :class:`FederationSettings` fields, when ``settings`` is not given.
    """

    def __init__(
        self,
        client: L.LightningModule,
        datamodule: FederatedData,
        strategy: Strategy | None = None,
        settings: FederationSettings | None = None,
        *,
        callbacks: Sequence[LoopCallback] = (),
        server_steps: Sequence[ServerStep] = (),
        state_store: ClientStateStore | None = None,
        loggers: Sequence[Any] | None = None,
        runner: ClientRunner | None = None,
        report_callbacks: Sequence[LoopCallback] = (),
        **settings_kwargs: Any,
    ) -> None:
        if not isinstance(client, FederationMixin):
            raise TypeError(
                f"FederatedLoop: {type(client).__name__} is not a federated client; use a lit_fed client module "
                "or wrap your LightningModule with lit_fed.federate(module)"
            )
        if settings is not None and settings_kwargs:
            raise TypeError(f"FederatedLoop: pass settings or {sorted(settings_kwargs)}, not both")
        self.settings = settings if settings is not None else FederationSettings(**settings_kwargs)
        self.client = client
        self.datamodule = datamodule
        self.strategy = strategy if strategy is not None else FedAvg()
        self.steps = [*self.strategy.server_steps(), *server_steps]
        self.callbacks = list(callbacks)
        self._presentation = [*presentation_callbacks(loggers, self.settings.progress), *report_callbacks]
        self.runner: ClientRunner = (
            runner
            if runner is not None
            else SequentialRunner(
                ClientWorker(client, datamodule, self.settings, store=state_store, callbacks=self.callbacks)
            )
        )
        self.stage: RoundStage = self._stage()
        self.comm = CommunicationMeter()
        self.evaluation = RoundEvaluation(self)
        self.timer = RoundTimer()
        self.eval_device = resolve_device(self.settings.trainer_kwargs)
        self.history: list[dict[str, Any]] = []
        self.global_state: StateDict = {}
        self.round = 0
        self.last_checkpoint: Path | None = None
        """The newest round checkpoint written or resumed from (``None``: none yet)."""
        self._server_metrics: dict[str, Any] = {}

    def _stage(self) -> RoundStage:
        if self.settings.asynchronous is None:
            return SynchronousRounds()
        from lit_fed.loop.asynchronous import AsynchronousRounds

        return AsynchronousRounds(self.settings.asynchronous)

    @property
    def all_callbacks(self) -> list[LoopCallback]:
        """The user's callbacks, then the loop's logging, report and progress callbacks."""
        return [*self.callbacks, *self._presentation]

    @property
    def loggers(self) -> list[Any]:
        """The Lightning loggers the round metrics go to (set when the run starts)."""
        return [logger for c in self._presentation if isinstance(c, RoundLogging) for logger in c.loggers]

    @property
    def seed(self) -> int:
        """The run seed."""
        return self.settings.seed

    @property
    def rounds(self) -> int:
        """The run's number of rounds."""
        return self.settings.rounds

    @property
    def run_dir(self) -> Path:
        """The run's output directory."""
        return self.settings.run_dir

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Prepares a run: data, initial global and personal state, server context, strategy, steps, stage."""
        settings = self.settings
        self.datamodule.setup("fit")
        self.num_clients = int(self.datamodule.num_clients)
        check_model_accepts_data(self.client, self.datamodule)
        self.global_state = self.client.shared_state()
        self.initial_personal = self.client.personal_state()
        self.shot_groups = data_shot_groups(self.datamodule, self.num_clients, *settings.shot_thresholds)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = settings.run_dir / "checkpoints"
        _unique_keys("loop callbacks", [c for c in self.callbacks if c.state_dict()])
        _unique_keys("server steps", self.steps)
        self.round = 0
        self.context = ServerContext(
            client_template=self.client,
            datamodule=self.datamodule,
            num_clients=self.num_clients,
            seed=settings.seed,
            rounds=settings.rounds,
            trainer_kwargs=settings.client_trainer_kwargs(),
            eval_device=self.eval_device,
            initial_personal=self.initial_personal,
            log=self._server_metrics.update,
            run_tasks=self.run_tasks,
            evaluate=self.evaluation,
            model_messages=lambda ids, state: self.strategy.configure_evaluate(self.round, ids, state),
        )
        self.strategy.bind(self.context)
        for step in self.steps:
            step.bind(self.context)
        self.stage.setup(self)
        self.fingerprint = run_fingerprint(self)

    # -- what crosses between server and clients ----------------------------------------------------------
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

    def run_tasks(self, tasks: Sequence[ClientTask]) -> list[Payload | None]:
        """Each method task's answer from its client (through the runner); the answers count as uploaded bytes."""
        answers = self.runner.run_tasks(self, tasks)
        for task, answer in zip(tasks, answers, strict=True):
            if answer is not None:
                self.comm.upload_nbytes(task.client_id, packed_nbytes(answer))
        return answers

    def evaluate(self) -> dict[str, float]:
        """Global accuracy on the global test set and personalized accuracy on every client's test split."""
        return self.evaluation(self.global_state)

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_payload(self, completed_round: int) -> dict[str, Any]:
        """Everything needed to resume after ``completed_round`` (:func:`~lit_fed.loop.checkpoint.loop_payload`)."""
        return loop_payload(self, completed_round)

    def save_checkpoint(self, completed_round: int) -> Path:
        """Writes ``round_<r>.ckpt`` and ``last.ckpt``; returns the latter."""
        payload = self.checkpoint_payload(completed_round)
        save_checkpoint(payload, round_checkpoint_path(self.checkpoint_dir, completed_round))
        last = self.checkpoint_dir / LAST_NAME
        save_checkpoint(payload, last)
        prune_checkpoints(self.checkpoint_dir, self.settings.keep_checkpoints)
        self.runner.on_checkpoint(self)
        self.last_checkpoint = last
        return last

    def restore(self, path: str | Path, evaluation: bool = False) -> int:
        """Restores a round checkpoint into a set-up loop; returns the first round still to run.

        ``evaluation=True``: for validate/test, the training-only settings may differ.

        Raises:
            CheckpointError: an unreadable or foreign file.
            ValueError: a checkpoint of a run with other settings (the differences listed), unless
                ``settings.allow_config_change``.
        """
        return restore_loop(self, path, evaluation)

    # -- the run -----------------------------------------------------------------------------------------
    def run_round(self, rnd: int) -> dict[str, Any]:
        """Runs one round (and writes its checkpoint when one is due) and returns its metrics.

        The metrics hold the round's seconds per phase (:data:`~lit_fed.loop.timing.TIMING_KEYS`). The loop
        callbacks see the round before its checkpoint is written (their state is part of it); the presentation
        callbacks (logging, progress) after it, with ``checkpoint_seconds`` (which the round's own checkpoint
        therefore lacks; the next one has it).
        """
        self.round = self.context.round = rnd
        started = time.perf_counter()
        for callback in self.callbacks:
            callback.on_round_start(self, rnd)
        self.comm.start_round()
        self._server_metrics.clear()
        self.evaluation.open_round()
        self.timer.take("aggregate")
        collect_start = time.perf_counter()
        collected = self.stage.collect(self, rnd)
        steps_start = time.perf_counter()
        in_stage = self.timer.take("aggregate")
        state = collected.global_state
        if collected.accepted:
            for step in self.steps:
                state = step.run(state, collected.accepted, self.context)
        self.global_state = state
        metrics: dict[str, Any] = {"round": rnd + 1, **collected.metrics, **self.comm.round_metrics()}
        metrics.update(mean_client_metrics(collected.accepted))
        metrics.update(self._server_metrics)
        steps_end = time.perf_counter()
        evaluate_seconds = 0.0
        if self.settings.evaluates(rnd):
            metrics.update(self.evaluate())
            evaluate_seconds = time.perf_counter() - steps_end
        metrics["round_seconds"] = time.perf_counter() - started
        metrics["train_seconds"] = max(steps_start - collect_start - in_stage, 0.0)
        metrics["aggregate_seconds"] = in_stage + (steps_end - steps_start)
        metrics["evaluate_seconds"] = evaluate_seconds
        self.evaluation.forget()
        for callback in self.callbacks:
            callback.on_round_end(self, rnd, metrics)
        self.history.append(metrics)
        if self.settings.checkpoints(rnd):
            checkpoint_start = time.perf_counter()
            self.save_checkpoint(rnd)
            metrics["checkpoint_seconds"] = time.perf_counter() - checkpoint_start  # not in its own checkpoint
        else:
            metrics["checkpoint_seconds"] = 0.0
        for callback in self._presentation:
            callback.on_round_end(self, rnd, metrics)
        return metrics

    def run(self, resume_from: str | Path | None = None) -> FederatedResult:
        """Runs all rounds (from a round checkpoint if ``resume_from`` is given) and writes the report.

        Raises:
            RunDirectoryInUse: another live run holds the run directory.
            ValueError: the checkpoint is of another run, or already at or past ``rounds``.
        """
        with run_directory_lock(self.settings.run_dir):
            self.setup()
            self.strategy.initialize(copy.deepcopy(self.global_state))
            start = self.restore(resume_from) if resume_from is not None else 0
            if start >= self.settings.rounds:
                raise ValueError(
                    f"the checkpoint {self.last_checkpoint} has completed {start} rounds; rounds={self.rounds} leaves "
                    f"nothing to run (ask for more rounds, e.g. --trainer.rounds {start + 1})"
                )
            try:
                return self._run_rounds(start)
            finally:
                for callback in self.all_callbacks:
                    callback.teardown(self)

    def _run_rounds(self, start: int) -> FederatedResult:
        self.runner.begin(self, start)
        for callback in self.all_callbacks:
            callback.on_run_start(self, start)
        with quiet_lightning():
            for rnd in range(start, self.settings.rounds):
                self.run_round(rnd)
        result = FederatedResult(
            history=self.history,
            summary=summarize(self.history, self.evaluation.summary_keys),
            global_state=self.global_state,
            run_dir=self.settings.run_dir,
            last_checkpoint=self.last_checkpoint,
        )
        self.stage.finish(self, result)
        for callback in self.all_callbacks:
            callback.on_run_end(self, result)
        return result

    def __repr__(self) -> str:
        return f"FederatedLoop(strategy={self.strategy!r}, steps={self.steps!r}, settings={self.settings!r})"
