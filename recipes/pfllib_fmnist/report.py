"""Results table and accuracy plot of the PFLlib Fashion-MNIST recipe, rebuilt from the saved per-run JSONs.

    python recipes/pfllib_fmnist/report.py --out runs/pfllib_fmnist

reads ``<out>/<partition>/<method>/result.json`` (written by ``run.py`` right after each run) and writes
``<out>/results.md`` and ``<out>/accuracy.png``. ``run.py`` calls the same code after every finished run, and
``run.py --report-only`` is the same as this script.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

RESULT_NAME = "result.json"

# Canonical row order and display names (a method outside this list is shown after these, under its own name).
METHOD_ORDER = (
    "fedavg",
    "fedprox",
    "fedper",
    "fedrep",
    "ditto",
    "perfedavg",
    "fedbn",
    "fedbabu",
    "lgfedavg",
    "partial_pfl",
)
METHOD_LABELS = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedper": "FedPer",
    "fedrep": "FedRep",
    "ditto": "Ditto",
    "perfedavg": "Per-FedAvg",
    "fedbn": "FedBN",
    "fedbabu": "FedBABU",
    "lgfedavg": "LG-FedAvg",
    "partial_pfl": "Partial PFL",
}
PARTITION_ORDER = ("dir01", "pathological")
PARTITION_LABELS = {
    "dir01": "Dirichlet(0.1)",
    "pathological": "Pathological (2 classes per client)",
}

# PFLlib's published leaderboard (Zhang et al. 2023, https://github.com/TsingZ0/PFLlib): Fashion-MNIST, 20 clients,
# join ratio 1, batch 10, 1 local epoch, SGD lr 0.005, 2000 rounds, FedAvgCNN; best-round personalized accuracy (%),
# mean of 3 seeds.
PFLLIB_ROUNDS = 2000
PFLLIB_BEST = {
    "dir01": {
        "fedavg": 85.85,
        "fedprox": 85.63,
        "perfedavg": 95.10,
        "ditto": 97.47,
        "fedper": 97.44,
        "fedrep": 97.56,
        "fedbabu": 97.46,
    },
    "pathological": {
        "fedavg": 80.41,
        "perfedavg": 99.18,
        "ditto": 99.44,
        "fedper": 99.47,
        "fedrep": 99.56,
    },
}

SETTING = (
    "Fashion-MNIST, 20 clients, all clients every round, batch 10, 1 local epoch, SGD lr 0.005, PFLlib's 4-layer "
    "FedAvgCNN (FedBN: the same CNN with BatchNorm), each client's data split 75% train / 25% test"
)

TABLE_COLUMNS = (
    "method",
    "personalized last (%)",
    "personalized best (%)",
    "best round: mean ± std over clients (%)",
    "global last (%)",
    "global best (%)",
    "s / round",
    "rounds",
    "PFLlib best (%)",
)


def pct(value: float | None) -> str:
    """A fraction in [0, 1] as a percentage with 2 decimals ("—" when missing or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.2f}"


def method_label(method: str) -> str:
    """Display name of a method key."""
    return METHOD_LABELS.get(method, method)


def partition_label(partition: str) -> str:
    """Display name of a partition key."""
    return PARTITION_LABELS.get(partition, partition)


