r"""Reproduces PFLlib's Fashion-MNIST leaderboard (Zhang et al. 2023) with lit_fed, method by method.

For each partition (Dirichlet(0.1), pathological 2 classes per client) and each method it runs, in this process,
the equivalent of

    lit-fed fit --config configs/data/<partition>.yaml --config configs/model/fedavgcnn.yaml \
        --config configs/method/<method>.yaml --config configs/federation/pfllib.yaml \
        --trainer.rounds R --trainer.run_dir <out>/<partition>/<method> --trainer.progress false \
        --seed_everything S [--extra ...]

(FedBN uses configs/model/fedavgcnn_bn.yaml), writes ``<out>/<partition>/<method>/result.json`` as soon as a run
finishes, and rebuilds ``<out>/results.md`` and ``<out>/accuracy.png`` after every run.

Resumable: a (partition, method) whose result.json already holds the requested rounds and seed is skipped; an
interrupted run continues from its round checkpoint (``checkpoints/last.ckpt``); asking for more rounds than a
finished run has extends it from its checkpoint. A method whose config does not exist is skipped with a message.

Examples:
    python recipes/pfllib_fmnist/run.py                                      # CPU-sized: all methods, 10 rounds
    python recipes/pfllib_fmnist/run.py --methods fedavg fedprox --partitions dir01 --rounds 3
    python recipes/pfllib_fmnist/run.py --rounds 2000 --out runs/pfllib_fmnist_gpu \
        --extra --trainer.accelerator gpu --trainer.precision bf16-mixed     # --extra goes last
    python recipes/pfllib_fmnist/run.py --report-only                        # table + plot from the JSONs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = "recipes/pfllib_fmnist/run.py"


def load_sibling(name: str) -> ModuleType:
    """Imports ``recipes/pfllib_fmnist/<name>.py`` under a unique module name (the recipe is not a package)."""
    module_name = f"pfllib_fmnist_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[module_name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[module_name]


report = load_sibling("report")

METHODS = report.METHOD_ORDER
PARTITIONS = {
    "dir01": "configs/data/fmnist_dir01.yaml",
    "pathological": "configs/data/fmnist_pathological.yaml",
}
MODEL_CONFIG = "configs/model/fedavgcnn.yaml"
MODEL_CONFIG_BY_METHOD = {"fedbn": "configs/model/fedavgcnn_bn.yaml"}
FEDERATION_CONFIG = "configs/federation/pfllib.yaml"
DEFAULT_ROUNDS = 10
DEFAULT_OUT = "runs/pfllib_fmnist"


METHOD_CONFIG_OVERRIDES = {"fedrep": "configs/method/fedrep_pfllib.yaml"}  # PFLlib's FedRep: 1 head epoch


def method_config(method: str) -> str:
    """Repository-relative path of a method's config (PFLlib's own setting where it differs from the paper's)."""
    return METHOD_CONFIG_OVERRIDES.get(method, f"configs/method/{method}.yaml")


def resolve(path: str) -> Path:
    """A config path: as given if it exists from the working directory, else relative to the repository root."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() or candidate.exists() else ROOT / candidate


def configs_for(
    partition: str, method: str, data_override: str | None = None, model_override: str | None = None
) -> tuple[dict[str, str] | None, str]:
    """The configs of one run, or ``None`` and the reason it cannot run (a config file that does not exist)."""
    configs = {
        "data": data_override or PARTITIONS[partition],
        "model": model_override or MODEL_CONFIG_BY_METHOD.get(method, MODEL_CONFIG),
        "method": method_config(method),
        "federation": FEDERATION_CONFIG,
    }
    missing = [f"{concern} config {path}" for concern, path in configs.items() if not resolve(path).is_file()]
    if missing:
        return None, f"{' and '.join(missing)} not found (not written yet?)"
    return configs, ""


def cli_args(
    configs: dict[str, str], rounds: int, run_dir: Path, seed: int, extra: Sequence[str], ckpt: Path | None = None
) -> list[str]:
    """``lit-fed fit`` arguments of one run (config paths resolved for any working directory)."""
    args = ["fit"]
    for concern in ("data", "model", "method", "federation"):
        args += ["--config", str(resolve(configs[concern]))]
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


def lit_fed_command(args: Sequence[str]) -> str:
    """The shell command equivalent to ``args`` (repository-relative config paths)."""
    shown = [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT) + os.sep) else a for a in args]
    return "lit-fed " + shlex.join(shown)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


@contextlib.contextmanager
def _bare_argv() -> Iterator[None]:
    """Hides this script's own arguments (LightningCLI warns when given both ``args=`` and ``sys.argv[1:]``)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def check_config(args: Sequence[str]) -> str:
    """``""`` if the ``lit-fed fit`` arguments parse and instantiate, else the parser's error (output kept quiet)."""
    from lit_fed.cli import build_cli

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_cli(args=[a for a in args if a != "fit"], run=False)
    except (Exception, SystemExit) as error:
        text = stderr.getvalue()
        return text[text.index("error:") :].strip() if "error:" in text else f"{type(error).__name__}: {error}"
    return ""


