"""What a run shows and writes, as loop callbacks (Lightning's progress bar and loggers are callbacks too).

* :class:`RoundLogging` — every round's scalar metrics to Lightning loggers (CSV, plus TensorBoard when installed),
  the partition's summary as hyper-parameters;
* :class:`RoundProgress` — a rich progress bar over rounds with the last accuracies;
* :class:`SummaryTable` — the last/best table, the communication totals and the mean seconds per round spent
  training, aggregating, evaluating and checkpointing, after the last round;
* :class:`RunReport` — ``accuracy.png`` (and ``metrics.png`` of a user module's own logged metrics),
  ``communication.csv``, ``partition.csv``, ``partition.png`` and ``partition.json`` (the clients' indices,
  reloadable with :class:`~lit_fed.data.SavedPartition`).

:func:`presentation_callbacks` is what a loop adds after the user's callbacks (so they see every metric).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lit_fed.data.protocol import PartitionReport
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.reporting import plot_accuracy, plot_metrics, render_summary
from lit_fed.loop.timing import mean_round_timing

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult


def global_label(loop: FederatedLoop) -> str:
    """What the global accuracy is measured on."""
    data = loop.datamodule
    return data.global_test_name if isinstance(data, PartitionReport) else "global test set"


def default_loggers(run_dir: Path, version: str = "") -> list[Any]:
    """A ``CSVLogger`` under ``run_dir/logs`` and, when ``tensorboard`` is installed, a ``TensorBoardLogger``."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(run_dir, name="logs", version=version)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=version, default_hp_metric=False))
    except ImportError:
        pass
    return loggers


def _rows_before(path: Path, first_round: int) -> list[dict[str, str]]:
    """The rows of the CSV ``path`` for rounds (``step``) before ``first_round`` (1-based); none if absent."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("step", "").isdigit() and int(row["step"]) < first_round]


class RoundLogging(LoopCallback):
    """Logs every round's scalar metrics (step = the round's number, 1-based) to Lightning loggers.

    Args:
        loggers: The loggers; ``None``: :func:`default_loggers` in the run directory. A resumed run appends to the
            same ``logs/metrics.csv``: the rows of the rounds its checkpoint holds are kept, and those of rounds
            that ran after the checkpoint (an interrupted round) are dropped, as they run again.
    """

    def __init__(self, loggers: Sequence[Any] | None = None) -> None:
        self.given = None if loggers is None else list(loggers)
        self.loggers: list[Any] = []

    @override
    def on_run_start(self, loop: FederatedLoop, start_round: int) -> None:
        if self.given is None:
            self.loggers = default_loggers(loop.settings.run_dir)
            kept = _rows_before(Path(self.loggers[0].log_dir) / "metrics.csv", start_round + 1) if start_round else []
            with warnings.catch_warnings():  # the file is rewritten with the kept rows first, on purpose
                warnings.filterwarnings("ignore", message="Experiment logs directory")
                for row in kept:
                    step = int(row.pop("step"))
                    self.loggers[0].log_metrics({k: float(v) for k, v in row.items() if v != ""}, step=step)
                if kept:
                    self.loggers[0].save()
        else:
            self.loggers = list(self.given)
        if isinstance(loop.datamodule, PartitionReport):
            summary: dict[str, Any] = dict(loop.datamodule.partition_summary())
            summary["global_test"] = loop.datamodule.global_test_name
            for logger in self.loggers:
                logger.log_hyperparams({f"partition/{k}": v for k, v in summary.items()})

    @override
    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "round"}
        for logger in self.loggers:
            logger.log_metrics(scalars, step=int(metrics["round"]))
            logger.save()

    @override
    def on_run_end(self, loop: FederatedLoop, result: FederatedResult) -> None:
        for logger in self.loggers:
            logger.finalize("success")


class RoundProgress(LoopCallback):
    """A rich progress bar over rounds: rounds/s, elapsed time, the last global/personalized accuracy and loss."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    @staticmethod
    def status(metrics: dict[str, Any]) -> str:
        """The status text of a round."""
        parts = [f"{k}={100 * metrics[k]:.2f}%" for k in ("global_acc", "personal_acc") if k in metrics]
        if "train_loss" in metrics:
            parts.append(f"loss={metrics['train_loss']:.4f}")
        return " ".join(parts)

    @override
    def on_run_start(self, loop: FederatedLoop, start_round: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class RoundsPerSecond(TextColumn):
            def render(self, task: Any) -> Any:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.3f} rounds/s" if speed else "")

        self._progress = Progress(
            TextColumn("[bold]federated"),
            BarColumn(),
            MofNCompleteColumn(),
            RoundsPerSecond(""),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self._progress.start()
        self._task = self._progress.add_task("rounds", total=loop.settings.rounds, completed=start_round, status="")

    @override
    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=self.status(metrics))

    @override
    def on_run_end(self, loop: FederatedLoop, result: FederatedResult) -> None:
        self.teardown(loop)  # before the summary table is printed

    @override
    def teardown(self, loop: FederatedLoop) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class SummaryTable(LoopCallback):
    """Prints the last/best accuracy table, the communication totals and the mean seconds per round per phase."""

    @override
    def on_run_end(self, loop: FederatedLoop, result: FederatedResult) -> None:
        from rich.console import Console

        totals = {
            "MB down (total)": loop.comm.total_down / 1e6,
            "MB up (total)": loop.comm.total_up / 1e6,
            "rejected updates (total)": float(sum(h.get("rejected", 0) for h in result.history)),
        }
        for phase, seconds in mean_round_timing(result.history).items():
            totals[f"s/round {phase} (mean)"] = seconds
        Console().print(render_summary(result.summary, totals, caption=f"global_acc: {global_label(loop)}"))


