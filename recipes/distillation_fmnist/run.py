r"""Distillation-family methods on Fashion-MNIST with lit_fed: FedAvg, FedNTD, FedLSD, MOON, FedDF, FedGen, FedAlign,
and CCVR applied post hoc to FedAvg.

For each partition (Dirichlet(0.1), Dirichlet(0.5); 20 clients) and method it runs, in this process, the equivalent of

    lit-fed fit --config <out>/configs/data_<partition>.yaml --config configs/model/fedavgcnn.yaml \
        --config configs/method/<method>.yaml --config configs/federation/pfllib.yaml \
        --trainer.rounds R --trainer.run_dir <out>/<partition>/<method> --trainer.progress false \
        --seed_everything S [FedDF: --trainer.server_steps.init_args.max_steps N ...] [--extra ...]

The data config is written by this script: Fashion-MNIST with a stratified 10% of its training set held out
(``lit_fed.methods.HeldOut``) — FedDF's unlabeled server data — for *every* method, so all methods see the same
client data. "FedAvg + CCVR" calibrates the classifier of FedAvg's final model (its ``checkpoints/last.ckpt``) with
``lit_fed.methods.CCVR`` and reports the accuracy before and after; it needs no training of its own.

Resumable, like ``recipes/pfllib_fmnist/run.py`` (whose runner it reuses): a finished (partition, method) with the
requested rounds and seed is skipped, an interrupted one continues from ``checkpoints/last.ckpt``, more rounds extend
a finished run. A method whose config does not exist (yet) is skipped with a message.

Examples:
    python recipes/distillation_fmnist/run.py --rounds 10 --threads 2              # CPU-sized
    python recipes/distillation_fmnist/run.py --methods fedavg feddf --partitions dir01 --rounds 3
    python recipes/distillation_fmnist/run.py --rounds 200 --feddf-steps 10000 --feddf-samples 0 \
        --out runs/distillation_fmnist_gpu --extra --trainer.accelerator gpu      # --extra goes last
    python recipes/distillation_fmnist/run.py --report-only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = "recipes/distillation_fmnist/run.py"


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


runner = _load("pfllib_fmnist_run", ROOT / "recipes" / "pfllib_fmnist" / "run.py")
plots = _load("recipes_accuracy_plot", ROOT / "recipes" / "accuracy_plot.py")

METHODS = ("fedavg", "fedntd", "fedlsd", "moon", "feddf", "fedgen", "fedalign")
CCVR_RUN = "fedavg_ccvr"
LABELS = {
    "fedavg": "FedAvg",
    "fedntd": "FedNTD",
    "fedlsd": "FedLSD",
    "moon": "MOON",
    "feddf": "FedDF",
    "fedgen": "FedGen",
    "fedalign": "FedAlign",
    CCVR_RUN: "FedAvg + CCVR",
}
PARTITIONS = {"dir01": 0.1, "dir05": 0.5}
PARTITION_LABELS = {"dir01": "Dirichlet(0.1)", "dir05": "Dirichlet(0.5)"}
HELD_OUT_FRACTION = 0.1
MODEL_CONFIG = "configs/model/fedavgcnn.yaml"
FEDERATION_CONFIG = "configs/federation/pfllib.yaml"
DEFAULT_ROUNDS = 10
DEFAULT_OUT = "runs/distillation_fmnist"
RESULT_NAME = "result.json"


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


def data_config_text(alpha: float, source: str, num_clients: int) -> str:
    """The data config of one partition: the source's training set minus a held-out 10%, Dirichlet(alpha)."""
    return f"""# Written by {SCRIPT}: {source} with {HELD_OUT_FRACTION:.0%} of its training set held out
# (FedDF's unlabeled server data; held out for every method), Dirichlet({alpha}) over {num_clients} clients, batch 10.
data:
  class_path: lit_fed.data.FederatedDataModule
  init_args:
    dataset:
      class_path: lit_fed.methods.HeldOut
      init_args:
        source:
          class_path: {source}
        fraction: {HELD_OUT_FRACTION}
        part: rest
    partitioner:
      class_path: lit_fed.data.Dirichlet
      init_args:
        alpha: {alpha}
        min_size: 10
    num_clients: {num_clients}
    batch_size: 10
"""


