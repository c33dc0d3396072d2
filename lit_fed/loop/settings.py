"""The settings of a federated run, in one object shared by the loop, the client worker and every backend."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_fed.loop.asynchronous import Asynchronous

CLIENT_TRAINER_DEFAULTS: dict[str, Any] = {
    "devices": 1,  # one device per client fit; "auto" would take every GPU of the machine (see _refuse_multi_device)
    "barebones": True,  # Lightning's raw-speed mode: no per-step logging bookkeeping (overridable)
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}
"""Per-client Trainer settings the loop owns (logging, checkpoints and progress are per round, not per fit)."""

_LOOP_OWNED = ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary")


def _refuse_multi_device(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse several devices per client fit (DDP would start a whole federation per process).

    Parallel clients (the Flower backend, one device per client) are the supported way to use several devices.
    """
    devices = trainer_kwargs.get("devices", 1)
    count = devices
    if isinstance(devices, str):  # the command line gives "2", "-1" or "0,1"
        text = devices.strip()
        count = (
            [p for p in text.split(",") if p.strip()]
            if "," in text
            else (int(text) if text.lstrip("-").isdigit() else 1)
        )
    many = (isinstance(count, int) and not isinstance(count, bool) and (count > 1 or count == -1)) or (
        isinstance(count, list | tuple) and len(count) > 1
    )
    if many or int(trainer_kwargs.get("num_nodes", 1)) > 1:
        raise ValueError(
            f"devices={devices!r}: a client's fit runs on one device (one process trains the federation's clients "
            "in turn; a multi-device strategy would start the whole federation in every process). To use several "
            "devices, train clients in parallel on the Flower backend: trainer.backend: flower-simulation with "
            "client_resources: {num_gpus: 1} (or a fraction to share a device)"
        )


@dataclass
class FederationSettings:
    """How a federated run goes: rounds, sampling, local training, evaluation, outputs.

    Attributes:
        rounds: Number of communication rounds.
        client_fraction: Share of clients sampled per round, in (0, 1].
        client_dropout: Probability that a sampled client fails to report (skipped, logged).
        local_epochs: Local epochs per round (each client Trainer's ``max_epochs``).
        local_steps: If set, local optimizer steps per round instead of epochs (``max_steps``).
        eval_every: Evaluate every this many rounds (and always after the last round); 0 never evaluates.
        personalized_eval: Evaluate every client's personalized model on its own test split.
        seed: The run seed; every random stream derives from it.
        trainer_kwargs: Per-client ``lightning.Trainer`` settings passed through untouched (``precision``,
            ``accelerator``, ``devices``, ``strategy``, ``gradient_clip_val``, ``callbacks``, ...).
        run_dir: Directory for logs, plots and checkpoints.
        checkpoint_every: Write a round checkpoint every this many rounds (0 disables).
        keep_checkpoints: How many round checkpoints to keep besides ``last.ckpt``.
        progress: Show the rounds progress bar and the final table.
        shot_thresholds: ``(few_below, many_above)`` training-sample counts per class defining few-, medium- and
            many-shot classes; on long-tailed data evaluation also reports accuracy per group.
        asynchronous: If set, clients report asynchronously (:mod:`lit_fed.loop.asynchronous`); a round is
            ``concurrency`` applied updates. ``None``: synchronous rounds.
        max_update_ratio: Reject an update whose change ``‖w_k − w_g‖`` exceeds this many times the median of the
            round's (and the previous round's accepted) changes, as an exploded client (counted in the round's
            ``rejected_exploded``); ``None`` disables the check. Updates with a non-finite training loss are
            rejected too.
        allow_config_change: Resume from a checkpoint written by a run with other settings (data, model, method,
            seed, ...): the differences are logged instead of refused.

    Raises:
        ValueError: A setting out of range, ``max_epochs``/``max_steps`` in ``trainer_kwargs``, or several devices
            per client (use parallel clients on the Flower backend instead).
    """

    rounds: int = 10
    client_fraction: float = 1.0
    client_dropout: float = 0.0
    local_epochs: int = 1
    local_steps: int | None = None
    eval_every: int = 1
    personalized_eval: bool = True
    seed: int = 0
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    run_dir: Path = Path("runs/lit_fed")
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    progress: bool = True
    shot_thresholds: tuple[int, int] = (20, 100)
    asynchronous: Asynchronous | None = None
    max_update_ratio: float | None = 20.0
    allow_config_change: bool = False

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.trainer_kwargs = dict(self.trainer_kwargs or {})
        self.shot_thresholds = (int(self.shot_thresholds[0]), int(self.shot_thresholds[1]))
        for name in ("rounds", "local_epochs", "eval_every", "checkpoint_every", "keep_checkpoints", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 (0 disables round checkpoints), got {self.checkpoint_every}"
            )
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if not 0.0 < self.client_fraction <= 1.0:
            raise ValueError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if not 0.0 <= self.client_dropout < 1.0:
            raise ValueError(f"client_dropout must be in [0, 1), got {self.client_dropout}")
        if self.max_update_ratio is not None and not self.max_update_ratio > 1.0:
            raise ValueError(f"max_update_ratio must be > 1 (or None to disable), got {self.max_update_ratio}")
        _refuse_multi_device(self.trainer_kwargs)
        if self.local_steps is None and self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {self.local_steps}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 disables evaluation), got {self.eval_every}")
        clashes = sorted(set(self.trainer_kwargs) & {"max_epochs", "max_steps"})
        if clashes:
            raise ValueError(f"set local_epochs/local_steps instead of the client Trainer's {clashes}")

    def replace(self, **changes: Any) -> FederationSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def evaluates(self, round: int) -> bool:
        """Whether ``round`` (0-based) ends with an evaluation: every ``eval_every`` rounds and the last one."""
        return bool(self.eval_every) and ((round + 1) % self.eval_every == 0 or round == self.rounds - 1)

    def checkpoints(self, round: int) -> bool:
        """Whether ``round`` ends with a round checkpoint: every ``checkpoint_every`` rounds and the last one."""
        return bool(self.checkpoint_every) and ((round + 1) % self.checkpoint_every == 0 or round == self.rounds - 1)

    def client_trainer_kwargs(self) -> dict[str, Any]:
        """The settings of every client Trainer: the user's pass-through plus the loop's own."""
        kwargs = {**CLIENT_TRAINER_DEFAULTS, **self.trainer_kwargs}
        for key in _LOOP_OWNED:
            kwargs[key] = CLIENT_TRAINER_DEFAULTS[key]
        if self.local_steps is not None:
            kwargs.update(max_steps=self.local_steps, max_epochs=-1)
        else:
            kwargs.update(max_epochs=self.local_epochs)
        return kwargs
