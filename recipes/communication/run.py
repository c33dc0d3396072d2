r"""Accuracy vs megabytes uploaded: FedAvg dense vs compressed uploads on Fashion-MNIST Dir(0.1), 20 clients.

Each scheme is one run of the equivalent of

    lit-fed fit --config configs/data/fmnist_dir01.yaml --config configs/model/fedavgcnn.yaml \
        --config configs/method/fedavg.yaml --config configs/federation/pfllib.yaml \
        [--config configs/method/<topk|topk_residual|svd|quant8>.yaml] [--trainer.round_callbacks '<json>'] \
        --trainer.rounds R --trainer.run_dir <out>/<scheme> --trainer.progress false --seed_everything S [--extra ...]

(the JSON override only where the scheme's sparsity differs from its config's), in this process through
``lit_fed.cli.build_cli``. After every run it writes ``<out>/<scheme>/result.json`` and rebuilds
``<out>/results.md`` (final/best accuracy, total MB up/down, compression ratio) and ``<out>/accuracy_vs_mb.png``
(global accuracy against cumulative MB uploaded, one curve per scheme).

Resumable per run: a scheme whose result.json already holds the requested rounds and seed is skipped; an
interrupted run continues from its ``checkpoints/last.ckpt`` (residuals included); asking for more rounds extends
a finished run from its checkpoint (note: the SVD energy schedule ``T(t)`` depends on the total rounds ``R``, so
an extended SVD run is not identical to one started with the larger ``R``).

Examples:
    python recipes/communication/run.py --rounds 2 --schemes dense topk99 topk99_res      # smoke test
    python recipes/communication/run.py --rounds 200                                       # all schemes
    python recipes/communication/run.py --rounds 200 --extra --trainer.accelerator gpu     # --extra goes last
    python recipes/communication/run.py --report-only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


runner = _load("pfllib_fmnist_run", ROOT / "recipes" / "pfllib_fmnist" / "run.py")  # shared command/JSON helpers
BASE_CONFIGS = [
    "configs/data/fmnist_dir01.yaml",
    "configs/model/fedavgcnn.yaml",
    "configs/method/fedavg.yaml",
    "configs/federation/pfllib.yaml",
]
RESULT_NAME = "result.json"
DEFAULT_OUT = "runs/communication"
DEFAULT_ROUNDS = 20


def _topk(sparsity: float, residual: bool) -> dict[str, Any]:
    return {
        "config": "configs/method/topk_residual.yaml" if residual else "configs/method/topk.yaml",
        "callback": {
            "class_path": "lit_fed.compression.CompressUpload",
            "init_args": {
                "compressor": {"class_path": "lit_fed.compression.TopK", "init_args": {"sparsity": sparsity}},
                "residual": residual,
            },
        },
        "override": sparsity != 0.99,  # the configs hold 0.99
        "label": f"top-k {100 * sparsity:g}%" + (" + residual" if residual else ""),
    }


SCHEMES: dict[str, dict[str, Any]] = {
    "dense": {"config": None, "callback": None, "override": False, "label": "FedAvg dense"},
    "topk90": _topk(0.9, False),
    "topk99": _topk(0.99, False),
    "topk999": _topk(0.999, False),
    "topk90_res": _topk(0.9, True),
    "topk99_res": _topk(0.99, True),
    "topk999_res": _topk(0.999, True),
    "svd": {"config": "configs/method/svd.yaml", "callback": None, "override": False, "label": "SVD T 0.95->0.98"},
    "quant8": {"config": "configs/method/quant8.yaml", "callback": None, "override": False, "label": "8-bit"},
}


def scheme_args(scheme: str) -> list[str]:
    """The configs and overrides that select a scheme."""
    spec = SCHEMES[scheme]
    args: list[str] = []
    if spec["config"]:
        args += ["--config", str(ROOT / spec["config"])]
    if spec["override"]:
        args += ["--trainer.round_callbacks", json.dumps([spec["callback"]])]
    return args


def cli_args(scheme: str, rounds: int, run_dir: Path, seed: int, extra: Sequence[str], ckpt: Path | None) -> list[str]:
    """``lit-fed fit`` arguments of one run."""
    args = ["fit"]
    for config in BASE_CONFIGS:
        args += ["--config", str(ROOT / config)]
    args += scheme_args(scheme)
    args += [
        "--trainer.rounds",
        str(rounds),
        "--trainer.run_dir",
        str(run_dir),
        "--trainer.progress",
        "false",
        "--seed_everything",
        str(seed),
        *extra,
    ]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    return args


KEEP = (
    "round",
    "global_acc",
    "personal_acc",
    "mb_up",
    "mb_down",
    "mb_up_total",
    "mb_down_total",
    "mb_up_dense_total",
    "compression_ratio_up_total",
    "train_loss",
)


def run_scheme(scheme: str, out: Path, rounds: int, seed: int, extra: Sequence[str], force: bool) -> str:
    """Runs, continues or skips one scheme; returns a status line."""
    run_dir = out / scheme
    result_path = run_dir / RESULT_NAME
    if force and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    if result_path.exists():
        previous = json.loads(result_path.read_text())
        if previous["seed"] == seed and previous["rounds_run"] == rounds:
            return f"{scheme}: finished ({rounds} rounds, seed {seed}) - skipped"
        if previous["seed"] != seed or previous["rounds_run"] > rounds:
            return (
                f"{scheme}: {result_path} holds {previous['rounds_run']} rounds with seed {previous['seed']}; "
                "use another --out or --force"
            )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume = ckpt if ckpt.exists() else None
    if resume is not None:
        from lit_fed.loop import load_checkpoint

        done = int(load_checkpoint(ckpt)["round"]) + 1
        if done > rounds:
            return f"{scheme}: {ckpt} already has {done} rounds (> {rounds}); use another --out or --force"
        print(f"[{scheme}] continuing from {ckpt} (round {done} of {rounds})", flush=True)

    from lit_fed.cli import build_cli

    args = cli_args(scheme, rounds, run_dir, seed, extra, resume)
    command = runner.lit_fed_command(cli_args(scheme, rounds, run_dir, seed, extra, None))
    print(f"[{scheme}] {command}", flush=True)
    started = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both args= and sys.argv[1:] are given
    try:
        cli = build_cli(args=args)
        result = cli.trainer.federated_result
        if result is None:
            raise RuntimeError("the fit returned no federated result")
    except (Exception, SystemExit) as error:  # a bad config exits through jsonargparse: report it, go on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return f"{scheme}: FAILED ({type(error).__name__}: {error}); see {run_dir / 'error.txt'}"
    finally:
        sys.argv = argv
    history = [{k: h[k] for k in KEEP if k in h} for h in result.history]
    runner._write_json(
        result_path,
        {
            "scheme": scheme,
            "label": SCHEMES[scheme]["label"],
            "seed": seed,
            "rounds_run": len(result.history),
            "command": command,
            "seconds_this_invocation": time.perf_counter() - started,
            "summary": result.summary,
            "history": history,
        },
    )
    return f"{scheme}: done ({len(result.history)} rounds) -> {result_path}"


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{scale * value:.{digits}f}"


def load_results(out: Path) -> list[dict[str, Any]]:
    """Every finished scheme's result.json under ``out``, in :data:`SCHEMES` order."""
    results = []
    for scheme in SCHEMES:
        path = out / scheme / RESULT_NAME
        if path.exists():
            results.append(json.loads(path.read_text()))
    return results


