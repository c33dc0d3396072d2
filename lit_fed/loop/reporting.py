"""End-of-run reporting: last/best summary, a rich table, and an accuracy-per-round plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUMMARY_KEYS = (
    "global_acc",
    "personal_acc",
    "personal_acc_mean",
    "personal_acc_std",
    "personal_acc_p10",
    "personal_acc_honest",
)


LOWER_IS_BETTER = ("loss", "perplexity", "error", "mse", "mae", "ppl")
"""Name parts of a user module's logged metrics whose best value is the smallest."""


def lower_is_better(key: str) -> bool:
    """Whether the best value of metric ``key`` is its smallest (spreads, losses, errors, perplexity)."""
    return "std" in key or any(part in key.lower() for part in LOWER_IS_BETTER)


def summarize(history: Sequence[dict[str, Any]], extra_keys: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """Last and best value of each accuracy metric (and of ``extra_keys``) over the evaluated rounds.

    Best is the maximum over rounds, or the minimum for :func:`lower_is_better` metrics.
    """
    summary: dict[str, dict[str, float]] = {}
    for key in (*SUMMARY_KEYS, *(k for k in extra_keys if k not in SUMMARY_KEYS)):
        values = [(h["round"], h[key]) for h in history if key in h and not math.isnan(h[key])]
        if not values:
            continue
        pick = min if lower_is_better(key) else max
        best_round, best = pick(values, key=lambda rv: rv[1])
        summary[key] = {"last": values[-1][1], "best": best, "best_round": best_round}
    return summary


def render_summary(summary: dict[str, dict[str, float]], totals: dict[str, float], caption: str | None = None) -> Any:
    """A rich ``Table`` of the summary (accuracies in %) and the communication totals."""
    from rich.table import Table

    table = Table(title="lit_fed results", caption=caption)
    table.add_column("metric")
    table.add_column("last", justify="right")
    table.add_column("best", justify="right")
    table.add_column("best round", justify="right")
    for key, row in summary.items():
        if key in SUMMARY_KEYS:  # accuracies, in %
            last, best = f"{100 * row['last']:.2f}", f"{100 * row['best']:.2f}"
        else:  # a user module's own metrics, as logged
            last, best = f"{row['last']:.4g}", f"{row['best']:.4g}"
        table.add_row(key, last, best, str(int(row["best_round"])))
    for key, value in totals.items():
        table.add_row(key, f"{value:.2f}", "", "")
    return table


def plot_accuracy(
    history: Sequence[dict[str, Any]], path: Path, title: str = "", global_label: str = "global test set"
) -> Path:
    """Writes a PNG of global and personalized accuracy per round (``global_label``: what the global one is of)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("global_acc", f"global ({global_label})"), ("personal_acc", "personalized (pooled)")):
        points = [(h["round"], 100 * h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy per round")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no evaluated round", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metrics(history: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, title: str = "") -> Path:
    """Writes a PNG of the given metrics per round (a user module's own logged metrics), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = list(keys) or [""]
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        points = [(h["round"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
            ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title or "metrics per round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