class RunReport(LoopCallback):
    """Writes the run's files: accuracy per round, bytes per client, the partition's histogram (CSV and plot)."""

    @override
    def on_run_start(self, loop: FederatedLoop, start_round: int) -> None:
        data = loop.datamodule
        if not isinstance(data, PartitionReport):
            return
        histogram = data.partition_histogram()
        lines = ["client," + ",".join(f"class_{c}" for c in range(histogram.shape[1]))]
        lines += [f"{cid}," + ",".join(str(int(v)) for v in row) for cid, row in enumerate(histogram)]
        (loop.settings.run_dir / "partition.csv").write_text("\n".join(lines) + "\n")
        data.save_partition(loop.settings.run_dir)

    @override
    def on_run_end(self, loop: FederatedLoop, result: FederatedResult) -> None:
        run_dir = loop.settings.run_dir
        result.artifacts["accuracy_plot"] = plot_accuracy(
            result.history, run_dir / "accuracy.png", global_label=global_label(loop)
        )
        if loop.evaluation.summary_keys:  # a user module's own logged metrics
            result.artifacts["metrics_plot"] = plot_metrics(
                result.history, loop.evaluation.summary_keys, run_dir / "metrics.png"
            )
        path = run_dir / "communication.csv"
        lines = ["client,bytes_down,bytes_up"]
        for cid in range(loop.num_clients):
            lines.append(f"{cid},{loop.comm.per_client_down.get(cid, 0)},{loop.comm.per_client_up.get(cid, 0)}")
        lines.append(f"total,{loop.comm.total_down},{loop.comm.total_up}")
        path.write_text("\n".join(lines) + "\n")
        result.artifacts["communication"] = path
        if isinstance(loop.datamodule, PartitionReport):
            result.artifacts["partition_plot"] = Path(loop.datamodule.plot_partition(run_dir / "partition.png"))
            result.artifacts["partition"] = run_dir / "partition.json"


def presentation_callbacks(loggers: Sequence[Any] | None, progress: bool) -> list[LoopCallback]:
    """Logging and the run report always; the progress bar and the summary table when ``progress``."""
    callbacks: list[LoopCallback] = [RoundLogging(loggers), RunReport()]
    if progress:
        callbacks += [RoundProgress(), SummaryTable()]  # the bar stops before the table prints
    return callbacks


__all__ = ["RoundLogging", "RoundProgress", "RunReport", "SummaryTable", "default_loggers", "presentation_callbacks"]
