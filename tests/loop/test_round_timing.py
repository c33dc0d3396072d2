"""Every round's history entry (and metrics.csv row) holds its seconds per phase."""

import csv
import time

from helpers import CPU

from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.reporting import render_summary
from lit_fed.loop.timing import TIMING_KEYS, RoundTimer, mean_round_timing
from lit_fed.server import FedAvg


def test_timing_keys_are_nonnegative_and_fit_in_the_round(client_factory, datamodule, tmp_path):
    loop = FederatedLoop(
        client_factory(),
        datamodule,
        FedAvg(),
        rounds=3,
        eval_every=2,
        checkpoint_every=2,
        trainer_kwargs=CPU,
        run_dir=tmp_path,
        progress=False,
    )
    walls: list[float] = []
    run_round = loop.run_round

    def timed_round(rnd):
        start = time.perf_counter()
        metrics = run_round(rnd)
        walls.append(time.perf_counter() - start)
        return metrics

    loop.run_round = timed_round
    result = loop.run()
    assert len(walls) == len(result.history) == 3
    for metrics, wall in zip(result.history, walls, strict=True):
        phases = [metrics[key] for key in TIMING_KEYS]
        assert all(isinstance(s, float) and s >= 0.0 for s in phases), metrics
        assert sum(phases) <= wall
        assert metrics["train_seconds"] > 0.0 and metrics["aggregate_seconds"] > 0.0
        assert sum(phases) - metrics["checkpoint_seconds"] <= metrics["round_seconds"]
    evaluated = [h["evaluate_seconds"] > 0.0 for h in result.history]
    checkpointed = [h["checkpoint_seconds"] > 0.0 for h in result.history]
    assert evaluated == [False, True, True]  # every 2nd round and the last
    assert checkpointed == [False, True, True]
    with (tmp_path / "logs" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    for row, metrics in zip(rows, result.history, strict=True):
        for key in TIMING_KEYS:
            assert float(row[key]) == metrics[key]


def test_round_timer_accumulates_and_resets():
    timer = RoundTimer()
    with timer.measure("aggregate"):
        time.sleep(0.01)
    with timer.measure("aggregate"):
        pass
    first = timer.take("aggregate")
    assert first >= 0.01
    assert timer.take("aggregate") == 0.0


def test_summary_table_shows_mean_seconds_per_phase():
    history = [
        {"round": 1, "train_seconds": 1.0, "aggregate_seconds": 0.5, "evaluate_seconds": 0, "checkpoint_seconds": 0.2},
        {"round": 2, "train_seconds": 3.0, "aggregate_seconds": 0.5, "evaluate_seconds": 1.0},
    ]
    means = mean_round_timing(history)
    assert means == {"train": 2.0, "aggregate": 0.5, "evaluate": 0.5, "checkpoint": 0.2}
    from rich.console import Console

    totals = {f"s/round {phase} (mean)": seconds for phase, seconds in means.items()}
    console = Console(width=120, record=True)
    console.print(render_summary({}, totals))
    text = console.export_text()
    assert "s/round train (mean)" in text and "2.00" in text and "s/round checkpoint (mean)" in text
