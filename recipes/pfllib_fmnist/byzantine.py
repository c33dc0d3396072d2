r"""Partial PFL vs FedAvg under Byzantine clients: mean vs coordinate-wise median vs centered clipping.

For each method (FedAvg, Partial PFL), each server aggregator and each of {no attack, 20% sign-flip attackers}
it runs the equivalent of

    lit-fed fit --config configs/data/fmnist_dir01.yaml --config configs/model/fedavgcnn.yaml \
        --config configs/method/<method>.yaml --config configs/federation/pfllib.yaml \
        --trainer.server.init_args.aggregator '<aggregator>' \
        --trainer.round_callbacks '[<attack>]' --trainer.rounds R ...

into ``<out>/<partition>/<method>/<aggregator>/<clean|attack>/`` and writes ``<out>/byzantine.md``: rows method ×
aggregator, columns last-round personalized accuracy (honest clients' ``personal_acc_honest`` where the attack
logs it, else ``personal_acc``) and global accuracy, without and with the attack. Resumable like ``run.py``
(finished runs are skipped; an interrupted one continues from its round checkpoint).

Examples:
    python recipes/pfllib_fmnist/byzantine.py                           # CPU-sized: 10 rounds, Dir(0.1)
    python recipes/pfllib_fmnist/byzantine.py --methods fedavg --aggregators mean median --rounds 3
    python recipes/pfllib_fmnist/byzantine.py --rounds 500 --extra --trainer.accelerator gpu
    python recipes/pfllib_fmnist/byzantine.py --report-only
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ======================================================================================================== #
# EDIT HERE: the class paths this recipe depends on (lit_fed/loop/attacks.py, lit_fed/server/robust.py).
#
# The attack: a LoopCallback given as ``--trainer.round_callbacks``; ``fraction`` of the clients (a fixed set drawn
# from the seed) attack with ATTACK_KIND, an ``Attack`` (sign flip: upload w_g - (w_k - w_g)).
ATTACK_CLASS = "lit_fed.loop.attacks.ByzantineAttack"
ATTACK_KIND: dict[str, Any] = {"class_path": "lit_fed.loop.attacks.SignFlip"}
ATTACK_FRACTION = 0.2
#
# The server aggregators, given as ``--trainer.server.init_args.aggregator``. ``None`` keeps the method
# config's own aggregator (its mean) untouched; otherwise {"class_path": ..., "init_args": {...}}.
AGGREGATORS: dict[str, dict[str, Any] | None] = {
    "mean": None,
    "median": {"class_path": "lit_fed.server.robust.CoordinateMedian"},
    # radius None: tau is the median distance of the updates to the centre at each iteration (scale-free); a float
    # fixes tau in units of a whole-model delta (honest first-round deltas here have norms 0.56-1.11).
    "centered_clipping": {
        "class_path": "lit_fed.server.robust.CenteredClipping",
        "init_args": {"radius": None, "iterations": 3},
    },
}
#
# The methods compared (method configs, relative to the repository root).
METHOD_CONFIGS = {
    "fedavg": "configs/method/fedavg.yaml",
    "partial_pfl": "configs/method/partial_pfl.yaml",
}
# ======================================================================================================== #

HERE = Path(__file__).resolve().parent
SCRIPT = "recipes/pfllib_fmnist/byzantine.py"
DEFAULT_OUT = "runs/pfllib_fmnist_byzantine"
DEFAULT_ROUNDS = 10
SETTINGS = ("clean", "attack")
REPORT_NAME = "byzantine.md"
SETTING = (
    "Fashion-MNIST, 20 clients, all clients every round, batch 10, 1 local epoch, SGD lr 0.005, PFLlib's 4-layer "
    "FedAvgCNN; FedAvg shares the whole model, Partial PFL a shared body with a personal head"
)
AGGREGATOR_LABELS = {"mean": "mean", "median": "coordinate median", "centered_clipping": "centered clipping"}


def _load_run() -> Any:
    module_name = "pfllib_fmnist_run"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, HERE / "run.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[module_name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[module_name]


run = _load_run()
report = run.report


def attack_spec(fraction: float) -> dict[str, Any]:
    """The attack callback as a ``class_path``/``init_args`` dict."""
    return {"class_path": ATTACK_CLASS, "init_args": {"fraction": fraction, "kind": ATTACK_KIND}}


def importable(class_path: str) -> str:
    """``""`` if ``class_path`` imports, else why not."""
    module_name, _, attr = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return f"{class_path} cannot be imported ({error})"
    return "" if hasattr(module, attr) else f"{module_name} has no {attr}"


def overrides_for(aggregator: str, setting: str, fraction: float) -> list[str]:
    """The ``lit-fed fit`` arguments that select the aggregator and switch the attack on."""
    args: list[str] = []
    spec = AGGREGATORS[aggregator]
    if spec is not None:
        args += ["--trainer.server.init_args.aggregator", json.dumps(spec)]
    if setting == "attack":
        args += ["--trainer.round_callbacks", json.dumps([attack_spec(fraction)])]
    return args


def missing_class(aggregator: str, setting: str) -> str:
    """Why this (aggregator, setting) cannot run yet ("" if it can)."""
    spec = AGGREGATORS[aggregator]
    reasons = []
    if spec is not None and (why := importable(spec["class_path"])):
        reasons.append(f"aggregator {why} — edit AGGREGATORS at the top of {SCRIPT}")
    if setting == "attack":
        for class_path in (ATTACK_CLASS, ATTACK_KIND["class_path"]):
            if why := importable(class_path):
                reasons.append(f"attack {why} — edit ATTACK_CLASS/ATTACK_KIND at the top of {SCRIPT}")
    return "; ".join(reasons)


# -- report ---------------------------------------------------------------------------------------------------------
def load_results(out: str | Path) -> dict[tuple[str, str, str], dict[str, dict[str, Any]]]:
    """``{(partition, method, aggregator): {setting: result}}`` from the saved result JSONs."""
    results: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for path in sorted(Path(out).glob(f"*/*/*/*/{report.RESULT_NAME}")):
        r = json.loads(path.read_text())
        results.setdefault((r["partition"], r["method"], r["aggregator"]), {})[r["setting"]] = r
    return results


def last_value(result: dict[str, Any] | None, keys: Sequence[str]) -> tuple[float | None, str | None]:
    """The last evaluated value of the first of ``keys`` present in the run's history, and that key."""
    if result is None:
        return None, None
    for key in keys:
        values = [h[key] for h in result["history"] if key in h and not math.isnan(h[key])]
        if values:
            return values[-1], key
    return None, None


