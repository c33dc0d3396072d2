"""``FederatedTrainer``: a ``lightning.Trainer`` whose ``fit`` runs federated rounds.

It adds the federation's arguments (rounds, client fraction, server strategy, ...) to Lightning's Trainer and
forwards every other Trainer option untouched to each client's Trainer — so LightningCLI shows all of them in
``--help``, ``--print_config`` and YAML, and ``lit-fed fit --config x.yaml`` is a genuine LightningCLI fit with
``model:`` the client module, ``data:`` the federated datamodule and ``trainer:`` both levels' settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from rich.console import Console

from lit_fed.loop.asynchronous import Asynchronous
from lit_fed.loop.backend import Backend, BackendName, resolve_backend
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import load_checkpoint
from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult
from lit_fed.loop.presentation import global_label
from lit_fed.loop.reporting import render_summary, summarize
from lit_fed.loop.settings import FederationSettings
from lit_fed.loop.state_store import ClientStateStore
from lit_fed.server.strategy import ServerStep, Strategy

_TRAINER_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(L.Trainer.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}
_OUTER_ONLY = ("logger", "default_root_dir")


class RunInterrupted(KeyboardInterrupt):
    """A federated run stopped by Ctrl-C (SIGINT), with where it stopped.

    Attributes:
        round: The 0-based round that was running.
        completed: How many rounds are complete in the newest checkpoint.
        checkpoint: That checkpoint (``None``: none written yet).
    """

    def __init__(self, round: int, completed: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted during round {round + 1}")
        self.round, self.completed, self.checkpoint = round, completed, checkpoint


class FederatedTrainer(L.Trainer):
    """A Trainer that federates: ``fit`` runs a :class:`~lit_fed.loop.federated_loop.FederatedLoop`.

    Args:
        rounds: Communication rounds.
        server: The server strategy (FedAvg when omitted).
        client_fraction: Share of clients sampled per round, in (0, 1].
        client_dropout: Probability that a sampled client fails to report.
        local_epochs: Local epochs per round (each client Trainer's ``max_epochs``).
        local_steps: Local optimizer steps per round instead of epochs.
        eval_every: Evaluate every this many rounds (0: never).
        personalized_eval: Evaluate every client's personalized model.
        seed: Seed of client sampling and local training streams (linked to ``seed_everything`` by the CLI).
        state_store: Where personal client state lives (in memory by default).
        run_dir: Output directory (logs, plots, checkpoints, the saved config).
        checkpoint_every: Round-checkpoint period (0 disables).
        keep_checkpoints: Round checkpoints kept besides ``last.ckpt``.
        round_callbacks: Round-level loop callbacks (a config appends to the list with ``round_callbacks+:``).
        server_steps: Server steps after the strategy's own (ensemble distillation, classifier calibration, ...;
            a config appends with ``server_steps+:``, so steps of stacked method configs compose).
        progress: Show the rounds progress bar and the final table.
        asynchronous: If set, clients report asynchronously (concurrency, latency distribution, staleness
            discount ``1/(1+τ)``; :mod:`lit_fed.loop.asynchronous`), where a round is ``concurrency`` applied
            updates. ``None`` (default): synchronous rounds.
        shot_thresholds: ``(few_below, many_above)`` per-class training counts defining few/medium/many-shot
            classes; on long-tailed data the evaluation reports accuracy per group.
        max_update_ratio: Reject an update that moves the model more than this many times the typical client's
            change, or whose training loss is not finite (``null``: the loss check only); counted as
            ``rejected_exploded``.
        allow_config_change: Resume a checkpoint written with other settings (data, model, method, seed, ...),
            logging the differences instead of refusing.
        backend: What runs the rounds: ``"sequential"`` (the in-process loop, default), ``"flower-simulation"``
            (Flower's Ray simulation engine; ``pip install "lit_fed[flower]"``) or a
            :class:`~lit_fed.loop.backend.Backend` such as ``lit_fed.flower.FlowerSimulation(client_resources=...)``.
        callbacks: Lightning callbacks for every client Trainer (local training).
        **kwargs: Any ``lightning.Trainer`` option. ``logger`` receives the round metrics; everything else
            (``precision``, ``accelerator``, ``devices``, ``strategy``, ``callbacks``, gradient clipping, ...) is
            passed to every client Trainer. Use ``local_epochs``/``local_steps``, not ``max_epochs``/``max_steps``.
    """

    def __init__(
        self,
        *,
        rounds: int = 10,
        server: Strategy | None = None,
        client_fraction: float = 1.0,
        client_dropout: float = 0.0,
        local_epochs: int = 1,
        local_steps: int | None = None,
        eval_every: int = 1,
        personalized_eval: bool = True,
        seed: int = 0,
        state_store: ClientStateStore | None = None,
        run_dir: str = "runs/lit_fed",
        checkpoint_every: int = 1,
        keep_checkpoints: int = 2,
        round_callbacks: Sequence[LoopCallback] = (),
        server_steps: Sequence[ServerStep] = (),
        progress: bool = True,
        asynchronous: Asynchronous | None = None,
        shot_thresholds: tuple[int, int] = (20, 100),
        max_update_ratio: float | None = 20.0,
        allow_config_change: bool = False,
        backend: BackendName | Backend = "sequential",
        callbacks: list[Callback] | Callback | None = None,
        **kwargs: Any,
    ) -> None:
        user_set = {k: v for k, v in kwargs.items() if k not in _TRAINER_DEFAULTS or v != _TRAINER_DEFAULTS[k]}
        for key in ("max_epochs", "max_steps"):
            if key in user_set:
                raise ValueError(f"FederatedTrainer: set local_epochs/local_steps instead of trainer.{key}")
        self.server = server
        self.state_store = state_store
        self.round_callbacks = list(round_callbacks)
        self.server_steps = list(server_steps)
        logger = user_set.pop("logger", None)
        self.round_loggers = None if logger in (None, True) else ([] if logger is False else logger)
        if self.round_loggers is not None and not isinstance(self.round_loggers, list):
            self.round_loggers = [self.round_loggers]
        client_kwargs = {k: v for k, v in user_set.items() if k not in _OUTER_ONLY}
        if callbacks:
            client_kwargs["callbacks"] = callbacks if isinstance(callbacks, list) else [callbacks]
        self.settings = FederationSettings(
            rounds=rounds,
            client_fraction=client_fraction,
            client_dropout=client_dropout,
            local_epochs=local_epochs,
            local_steps=local_steps,
            eval_every=eval_every,
            personalized_eval=personalized_eval,
            seed=seed,
            trainer_kwargs=client_kwargs,
            run_dir=run_dir,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            progress=progress,
            shot_thresholds=tuple(shot_thresholds),
            asynchronous=asynchronous,
            max_update_ratio=max_update_ratio,
            allow_config_change=allow_config_change,
        )
        self.backend = resolve_backend(backend)
        self.federated_result: FederatedResult | None = None
        self.report_callbacks: list[LoopCallback] = []
        """Server-side callbacks of the run's report (the CLI's config writer), added to every loop built."""
        # The outer Trainer trains nothing: every user setting went to the client Trainers above. ``**kwargs`` is
        # forwarded literally so that jsonargparse/LightningCLI expose all Trainer options on this class.
        kwargs.clear()
        kwargs.update(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
        )
        super().__init__(**kwargs)

    def build_loop(self, model: L.LightningModule, datamodule: Any) -> FederatedLoop:
        """The FederatedLoop this trainer's settings describe, for ``model`` and ``datamodule``."""
        return FederatedLoop(
            model,
            datamodule,
            self.server,
            self.settings,
            callbacks=self.round_callbacks,
            server_steps=self.server_steps,
            state_store=self.state_store,
            loggers=self.round_loggers,
            report_callbacks=self.report_callbacks,
        )

    def fit(  # type: ignore[override]
        self,
        model: L.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Runs the federated rounds; ``ckpt_path`` resumes from a round checkpoint (file or run directory)."""
        if datamodule is None:
            raise ValueError("FederatedTrainer.fit needs a federated datamodule (data: in the config)")
        loop = self.build_loop(model, datamodule)
        try:
            self.federated_result = self.backend.run(loop, resume_from=ckpt_path)
        except KeyboardInterrupt:
            checkpoint = loop.last_checkpoint
            completed = int(load_checkpoint(checkpoint)["round"]) + 1 if checkpoint is not None else 0
            raise RunInterrupted(loop.round, completed, checkpoint) from None

    def _evaluate_checkpoint(self, model: L.LightningModule, datamodule: Any, ckpt_path: Any) -> list[dict]:
        if datamodule is None or ckpt_path is None:
            raise ValueError("validate/test of a federated run needs data: and --ckpt_path (a round checkpoint)")
        loop = self.build_loop(model, datamodule)
        loop.setup()
        self.backend.load_client_states(loop, loop.restore(ckpt_path, evaluation=True))
        number = loop.round + 1  # the round the checkpoint completed, 1-based as in the fit table
        metrics = {"round": number, **loop.evaluate()}
        caption = f"round {number} of {loop.last_checkpoint}; global accuracy on the {global_label(loop)}"
        Console().print(render_summary(summarize([metrics]), {}, caption=caption))
        return [metrics]

    def validate(  # type: ignore[override]
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: Any = None,
        verbose: bool = True,
        datamodule: Any = None,
        weights_only: bool | None = None,
    ) -> list[dict]:
        """Evaluates a saved federated checkpoint: global and personalized accuracy."""
        return self._evaluate_checkpoint(model, datamodule, ckpt_path)  # type: ignore[arg-type]

    def test(  # type: ignore[override]
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: Any = None,
        verbose: bool = True,
        datamodule: Any = None,
        weights_only: bool | None = None,
    ) -> list[dict]:
        """Same as :meth:`validate` (the clients' test splits and the global test set)."""
        return self._evaluate_checkpoint(model, datamodule, ckpt_path)  # type: ignore[arg-type]
