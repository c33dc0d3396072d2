r"""The seed papers' methods on Fashion-MNIST: FedLoGe on long-tailed data, PSE on label skew, with ablations.

Two experiments, each a set of ``lit-fed fit`` runs done in this process (the command of every run is printed and
saved in its ``result.json``):

* ``lt`` — Fashion-MNIST-LT (imbalance factor 100), Dirichlet(0.5), 40 clients, 30% per round, 5 local epochs
  (``configs/data/fmnist_lt.yaml`` + ``configs/federation/fedloge.yaml``): FedAvg vs FedLoGe and its ablations
  (no SSE-C, no GLA-FR), and the long-tail baselines FedRoD-BSM and FedETF. Global and personalized accuracy with
  the many/medium/few-shot split.
* ``pse`` — Fashion-MNIST Dirichlet(0.1), 20 clients, all per round, 1 local epoch (``configs/data/fmnist_dir01.yaml``
  + ``configs/federation/pfllib.yaml``): FedAvg vs Ditto vs PSE and its ablations (no excitation, no attention).

Every run uses ``configs/model/fedavgcnn.yaml`` unless ``--model-config`` says otherwise. After each run the script
rebuilds ``<out>/results.md`` (one table per experiment) and ``<out>/accuracy.png`` (accuracy per round).

Resumable like the PFLlib recipe (whose run bookkeeping it reuses): a finished run with the requested rounds and seed
is skipped, an interrupted one continues from ``checkpoints/last.ckpt``, more rounds extend a finished run.

Examples:
    python recipes/seed_methods/run.py --rounds 10 --threads 2                     # both experiments, CPU-sized
    python recipes/seed_methods/run.py --experiments lt --methods fedavg fedloge --rounds 5
    python recipes/seed_methods/run.py --report-only
    # CIFAR-10-LT on a GPU (ResNet-8; FedLoGe's 500 rounds):
    python recipes/seed_methods/run.py --experiments lt --rounds 500 --model-config configs/model/resnet8.yaml \
        --out runs/seed_methods_cifar10 --extra --data.init_args.dataset lit_fed.data.CIFAR10 \
        --trainer.accelerator gpu --trainer.precision bf16-mixed
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = "recipes/seed_methods/run.py"
DEFAULT_OUT = "runs/seed_methods"
DEFAULT_ROUNDS = 10


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


runner = _load("pfllib_fmnist_run", ROOT / "recipes" / "pfllib_fmnist" / "run.py")  # shared run bookkeeping
plots = _load("recipes_accuracy_plot", ROOT / "recipes" / "accuracy_plot.py")
pct = runner.report.pct

EXPERIMENTS: dict[str, dict[str, Any]] = {
    "lt": {
        "title": "Fashion-MNIST-LT (IF 100), Dirichlet(0.5), 40 clients, 30% per round, 5 local epochs, batch 8",
        "data": "configs/data/fmnist_lt.yaml",
        "federation": "configs/federation/fedloge.yaml",
        "methods": {
            "fedavg": "FedAvg",
            "fedloge": "FedLoGe",
            "fedloge_no_ssec": "FedLoGe without SSE-C",
            "fedloge_no_glafr": "FedLoGe without GLA-FR",
            "fedrod_bsm": "FedRoD (balanced softmax)",
            "fedetf": "FedETF (dense ETF)",
        },
        "shots": True,
    },
    "pse": {
        "title": "Fashion-MNIST, Dirichlet(0.1), 20 clients, all per round, 1 local epoch, batch 10",
        "data": "configs/data/fmnist_dir01.yaml",
        "federation": "configs/federation/pfllib.yaml",
        "methods": {
            "fedavg": "FedAvg",
            "ditto": "Ditto",
            "pse": "PSE",
            "pse_no_excitation": "PSE without excitation",
            "pse_no_attention": "PSE without attention",
        },
        "shots": False,
    },
}
MODEL_CONFIG = "configs/model/fedavgcnn.yaml"


def configs_for(experiment: str, method: str, model_config: str, data_config: str | None = None) -> dict[str, str]:
    """The four stacked configs of one run."""
    spec = EXPERIMENTS[experiment]
    return {
        "data": data_config or spec["data"],
        "model": model_config,
        "method": f"configs/method/{method}.yaml",
        "federation": spec["federation"],
    }


def load_results(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{experiment: {method: result.json}}`` for every finished run under ``out``."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for experiment, spec in EXPERIMENTS.items():
        for method in spec["methods"]:
            path = out / experiment / method / runner.report.RESULT_NAME
            if path.exists():
                results.setdefault(experiment, {})[method] = json.loads(path.read_text())
    return results


def _last(result: dict[str, Any], key: str) -> float | None:
    """``key`` in the last evaluated round of ``result``'s history."""
    for row in reversed(result["history"]):
        if key in row:
            return row[key]
    return None


