"""Accuracy-per-round figure shared by the recipes: one panel per setting, one colour per method.

Each recipe loads this file by path (the recipes are scripts, not a package) and calls :func:`plot_accuracy` with
the per-round histories saved in its runs' ``result.json`` files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

History = Sequence[Mapping[str, Any]]

#: (metric, line style, legend suffix): personalized accuracy solid, global accuracy dashed.
DEFAULT_METRICS = (("personal_acc", "-o", "personalized"), ("global_acc", "--", "global"))


def plot_accuracy(
    panels: Mapping[str, Mapping[str, History]],
    path: str | Path,
    metrics: Sequence[tuple[str, str, str]] = DEFAULT_METRICS,
    suptitle: str | None = None,
) -> Path:
    """Writes ``path``: accuracy (%) against the round for every method of every panel.

    Args:
        panels: ``{panel title: {method label: history}}``; a history is the list of per-round metric dicts
            (``round`` 1-based). Rounds without a metric (not evaluated) are left out of its line.
        path: The PNG to write.
        metrics: ``(metric key, matplotlib format, description)`` per line kind; the same colour per method.
        suptitle: Optional figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    titles = list(panels) or ["(no finished run)"]
    fig, axes = plt.subplots(1, len(titles), figsize=(6 * len(titles), 4.2), squeeze=False)
    styles = ", ".join(f"{fmt.strip('o')} {description}" for _, fmt, description in metrics)
    for ax, title in zip(axes[0], titles, strict=True):
        for i, (label, history) in enumerate(panels.get(title, {}).items()):
            for j, (key, fmt, _) in enumerate(metrics):
                rows = [r for r in history if key in r]
                if rows:
                    ax.plot(
                        [r["round"] for r in rows],
                        [100 * r[key] for r in rows],
                        fmt,
                        color=f"C{i % 10}",
                        ms=3,
                        alpha=1.0 if j == 0 else 0.6,
                        label=label if j == 0 else None,
                    )
        ax.set_title(f"{title}\n({styles})", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