def _checkpoint_rounds(ckpt: Path) -> int:
    from lit_fed.loop import load_checkpoint

    return int(load_checkpoint(ckpt)["round"]) + 1


def run_one(
    *,
    name: dict[str, str],
    configs: dict[str, str],
    run_dir: Path,
    rounds: int,
    seed: int,
    extra: Sequence[str],
    command: str,
    overrides: dict[str, str] | None = None,
    force: bool = False,
    run_args: Sequence[str] = (),
    record: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Runs (or skips, or continues) one federated run; returns ``(status, message)``.

    ``status`` is ``"done"``, ``"skipped"`` (already finished with these rounds and seed), ``"conflict"`` (a
    finished run or checkpoint that this request cannot continue) or ``"failed"``. ``name`` identifies the run
    in its result.json (e.g. partition and method). ``run_args`` are recipe-chosen ``lit-fed fit`` arguments
    placed before the user's ``extra``; ``record`` adds entries to the result.json.
    """
    label = "/".join(name.values())
    result_path = run_dir / report.RESULT_NAME
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if result_path.exists():
        previous = json.loads(result_path.read_text())
        if previous["seed"] == seed and previous["rounds_run"] == rounds:
            return "skipped", f"{label}: finished ({rounds} rounds, seed {seed}) — skipped ({result_path})"
        if previous["seed"] != seed or previous["rounds_run"] > rounds:
            return "conflict", (
                f"{label}: {result_path} holds {previous['rounds_run']} rounds with seed {previous['seed']}, "
                f"this request is {rounds} rounds with seed {seed}; use another --out or --force to start over"
            )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume, done = None, 0
    if ckpt.exists():
        done = _checkpoint_rounds(ckpt)
        if done > rounds:
            return "conflict", (
                f"{label}: {ckpt} already has {done} rounds, more than the {rounds} asked; "
                "use another --out or --force to start over"
            )
        resume = ckpt
        print(f"[{label}] continuing from {ckpt} (round {done} of {rounds})", flush=True)

    from lit_fed.cli import build_cli

    fit_extra = [*run_args, *extra]
    args = cli_args(configs, rounds, run_dir, seed, fit_extra, resume)
    with _bare_argv():
        problem = check_config(cli_args(configs, rounds, run_dir, seed, fit_extra))
    if problem:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(f"{lit_fed_command(args)}\n\n{problem}\n")
        short = " ".join(problem.split())
        short = short if len(short) < 400 else short[:400] + " ..."
        return "failed", f"{label}: FAILED, the config does not parse: {short} (full: {run_dir / 'error.txt'})"
    started = datetime.now()
    t0 = time.perf_counter()
    try:
        with _bare_argv():
            cli = build_cli(args=args)
        result = cli.trainer.federated_result
        if result is None:
            raise RuntimeError("the fit returned no federated result")
    except Exception as error:  # report it and go on; SystemExit/KeyboardInterrupt (SIGTERM, Ctrl-C) stop the sweep
        run_dir.mkdir(parents=True, exist_ok=True)
        detail = traceback.format_exc()
        (run_dir / "error.txt").write_text(f"{lit_fed_command(args)}\n\n{detail}")
        return "failed", f"{label}: FAILED ({type(error).__name__}: {error}); traceback in {run_dir / 'error.txt'}"
    wall = time.perf_counter() - t0
    payload = {
        **name,
        "seed": seed,
        "rounds_requested": rounds,
        "rounds_run": len(result.history),
        "configs": configs,
        "overrides": overrides or {},
        "extra": list(extra),
        "run_args": list(run_args),
        **(record or {}),
        "command": command,
        "lit_fed_command": lit_fed_command(cli_args(configs, rounds, run_dir, seed, fit_extra)),
        "resumed_from_round": None if resume is None else done,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": wall,
        "summary": result.summary,
        "history": result.history,
    }
    _write_json(result_path, payload)
    (run_dir / "error.txt").unlink(missing_ok=True)
    personal = result.summary.get("personal_acc", {})
    glob = result.summary.get("global_acc", {})
    return "done", (
        f"{label}: done in {wall:.0f} s — personalized last {report.pct(personal.get('last'))}% "
        f"best {report.pct(personal.get('best'))}%, global last {report.pct(glob.get('last'))}% ({result_path})"
    )


def split_list(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` → ``["a", "b", "c"]`` (both spellings accepted on the command line)."""
    if values is None:
        return None
    return [v for value in values for v in value.split(",") if v]


def split_extra(values: Sequence[str]) -> list[str]:
    """``--extra`` as separate words, or one quoted string that is split like a shell would."""
    return [word for value in values for word in (shlex.split(value) if " " in value else [value])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Reproduce PFLlib's Fashion-MNIST leaderboard with lit_fed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--methods", nargs="+", help=f"subset of methods (default: all of {', '.join(METHODS)})")
    parser.add_argument("--partitions", nargs="+", help=f"subset of {', '.join(PARTITIONS)} (default: both)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds per run (default {DEFAULT_ROUNDS})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything: partition, sampling, training")
    parser.add_argument("--force", action="store_true", help="delete and re-run the selected runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild results.md and accuracy.png")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 on a busy shared machine)")
    # Tests swap Fashion-MNIST/FedAvgCNN for the synthetic data and the tiny CNN (for every partition/method).
    parser.add_argument("--data-config", help=argparse.SUPPRESS)
    parser.add_argument("--model-config", help=argparse.SUPPRESS)
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
    if args.report_only:
        md, png = report.write_report(out)
        print(f"wrote {md} and {png}")
        return 0
    methods = split_list(args.methods) or list(METHODS)
    partitions = split_list(args.partitions) or list(PARTITIONS)
    unknown = [p for p in partitions if p not in PARTITIONS]
    if unknown:
        raise SystemExit(f"unknown partition(s) {unknown}; choose from {list(PARTITIONS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    extra = split_extra(args.extra)
    command = f"python {SCRIPT} {shlex.join(argv)}".strip()
    overrides = {k: v for k, v in (("data", args.data_config), ("model", args.model_config)) if v}
    statuses: dict[str, list[str]] = {}
    for partition in partitions:
        for method in methods:
            configs, reason = configs_for(partition, method, args.data_config, args.model_config)
            if configs is None:
                status, message = "missing", f"{partition}/{method}: skipped — {reason}"
            else:
                print(f"[{partition}/{method}] {args.rounds} rounds, seed {args.seed}", flush=True)
                status, message = run_one(
                    name={"partition": partition, "method": method},
                    configs=configs,
                    run_dir=out / partition / method,
                    rounds=args.rounds,
                    seed=args.seed,
                    extra=extra,
                    command=command,
                    overrides=overrides,
                    force=args.force,
                )
                if status == "done":
                    report.write_report(out)
            statuses.setdefault(status, []).append(f"{partition}/{method}")
            print(message, flush=True)
    md, png = report.write_report(out)
    print(f"wrote {md} and {png}")
    print("; ".join(f"{status}: {', '.join(runs)}" for status, runs in statuses.items()))
    return 1 if statuses.get("failed") or statuses.get("conflict") else 0


if __name__ == "__main__":
    raise SystemExit(main())
