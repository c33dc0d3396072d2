r"""Transformer personalization: FedAvg vs Personalized-T vs FedTP (and pFedHN on a CNN), images and text.

Two tasks, each a set of ``lit-fed fit`` runs composed from the configs under ``configs/``:

* ``fmnist`` — Fashion-MNIST, Dirichlet(0.1) over 20 clients, all clients every round, 1 local epoch
  (``configs/data/fmnist_dir01.yaml`` + ``configs/federation/pfllib.yaml``). The transformer methods use
  ``configs/model/vit_tiny.yaml`` (a 28×28 ViT with per-block QKV); pFedHN / pFedHN-PC use the FedAvgCNN target
  (``configs/model/fedavgcnn.yaml``) with their own local schedule (50 SGD steps).
* ``shakespeare`` — tiny Shakespeare by speaker (52 clients with >= 50 speeches), next-character prediction with
  ``configs/model/char_transformer.yaml`` (``configs/data/shakespeare.yaml``), 1 local epoch, 20% of the clients per
  round.

Each run's equivalent command is

    lit-fed fit --config <data> --config <model> --config configs/method/<method>.yaml [--config <federation>] \
        --trainer.rounds R --trainer.run_dir <out>/<task>/<method> --trainer.progress false --seed_everything S \
        [size overrides] [--extra ...]

``--size cpu`` (the default) adds overrides that keep the text task CPU-sized (windows subsampled with stride 40, a
2-block, 64-wide transformer); the image task keeps its configs, which are already small (a Fashion-MNIST round of
the 20-client ViT is several minutes on a 2-core CPU); ``--size full`` uses the configs unchanged (meant for a GPU:
add ``--hypernetwork-device cuda --extra --trainer.accelerator gpu``).

Resumable per run: a run whose ``result.json`` holds the requested rounds and seed is skipped; an interrupted run
continues from ``checkpoints/last.ckpt``; more rounds than a finished run has extend it from its checkpoint. After
every run ``<out>/results.md`` is rebuilt from the ``result.json`` files (personalized accuracy, last and best round).

Examples:
    python recipes/transformer_personalization/run.py --rounds 20                       # everything, CPU-sized
    python recipes/transformer_personalization/run.py --tasks shakespeare --methods fedavg fedtp --rounds 5
    python recipes/transformer_personalization/run.py --size full --rounds 300 --out runs/tp_gpu \
        --hypernetwork-device cuda --extra --trainer.accelerator gpu                   # --extra goes last
    python recipes/transformer_personalization/run.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULT_NAME = "result.json"


def _load_plots() -> Any:
    """The recipes' shared accuracy figure (``recipes/accuracy_plot.py``; the recipes are not a package)."""
    import importlib.util

    name = "recipes_accuracy_plot"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / "accuracy_plot.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


DEFAULT_OUT = "runs/transformer_personalization"

METHOD_LABELS = {
    "fedavg": "FedAvg",
    "personalized_t": "Personalized-T",
    "fedtp": "FedTP",
    "pfedhn": "pFedHN (CNN target)",
    "pfedhn_pc": "pFedHN-PC (CNN target)",
}
TASKS: dict[str, dict[str, Any]] = {
    "fmnist": {
        "label": "Fashion-MNIST, Dirichlet(0.1), 20 clients, all per round, 1 local epoch",
        "data": "configs/data/fmnist_dir01.yaml",
        "federation": "configs/federation/pfllib.yaml",
        "models": {
            "fedavg": "configs/model/vit_tiny.yaml",
            "personalized_t": "configs/model/vit_tiny.yaml",
            "fedtp": "configs/model/vit_tiny.yaml",
            "pfedhn": "configs/model/fedavgcnn.yaml",
            "pfedhn_pc": "configs/model/fedavgcnn.yaml",
        },
        "args": [],
        "cpu": [],
    },
    "shakespeare": {
        "label": "tiny Shakespeare by speaker (52 clients), next character, 20% of clients per round, 1 local epoch",
        "data": "configs/data/shakespeare.yaml",
        "federation": None,
        "models": {
            "fedavg": "configs/model/char_transformer.yaml",
            "personalized_t": "configs/model/char_transformer.yaml",
            "fedtp": "configs/model/char_transformer.yaml",
        },
        "args": ["--trainer.client_fraction", "0.2", "--trainer.local_epochs", "1"],
        "cpu": [
            "--data.init_args.stride=40",
            "--model.init_args.backbone.init_args.dim=64",
            "--model.init_args.backbone.init_args.depth=2",
            "--model.init_args.backbone.init_args.heads=4",
            "--model.init_args.backbone.init_args.dim_head=16",
            "--model.init_args.backbone.init_args.mlp_dim=128",
        ],
    },
}