def table(experiment: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """A markdown table of one experiment's finished runs (last evaluated round; best personalized round)."""
    spec = EXPERIMENTS[experiment]
    header = ["method", "global", "personalized", "personalized best (round)"]
    if spec["shots"]:
        header += [f"{model} {group}" for model in ("global", "personalized") for group in ("many", "medium", "few")]
    header += ["s / round", "rounds"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, label in spec["methods"].items():
        result = runs.get(method)
        if result is None:
            continue
        personal = result["summary"].get("personal_acc", {})
        row = [
            label,
            pct(_last(result, "global_acc")),
            pct(_last(result, "personal_acc")),
            f"{pct(personal.get('best'))} ({personal.get('best_round', '—')})",
        ]
        if spec["shots"]:
            row += [
                pct(_last(result, f"{model}_acc_{group}"))
                for model in ("global", "personal")
                for group in ("many", "medium", "few")
            ]
        seconds = [row_["round_seconds"] for row_ in result["history"] if "round_seconds" in row_]
        row += [f"{sum(seconds) / len(seconds):.1f}" if seconds else "—", str(result["rounds_run"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """``results.md``: one table per experiment, with the commands that produced it."""
    lines = ["# Seed methods — measured results", ""]
    lines.append(
        "Accuracy (%) at the last round: `global` is the aggregated model on the balanced global test set; "
        "`personalized` pools every client's own model on its own test split (Σ correct / Σ samples). "
        "many/medium/few: accuracy restricted to the classes of each shot group."
    )
    lines.append("")
    for experiment, runs in results.items():
        spec = EXPERIMENTS[experiment]
        lines += [f"## `{experiment}`: {spec['title']}", ""]
        lines += table(experiment, runs)
        commands = sorted({r["command"] for r in runs.values()})
        dates = sorted(r["finished"][:10] for r in runs.values())
        lines += ["", f"Runs finished {dates[0]} to {dates[-1]}; command(s): " + "; ".join(f"`{c}`" for c in commands)]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path:
    """Personalized (solid) and global (dashed) accuracy per round, one panel per experiment."""
    panels = {
        experiment: {EXPERIMENTS[experiment]["methods"][m]: r["history"] for m, r in runs.items()}
        for experiment, runs in results.items()
    }
    return plots.plot_accuracy(panels, path)


def write_report(out: Path) -> tuple[Path, Path]:
    """Rebuilds ``<out>/results.md`` and ``<out>/accuracy.png`` from the saved JSONs."""
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out)
    md = out / "results.md"
    md.write_text(render(results) + f"\n_Generated {datetime.now().isoformat(timespec='seconds')}._\n")
    return md, plot(results, out / "accuracy.png")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected (experiment, method) runs; returns 1 if any failed or conflicted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description="FedLoGe (long-tailed) and PSE (label skew) with ablations on Fashion-MNIST.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    parser.add_argument("--methods", nargs="+", help="subset of the experiments' methods (default: all)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds per run ({DEFAULT_ROUNDS})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything: partition, sampling, training")
    parser.add_argument("--model-config", default=MODEL_CONFIG, help=f"backbone config ({MODEL_CONFIG})")
    parser.add_argument("--data-config", help="replaces every experiment's data config (tests: synthetic data)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--force", action="store_true", help="delete and re-run the selected runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild results.md and accuracy.png")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="LAST: passed on to every lit-fed fit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    known = {m for spec in EXPERIMENTS.values() for m in spec["methods"]}
    unknown = sorted(set(args.methods or ()) - known)
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(known)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    failed = False
    if not args.report_only:
        extra = runner.split_extra(args.extra)
        command = f"python {SCRIPT} {shlex.join(argv)}".strip()
        for experiment in args.experiments:
            for method in EXPERIMENTS[experiment]["methods"]:
                if args.methods and method not in args.methods:
                    continue
                print(f"[{experiment}/{method}] {args.rounds} rounds, seed {args.seed}", flush=True)
                status, message = runner.run_one(
                    name={"experiment": experiment, "method": method},
                    configs=configs_for(experiment, method, args.model_config, args.data_config),
                    run_dir=out / experiment / method,
                    rounds=args.rounds,
                    seed=args.seed,
                    extra=extra,
                    command=command,
                    force=args.force,
                )
                failed |= status in ("failed", "conflict")
                print(message, flush=True)
                if status == "done":
                    write_report(out)
    md, png = write_report(out)
    print(f"wrote {md} and {png}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