def write_data_config(out: Path, partition: str, source: str, num_clients: int) -> Path:
    """Writes (or rewrites identically) ``<out>/configs/data_<partition>.yaml``."""
    path = out / "configs" / f"data_{partition}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data_config_text(PARTITIONS[partition], source, num_clients)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def method_run_args(method: str, feddf_steps: int, feddf_samples: int) -> list[str]:
    """Recipe-chosen ``lit-fed fit`` arguments of a method (FedDF's CPU-sized distillation)."""
    if method != "feddf":
        return []
    args = ["--trainer.server_steps.init_args.max_steps", str(feddf_steps)]
    if feddf_samples > 0:
        args += ["--trainer.server_steps.init_args.server_samples", str(feddf_samples)]
    return args


# ----------------------------------------------------------------------------------------------------------------
# CCVR on FedAvg's final model
# ----------------------------------------------------------------------------------------------------------------


def run_ccvr(partition: str, out: Path, rounds: int, seed: int, samples_per_class: int, force: bool) -> tuple[str, str]:
    """Calibrates FedAvg's final classifier of ``partition`` with CCVR; writes ``<out>/<partition>/fedavg_ccvr/``."""
    label = f"{partition}/{CCVR_RUN}"
    base_dir, run_dir = out / partition / "fedavg", out / partition / CCVR_RUN
    result_path = run_dir / RESULT_NAME
    if result_path.exists() and not force:
        previous = json.loads(result_path.read_text())
        if previous["seed"] == seed and previous["rounds_run"] == rounds:
            return "skipped", f"{label}: finished ({rounds} rounds, seed {seed}) — skipped ({result_path})"
    base_path = base_dir / RESULT_NAME
    if not base_path.exists():
        return "missing", f"{label}: skipped — FedAvg has no finished run in {base_dir} (run fedavg first)"
    base = json.loads(base_path.read_text())
    if base["seed"] != seed or base["rounds_run"] != rounds:
        return "missing", f"{label}: skipped — FedAvg's run has {base['rounds_run']} rounds / seed {base['seed']}"
    from lit_fed.cli import build_cli
    from lit_fed.methods import CCVR

    args = runner.cli_args(base["configs"], rounds, base_dir, seed, base.get("extra", []))
    started, t0 = datetime.now(), time.perf_counter()
    try:
        with runner._bare_argv():
            cli = build_cli(args=[a for a in args if a != "fit"], run=False)
        loop = cli.trainer.build_loop(cli.model, cli.datamodule)
        loop.setup()  # as FederatedTrainer.validate does: a loop restored from a round checkpoint
        loop.restore(base_dir / "checkpoints" / "last.ckpt")
        loop.round = rounds - 1
        ccvr = CCVR(samples_per_class=samples_per_class)
        metrics = ccvr.calibrate(loop)
    except Exception as error:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return "failed", f"{label}: FAILED ({type(error).__name__}: {error}); traceback in {run_dir / 'error.txt'}"
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "partition": partition,
        "method": CCVR_RUN,
        "seed": seed,
        "rounds_run": rounds,
        "base_run": str(base_dir),
        "ccvr": repr(ccvr),
        "metrics": metrics,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t0,
    }
    tmp = result_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, result_path)
    (run_dir / "error.txt").unlink(missing_ok=True)
    return "done", (
        f"{label}: global {pct(metrics['ccvr_before_global_acc'])}% -> {pct(metrics['ccvr_after_global_acc'])}%, "
        f"personalized {pct(metrics['ccvr_before_personal_acc'])}% -> {pct(metrics['ccvr_after_personal_acc'])}%"
    )


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals, or an em dash."""
    return "—" if value is None else f"{100 * value:.2f}"


def load_results(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{partition: {method: result.json}}`` of every finished run under ``out``."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(out.glob(f"*/*/{RESULT_NAME}")):
        results.setdefault(path.parent.parent.name, {})[path.parent.name] = json.loads(path.read_text())
    return results


def _notes(method: str, result: dict[str, Any]) -> str:
    if method == CCVR_RUN:
        m = result["metrics"]
        return (
            f"CCVR on FedAvg's final model: global {pct(m['ccvr_before_global_acc'])} → "
            f"{pct(m['ccvr_after_global_acc'])}, personalized {pct(m['ccvr_before_personal_acc'])} → "
            f"{pct(m['ccvr_after_personal_acc'])}"
        )
    last = result["history"][-1]
    if method == "feddf" and "feddf_before_fidelity_kl" in last:
        return (
            f"student–ensemble KL {last['feddf_before_fidelity_kl']:.4f} → {last['feddf_after_fidelity_kl']:.4f}, "
            f"agreement {pct(last['feddf_before_fidelity_agreement'])} → {pct(last['feddf_after_fidelity_agreement'])}"
            " (last round)"
        )
    if "fidelity_agreement" in last:
        return f"teacher–student agreement {pct(last['fidelity_agreement'])}, KL {last['fidelity_kl']:.4f} (last round)"
    return ""


def table_row(method: str, result: dict[str, Any]) -> list[str]:
    """``method | personalized last | best | global last | best | s/round | rounds | notes``."""
    if method == CCVR_RUN:
        m = result["metrics"]
        cells = [pct(m.get("ccvr_after_personal_acc")), "—", pct(m.get("ccvr_after_global_acc")), "—", "—"]
        return [LABELS[method], *cells, str(result["rounds_run"]), _notes(method, result)]
    summary, history = result["summary"], result["history"]
    personal, glob = summary.get("personal_acc", {}), summary.get("global_acc", {})
    seconds = sum(h.get("round_seconds", 0.0) for h in history) / max(len(history), 1)
    return [
        LABELS.get(method, method),
        pct(personal.get("last")),
        pct(personal.get("best")),
        pct(glob.get("last")),
        pct(glob.get("best")),
        f"{seconds:.1f}",
        str(result["rounds_run"]),
        _notes(method, result),
    ]


def render_markdown(results: dict[str, dict[str, dict[str, Any]]], command: str | None = None) -> str:
    """``results.md``: one table per partition, methods in the recipe's order."""
    lines = ["# Distillation methods on Fashion-MNIST (lit_fed)", ""]
    if command:
        lines += [f"**Command:** `{command}`", ""]
    lines += [
        f"Generated {datetime.now().isoformat(timespec='seconds')}. Default setting (each run's result.json lists its "
        "configs): 20 clients, all participating; 1 local epoch, batch 10, SGD lr 0.005, FedAvgCNN; 10% of the "
        "training set held out for every method (FedDF's unlabeled server data). Accuracies in %: personalized = every "
        "client's model on its own test split (pooled), global = the global model on the balanced test set; "
        "best = best round. One seed.",
        "",
    ]
    if not results:
        return "\n".join([*lines, "No finished run yet.", ""])
    order = [*METHODS, CCVR_RUN]
    header = ["method", "personalized last", "personalized best", "global last", "global best", "s / round"]
    header += ["rounds", "notes"]
    for partition in [p for p in PARTITIONS if p in results]:
        lines += [f"## {PARTITION_LABELS[partition]}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 6 + ["---"]) + "|"]
        runs = results[partition]
        for method in [m for m in order if m in runs] + sorted(set(runs) - set(order)):
            lines.append("| " + " | ".join(table_row(method, runs[method])) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(out: Path, command: str | None = None) -> Path:
    """Rebuilds ``<out>/results.md`` and ``<out>/accuracy.png`` (accuracy per round; CCVR, a post-hoc step after
    the last round, is in the table only) from the saved JSONs."""
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out)
    path = out / "results.md"
    path.write_text(render_markdown(results, command))
    panels = {
        PARTITION_LABELS.get(partition, partition): {
            LABELS.get(m, m): runs[m]["history"] for m in [*METHODS, *sorted(runs)] if m in runs and m != CCVR_RUN
        }
        for partition, runs in results.items()
    }
    plots.plot_accuracy(panels, out / "accuracy.png")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Distillation-family methods (and CCVR) on Fashion-MNIST with lit_fed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--methods", nargs="+", help=f"subset of {', '.join([*METHODS, CCVR_RUN])} (default: all)")
    parser.add_argument("--partitions", nargs="+", help=f"subset of {', '.join(PARTITIONS)} (default: both)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds per run (default {DEFAULT_ROUNDS})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything: partition, sampling, training")
    parser.add_argument("--feddf-steps", type=int, default=200, help="FedDF distillation steps (paper: 10000)")
    parser.add_argument(
        "--feddf-samples", type=int, default=2000, help="FedDF server images used (0: all 6000 held-out images)"
    )
    parser.add_argument("--ccvr-samples", type=int, default=1000, help="CCVR virtual features per class (M_c)")
    parser.add_argument("--force", action="store_true", help="delete and re-run the selected runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild results.md")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    # Tests and smoke runs swap Fashion-MNIST/FedAvgCNN/20 clients for something small.
    parser.add_argument("--source", default="lit_fed.data.FashionMNIST", help=argparse.SUPPRESS)
    parser.add_argument("--num-clients", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--model-config", default=MODEL_CONFIG, help=argparse.SUPPRESS)
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="LAST option: everything after it is passed to lit-fed fit (e.g. --trainer.accelerator gpu)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected (partition, method) runs; returns 1 if any failed or conflicted, else 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    command = f"python {SCRIPT} {shlex.join(argv)}".strip()
    if args.report_only:
        print(f"wrote {write_report(out)}")
        return 0
    methods = runner.split_list(args.methods) or [*METHODS, CCVR_RUN]
    partitions = runner.split_list(args.partitions) or list(PARTITIONS)
    unknown = [p for p in partitions if p not in PARTITIONS]
    if unknown:
        raise SystemExit(f"unknown partition(s) {unknown}; choose from {list(PARTITIONS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    extra = runner.split_extra(args.extra)
    statuses: dict[str, list[str]] = {}
    for partition in partitions:
        data_config = write_data_config(out, partition, args.source, args.num_clients)
        for method in methods:
            if method == CCVR_RUN:
                status, message = run_ccvr(partition, out, args.rounds, args.seed, args.ccvr_samples, args.force)
            else:
                configs = {
                    "data": str(data_config),
                    "model": args.model_config,
                    "method": runner.method_config(method),
                    "federation": FEDERATION_CONFIG,
                }
                missing = [f"{c} config {p}" for c, p in configs.items() if not runner.resolve(p).is_file()]
                if missing:
                    status, message = "missing", f"{partition}/{method}: skipped — {' and '.join(missing)} not found"
                else:
                    print(f"[{partition}/{method}] {args.rounds} rounds, seed {args.seed}", flush=True)
                    status, message = runner.run_one(
                        name={"partition": partition, "method": method},
                        configs=configs,
                        run_dir=out / partition / method,
                        rounds=args.rounds,
                        seed=args.seed,
                        extra=extra,
                        command=command,
                        force=args.force,
                        run_args=method_run_args(method, args.feddf_steps, args.feddf_samples),
                    )
            if status == "done":
                write_report(out, command)
            statuses.setdefault(status, []).append(f"{partition}/{method}")
            print(message, flush=True)
    print(f"wrote {write_report(out, command)}")
    print("; ".join(f"{status}: {', '.join(runs)}" for status, runs in statuses.items()))
    return 1 if statuses.get("failed") or statuses.get("conflict") else 0


if __name__ == "__main__":
    raise SystemExit(main())