def resolve(path: str) -> Path:
    """A repository-relative config path, absolute."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else ROOT / candidate


HYPERNETWORK_METHODS = ("fedtp", "pfedhn", "pfedhn_pc")


def fit_args(
    task: str,
    method: str,
    rounds: int,
    run_dir: Path,
    seed: int,
    size: str,
    extra: Sequence[str],
    hypernetwork_device: str | None = None,
) -> list[str]:
    """The ``lit-fed fit`` arguments of one run (without ``--ckpt_path``)."""
    spec = TASKS[task]
    configs = [spec["data"], spec["models"][method], f"configs/method/{method}.yaml"]
    if spec["federation"]:
        configs.append(spec["federation"])
    args = ["fit"]
    for config in configs:
        args += ["--config", str(resolve(config))]
    args += [*spec["args"], *(spec["cpu"] if size == "cpu" else [])]
    if hypernetwork_device and method in HYPERNETWORK_METHODS:
        args += ["--trainer.server.init_args.device", hypernetwork_device]
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
    return args


def shown(args: Sequence[str]) -> str:
    """The shell command of ``args`` with repository-relative config paths."""
    words = [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT) + os.sep) else a for a in args]
    return "lit-fed " + shlex.join(words)


def run_one(
    task: str,
    method: str,
    rounds: int,
    out: Path,
    seed: int,
    size: str,
    extra: Sequence[str],
    hypernetwork_device: str | None = None,
) -> str:
    """Runs, continues or skips one (task, method) run; returns a one-line status."""
    run_dir = out / task / method
    result_path = run_dir / RESULT_NAME
    label = f"{task}/{method}"
    if result_path.exists():
        previous = json.loads(result_path.read_text())
        if (previous["seed"], previous["rounds_run"], previous["size"]) == (seed, rounds, size):
            return f"{label}: finished ({rounds} rounds) — skipped"
        if previous["seed"] != seed or previous["size"] != size or previous["rounds_run"] > rounds:
            return f"{label}: CONFLICT — {result_path} is another run (seed/size/rounds); use another --out"
    args = fit_args(task, method, rounds, run_dir, seed, size, extra, hypernetwork_device)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume_args = [*args, "--ckpt_path", str(ckpt)] if ckpt.exists() else args
    if ckpt.exists():
        print(f"[{label}] continuing from {ckpt}", flush=True)
    from lit_fed.cli import build_cli

    started = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both args= and sys.argv[1:] are given
    try:
        result = build_cli(args=resume_args).trainer.federated_result
        if result is None:
            raise RuntimeError("the fit returned no federated result")
    except (Exception, SystemExit) as error:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(f"{shown(resume_args)}\n\n{traceback.format_exc()}")
        return f"{label}: FAILED ({type(error).__name__}: {error}); see {run_dir / 'error.txt'}"
    finally:
        sys.argv = argv
    payload = {
        "task": task,
        "method": method,
        "seed": seed,
        "size": size,
        "rounds_run": len(result.history),
        "command": shown(args),
        "wall_seconds": time.perf_counter() - started,
        "summary": result.summary,
        "history": result.history,
    }
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, result_path)
    personal = result.summary.get("personal_acc", {})
    return f"{label}: done — personalized last {pct(personal.get('last'))}%, best {pct(personal.get('best'))}%"


def pct(value: float | None) -> str:
    """A fraction as a percentage with 2 decimals, "—" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.2f}"


def write_plot(out: Path) -> Path:
    """``<out>/accuracy.png``: personalized accuracy per round, one panel per task (global accuracy is not
    meaningful for the hypernetwork methods, so it is not drawn)."""
    panels: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, spec in TASKS.items():
        for method in spec["models"]:
            path = out / task / method / RESULT_NAME
            if path.exists():
                history = json.loads(path.read_text())["history"]
                panels.setdefault(task, {})[METHOD_LABELS[method]] = history
    metrics = (("personal_acc", "-o", "personalized"),)
    return _load_plots().plot_accuracy(panels, out / "accuracy.png", metrics=metrics)


def write_report(out: Path) -> Path:
    """``<out>/results.md`` (measured numbers only) and ``<out>/accuracy.png`` from every
    ``<out>/<task>/<method>/result.json``."""
    lines = ["# Transformer personalization — measured results", ""]
    lines.append("Personalized accuracy: each client's own model on its own test split, pooled over clients (%).")
    lines.append("")
    for task, spec in TASKS.items():
        lines += [f"## {task}: {spec['label']}", ""]
        lines.append("| method | personalized last | personalized best (round) | mean ± std over clients | rounds |")
        lines.append("|---|---|---|---|---|")
        for method in spec["models"]:
            path = out / task / method / RESULT_NAME
            if not path.exists():
                lines.append(f"| {METHOD_LABELS[method]} | not run | | | |")
                continue
            result = json.loads(path.read_text())
            personal = result["summary"].get("personal_acc", {})
            last = result["history"][-1]
            spread = f"{pct(last.get('personal_acc_mean'))} ± {pct(last.get('personal_acc_std'))}"
            best = f"{pct(personal.get('best'))} ({personal.get('best_round', '—')})"
            row = [METHOD_LABELS[method], pct(personal.get("last")), best, spread, str(result["rounds_run"])]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    path = out / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    write_plot(out)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected runs; returns 1 if any failed or conflicted."""
    parser = argparse.ArgumentParser(
        description="FedAvg vs Personalized-T vs FedTP (and pFedHN) on Fashion-MNIST and tiny Shakespeare.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_LABELS), help="default: every method of a task")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    parser.add_argument("--size", choices=["cpu", "full"], default="cpu", help="CPU-sized overrides or the configs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--hypernetwork-device", help="where FedTP/pFedHN keep the hypernetwork (e.g. cuda)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="LAST: passed on to lit-fed fit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    failed = False
    if not args.report_only:
        for task in args.tasks:
            for method in TASKS[task]["models"]:
                if args.methods and method not in args.methods:
                    continue
                print(f"[{task}/{method}] {args.rounds} rounds, seed {args.seed}, size {args.size}", flush=True)
                message = run_one(
                    task, method, args.rounds, out, args.seed, args.size, args.extra, args.hypernetwork_device
                )
                failed |= "FAILED" in message or "CONFLICT" in message
                print(message, flush=True)
                write_report(out)
    print(f"wrote {write_report(out)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