def _ordered(keys: Sequence[str], order: Sequence[str]) -> list[str]:
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def load_results(out: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{partition: {method: result}}`` from every ``<out>/<partition>/<method>/result.json``."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(Path(out).glob(f"*/*/{RESULT_NAME}")):
        result = json.loads(path.read_text())
        results.setdefault(result["partition"], {})[result["method"]] = result
    return results


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Table quantities of one run that are not plain last/best entries of its summary.

    The best round is the round of the best pooled personalized accuracy (PFLlib's "best accuracy"); the
    mean and std over clients are those of that same round (PFLlib prints the std of the same evaluation).
    """
    history = result["history"]
    summary = result["summary"]
    best_round = summary.get("personal_acc", {}).get("best_round")
    at_best = next((h for h in history if h["round"] == best_round), {}) if best_round is not None else {}
    seconds = [h["round_seconds"] for h in history if "round_seconds" in h]
    return {
        "best_round": best_round,
        "best_round_mean": at_best.get("personal_acc_mean"),
        "best_round_std": at_best.get("personal_acc_std"),
        "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
        "rounds_run": len(history),
    }


def table_row(partition: str, method: str, result: dict[str, Any]) -> list[str]:
    """One markdown table row (cells in :data:`TABLE_COLUMNS` order)."""
    summary = result["summary"]
    extra = derive(result)
    personal = summary.get("personal_acc", {})
    glob = summary.get("global_acc", {})
    mean, std = extra["best_round_mean"], extra["best_round_std"]
    spread = f"{pct(mean)} ± {pct(std)}" if mean is not None and std is not None else "—"
    seconds = extra["seconds_per_round"]
    reference = PFLLIB_BEST.get(partition, {}).get(method)
    return [
        method_label(method),
        pct(personal.get("last")),
        pct(personal.get("best")),
        spread,
        pct(glob.get("last")),
        pct(glob.get("best")),
        f"{seconds:.1f}" if seconds is not None else "—",
        str(extra["rounds_run"]),
        f"{reference:.2f}" if reference is not None else "—",
    ]


def _markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(TABLE_COLUMNS) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def describe_runs(
    runs: Sequence[dict[str, Any]], setting_text: str = SETTING, reference_rounds: int | None = PFLLIB_ROUNDS
) -> tuple[str, str, str, str]:
    """(setting, rounds, date, command) for a header, from the runs' own records."""
    data_configs = sorted({r["configs"]["data"] for r in runs})
    model_configs = sorted({r["configs"]["model"] for r in runs})
    overridden = any(r.get("overrides") for r in runs)
    setting = setting_text
    if overridden:
        setting = f"data config(s) {', '.join(data_configs)}; model config(s) {', '.join(model_configs)} (overridden)"
    seeds = sorted({r["seed"] for r in runs})
    setting += f"; seed {', '.join(map(str, seeds))}"
    extras = sorted({" ".join(r.get("extra", [])) for r in runs} - {""})
    if extras:
        setting += f"; extra overrides: {'; '.join(f'`{e}`' for e in extras)}"
    rounds = sorted({r["rounds_run"] for r in runs})
    rounds_text = ", ".join(map(str, rounds))
    if reference_rounds is not None and max(rounds) < reference_rounds:
        rounds_text += f" (CPU-sized; PFLlib's leaderboard runs {reference_rounds} rounds, best round, mean of 3 seeds)"
    elif reference_rounds is not None:
        rounds_text += f" (PFLlib's leaderboard: {reference_rounds} rounds, best round, mean of 3 seeds; here 1 seed)"
    finished = sorted(r["finished"] for r in runs)
    date = finished[-1][:10] if finished[0][:10] == finished[-1][:10] else f"{finished[0][:10]} to {finished[-1][:10]}"
    commands = sorted({r["command"] for r in runs})
    command = "; ".join(f"`{c}`" for c in commands)
    return setting, rounds_text, date, command


def render_markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The ``results.md`` text: a header and one table per partition."""
    lines = ["# PFLlib Fashion-MNIST leaderboard, reproduced with lit_fed", ""]
    runs = [r for by_method in results.values() for r in by_method.values()]
    if not runs:
        return "\n".join([*lines, "No finished run yet.", ""])
    setting, rounds, date, command = describe_runs(runs)
    lines += [
        f"**Setting:** {setting}. **Rounds:** {rounds}. **Date:** {date}. **Command:** {command}",
        "",
        "Personalized accuracy: each client's own model on its own test split, pooled over clients "
        "(Σ correct / Σ samples). Best = best round of the pooled personalized accuracy; the mean ± std over clients "
        "is that of the same round. Global accuracy: the aggregated model on the balanced global test set. "
        "s / round: mean wall time per round (local training and evaluation). PFLlib best: its published best-round "
        f"personalized accuracy after {PFLLIB_ROUNDS} rounds (— where PFLlib publishes none).",
        "",
    ]
    for partition in _ordered(list(results), PARTITION_ORDER):
        by_method = results[partition]
        lines += [f"## {partition_label(partition)}", ""]
        lines += _markdown_table(
            [table_row(partition, m, by_method[m]) for m in _ordered(list(by_method), METHOD_ORDER)]
        )
        missing = [method_label(m) for m in METHOD_ORDER if m not in by_method]
        if missing:
            lines += ["", f"No result yet: {', '.join(missing)}."]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: str | Path) -> Path:
    """Personalized (top row) and global (bottom row) accuracy per round; one column per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    partitions = _ordered(list(results), PARTITION_ORDER) or ["(none)"]
    fig, axes = plt.subplots(2, len(partitions), figsize=(6 * len(partitions), 7.5), squeeze=False, sharex="col")
    all_methods = _ordered(sorted({m for by_method in results.values() for m in by_method}), METHOD_ORDER)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(all_methods)}
    for col, partition in enumerate(partitions):
        by_method = results.get(partition, {})
        for row, (key, what, style) in enumerate(
            (("personal_acc", "personalized accuracy (%)", "-"), ("global_acc", "global accuracy (%)", "--"))
        ):
            ax = axes[row][col]
            for method in _ordered(list(by_method), METHOD_ORDER):
                points = [(h["round"], 100 * h[key]) for h in by_method[method]["history"] if key in h]
                if points:
                    xs, ys = zip(*points, strict=True)
                    marker = "o" if len(points) < 30 else None
                    ax.plot(
                        xs, ys, style, color=colors[method], marker=marker, markersize=3, label=method_label(method)
                    )
            ax.set_title(f"{partition_label(partition)}: {what.split(' (')[0]}")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == 1:
                ax.set_xlabel("round")
            if ax.lines:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("lit_fed reproduction of PFLlib's Fashion-MNIST leaderboard")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Writes ``<out>/results.md`` and ``<out>/accuracy.png`` from the saved JSONs; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out)
    md = out / "results.md"
    md.write_text(render_markdown(results))
    png = plot(results, out / "accuracy.png")
    return md, png


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pfllib_fmnist", help="the recipe's output folder")
    args = parser.parse_args(argv)
    md, png = write_report(args.out)
    print(f"{datetime.now():%Y-%m-%d %H:%M} wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