def write_report(out: Path) -> tuple[Path, Path | None]:
    """Writes ``results.md`` (the table) and ``accuracy_vs_mb.png`` (the plot) from the finished runs."""
    results = load_results(out)
    lines = [
        "# Accuracy vs MB uploaded: Fashion-MNIST Dir(0.1), 20 clients, FedAvgCNN",
        "",
        "Generated by `python recipes/communication/run.py`; global accuracy on the balanced global test set,",
        "personalized accuracy pooled over the clients' own test splits (as in PFLlib). Ratio = dense upload bytes /",
        "bytes actually serialized (indices, values and metadata included).",
        "",
        "| scheme | rounds | global acc last | global acc best | personal acc last | MB up total | MB down total "
        "| upload ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        last = result["history"][-1] if result["history"] else {}
        best = result["summary"].get("global_acc", {}).get("best")
        ratio = last.get("compression_ratio_up_total", 1.0)
        lines.append(
            f"| {result['label']} | {result['rounds_run']} | {_fmt(last.get('global_acc'), 100)} | {_fmt(best, 100)} "
            f"| {_fmt(last.get('personal_acc'), 100)} | {_fmt(last.get('mb_up_total'))} "
            f"| {_fmt(last.get('mb_down_total'))} | {_fmt(ratio, digits=1)}x |"
        )
    table = out / "results.md"
    out.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines) + "\n")
    if not results:
        return table, None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for result in results:
        points = [(h["mb_up_total"], 100 * h["global_acc"]) for h in result["history"] if "global_acc" in h]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", markersize=2, label=result["label"])
    axes.set_xscale("log")
    axes.set_xlabel("cumulative MB uploaded (all clients, log scale)")
    axes.set_ylabel("global accuracy (%)")
    axes.set_title("Fashion-MNIST Dir(0.1), 20 clients: accuracy vs upload")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    figure.tight_layout()
    plot = out / "accuracy_vs_mb.png"
    figure.savefig(plot, dpi=120)
    return table, plot


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per run")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--force", action="store_true", help="delete and rerun the selected schemes")
    parser.add_argument("--report-only", action="store_true", help="only rebuild results.md and the plot")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="lit-fed fit arguments (goes last)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.report_only:
        for scheme in args.schemes:
            print(run_scheme(scheme, out, args.rounds, args.seed, args.extra, args.force), flush=True)
            write_report(out)
    table, plot = write_report(out)
    print(table.read_text())
    print(f"table: {table}\nplot: {plot}")


if __name__ == "__main__":
    main()