def render_markdown(results: dict[tuple[str, str, str], dict[str, dict[str, Any]]]) -> str:
    """``byzantine.md``: a header and one table per partition."""
    lines = ["# Byzantine robustness: Partial PFL vs FedAvg, mean vs robust aggregators", ""]
    runs = [r for by_setting in results.values() for r in by_setting.values()]
    if not runs:
        return "\n".join([*lines, "No finished run yet.", ""])
    setting, rounds, date, command = report.describe_runs(runs, SETTING, reference_rounds=None)
    attacks = sorted({json.dumps(r["attack"]) for r in runs if r.get("attack")})
    lines += [
        f"**Setting:** {setting}. **Rounds:** {rounds}. **Date:** {date}. **Command:** {command}",
        "",
        f"**Attack:** {'; '.join(f'`{a}`' for a in attacks) or '(no attacked run yet)'}. All numbers are the "
        "last round's, in %. Personalized accuracy: pooled over the honest clients (`personal_acc_honest`) where "
        "the attack logs it, else over all clients (`personal_acc`, marked †). Without attack every client is "
        "honest, so that column pools all clients. Global accuracy: the aggregated model on the global test set.",
        "",
    ]
    columns = (
        "method",
        "aggregator",
        "personalized, no attack",
        "personalized, attack",
        "global, no attack",
        "global, attack",
    )
    by_partition: dict[str, list[tuple[str, str]]] = {}
    for partition, method, aggregator in results:
        by_partition.setdefault(partition, []).append((method, aggregator))
    agg_order = list(AGGREGATORS)
    for partition in report._ordered(list(by_partition), report.PARTITION_ORDER):
        lines += [f"## {report.partition_label(partition)}", ""]
        lines += ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
        rows = sorted(
            by_partition[partition],
            key=lambda ma: (
                list(METHOD_CONFIGS).index(ma[0]) if ma[0] in METHOD_CONFIGS else len(METHOD_CONFIGS),
                ma[0],
                agg_order.index(ma[1]) if ma[1] in agg_order else len(agg_order),
                ma[1],
            ),
        )
        for method, aggregator in rows:
            by_setting = results[(partition, method, aggregator)]
            cells = [report.method_label(method), AGGREGATOR_LABELS.get(aggregator, aggregator)]
            for key in ("personal", "global"):
                for setting_name in SETTINGS:
                    keys = ("personal_acc_honest", "personal_acc") if key == "personal" else ("global_acc",)
                    value, found = last_value(by_setting.get(setting_name), keys)
                    mark = " †" if setting_name == "attack" and found == "personal_acc" else ""
                    cells.append(report.pct(value) + mark if value is not None else "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(out: str | Path) -> Path:
    """Writes ``<out>/byzantine.md`` from the saved JSONs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    path.write_text(render_markdown(load_results(out)))
    return path


# -- runner ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Partial PFL vs FedAvg under sign-flip attackers with mean / median / centered clipping.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--methods", nargs="+", help=f"subset of {', '.join(METHOD_CONFIGS)} (default: both)")
    parser.add_argument("--aggregators", nargs="+", help=f"subset of {', '.join(AGGREGATORS)} (default: all)")
    parser.add_argument("--settings", nargs="+", help="subset of clean, attack (default: both)")
    parser.add_argument("--partition", default="dir01", choices=list(run.PARTITIONS), help="data partition")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds per run (default {DEFAULT_ROUNDS})")
    parser.add_argument("--fraction", type=float, default=ATTACK_FRACTION, help="share of Byzantine clients")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything")
    parser.add_argument("--force", action="store_true", help="delete and re-run the selected runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild byzantine.md")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data-config", help=argparse.SUPPRESS)
    parser.add_argument("--model-config", help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="LAST option: passed to lit-fed fit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected runs; returns 1 if any failed or conflicted, else 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        print(f"wrote {write_report(out)}")
        return 0
    methods = run.split_list(args.methods) or list(METHOD_CONFIGS)
    aggregators = run.split_list(args.aggregators) or list(AGGREGATORS)
    settings = run.split_list(args.settings) or list(SETTINGS)
    for given, known, what in ((aggregators, AGGREGATORS, "aggregator"), (settings, SETTINGS, "setting")):
        if unknown := [g for g in given if g not in known]:
            raise SystemExit(f"unknown {what}(s) {unknown}; choose from {list(known)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    extra = run.split_extra(args.extra)
    command = f"python {SCRIPT} {shlex.join(argv)}".strip()
    overrides = {k: v for k, v in (("data", args.data_config), ("model", args.model_config)) if v}
    partition = args.partition
    statuses: dict[str, list[str]] = {}
    for method in methods:
        for aggregator in aggregators:
            for setting in settings:
                label = f"{partition}/{method}/{aggregator}/{setting}"
                configs, reason = run.configs_for(partition, "fedavg", args.data_config, args.model_config)
                method_path = METHOD_CONFIGS.get(method, run.method_config(method))
                if configs is not None:
                    configs["method"] = method_path
                    if not run.resolve(method_path).is_file():
                        configs, reason = None, f"method config {method_path} not found (not written yet?)"
                if configs is not None and (why := missing_class(aggregator, setting)):
                    configs, reason = None, why
                if configs is None:
                    status, message = "missing", f"{label}: skipped — {reason}"
                else:
                    print(f"[{label}] {args.rounds} rounds, seed {args.seed}", flush=True)
                    status, message = run.run_one(
                        name={"partition": partition, "method": method, "aggregator": aggregator, "setting": setting},
                        configs=configs,
                        run_dir=out / partition / method / aggregator / setting,
                        rounds=args.rounds,
                        seed=args.seed,
                        extra=extra,
                        run_args=overrides_for(aggregator, setting, args.fraction),
                        command=command,
                        overrides=overrides,
                        force=args.force,
                        record={
                            "aggregator_spec": AGGREGATORS[aggregator],
                            "attack": attack_spec(args.fraction) if setting == "attack" else None,
                        },
                    )
                    if status == "done":
                        write_report(out)
                statuses.setdefault(status, []).append(label)
                print(message, flush=True)
    print(f"wrote {write_report(out)}")
    print("; ".join(f"{status}: {', '.join(runs)}" for status, runs in statuses.items()))
    return 1 if statuses.get("failed") or statuses.get("conflict") else 0


if __name__ == "__main__":
    raise SystemExit(main())
