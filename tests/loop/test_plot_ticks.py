"""Plots number rounds with whole numbers only (round 1, 2, 3; never 1.5)."""

from __future__ import annotations

import matplotlib.figure
import pytest

from lit_fed.loop.reporting import plot_accuracy, plot_metrics


@pytest.fixture
def saved_ticks(monkeypatch):
    """The x tick values of every axis of each figure as it is saved."""
    ticks: list[list[float]] = []
    original = matplotlib.figure.Figure.savefig

    def spy(self, *args, **kwargs):
        for ax in self.axes:
            low, high = ax.get_xlim()
            ticks.append([t for t in ax.get_xticks() if low <= t <= high])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return ticks


HISTORY = [{"round": r, "global_acc": 0.1 * r, "personal_acc": 0.2 * r, "val_loss": 1.0 / r} for r in (1, 2, 3)]


def test_accuracy_and_metric_plots_have_integer_round_ticks(saved_ticks, tmp_path):
    plot_accuracy(HISTORY, tmp_path / "accuracy.png")
    plot_metrics(HISTORY, ["val_loss"], tmp_path / "metrics.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and (tmp_path / "metrics.png").stat().st_size > 0
    assert len(saved_ticks) == 2
    for ticks in saved_ticks:
        assert ticks, "no tick in view"
        assert all(float(t).is_integer() for t in ticks), ticks
