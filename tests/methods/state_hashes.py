"""Fingerprints of every method config's run: the final global state, the clients' personal states and the metrics.

Each ``configs/method/*.yaml`` runs as in the method contract test (``test_contract.py``: synthetic data, 2 clients,
2 rounds, the contract's overrides) and is summarized by SHA-256 digests of its final global state, of every client's
stored personal state and of its metric history (timing left out). ``state_hashes.json`` holds the digests of a
reference run per numerical environment (torch version, machine architecture, CPU model and the kernels torch
dispatches to: the same code gives other bits on another CPU); ``test_contract.py`` checks that today's code
reproduces them bit for bit where this machine's environment has a reference, and skips elsewhere.

Record the reference again only for a deliberate numerical change, and say which configs changed and why::

    python tests/methods/state_hashes.py --write            # all configs
    python tests/methods/state_hashes.py --write ccvr       # only these configs (the others keep theirs)
    python tests/methods/state_hashes.py --check fedavg     # compare some configs with the reference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "state_hashes.json"


def _cpu_model() -> str:
    """The CPU's vendor, family and model numbers (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
    return " ".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model"))


def environment() -> dict[str, str]:
    """What must match for digests to be comparable: torch, the architecture, the CPU and torch's kernels for it."""
    return {
        "torch": torch.__version__.split("+")[0],
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def load_references() -> list[dict[str, Any]]:
    """Every stored reference (one per environment)."""
    if not REFERENCE.exists():
        return []
    return list(json.loads(REFERENCE.read_text())["references"])


def reference_for(env: dict[str, str], references: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reference among ``references`` (see :func:`load_references`) recorded in ``env``, if any."""
    return next((r for r in references if r["environment"] == env), None)


def state_digest(state: dict[str, torch.Tensor] | None) -> str:
    """SHA-256 over the sorted keys, each tensor's dtype, shape and bytes (``"none"`` for no state)."""
    if state is None:
        return "none"
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def flat_tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists (e.g. a strategy's ``state_dict()``), keyed by its path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    out: dict[str, torch.Tensor] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flat_tensors(item, f"{prefix}/{key}"))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            out.update(flat_tensors(item, f"{prefix}[{index}]"))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def history_digest(history: list[dict[str, Any]], without: tuple[str, ...] = ()) -> str:
    """SHA-256 of the metric history without wall-clock timing (``round_seconds`` and the per-stage seconds).

    ``without`` leaves further keys out (to compare with a reference written before they existed).
    """
    rows = [
        {k: v for k, v in metrics.items() if not k.endswith("_seconds") and k not in without} for metrics in history
    ]
    return hashlib.sha256(json.dumps(_plain(rows), sort_keys=True).encode()).hexdigest()


def fingerprint(name: str, history_without: tuple[str, ...] = ()) -> dict[str, Any]:
    """The digests of config ``name``'s contract run (sequential backend)."""
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # the contract test module and the shared test helpers
    from test_contract import cli_args  # the contract's exact stack and overrides

    from lit_fed.cli import build_cli

    with tempfile.TemporaryDirectory() as run_dir:
        cli = build_cli(args=cli_args(name, Path(run_dir)), run=False)
        loop = cli.trainer.build_loop(cli.model, cli.datamodule)
        loop.run()
        store = loop.runner.worker.store
        return {
            "global_state": state_digest(loop.global_state),
            "global_keys": sorted(loop.global_state),
            "personal": [state_digest(store.get(cid)) for cid in range(loop.num_clients)],
            "strategy_tensors": state_digest(
                {
                    k.rsplit("/", 1)[-1] + f"#{i}": v
                    for i, (k, v) in enumerate(sorted(flat_tensors(loop.strategy.state_dict()).items()))
                }
            ),
            "history": history_digest(loop.history, history_without),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="config names (default: every configs/method/*.yaml)")
    parser.add_argument("--write", action="store_true", help=f"write the digests to {REFERENCE.name}")
    parser.add_argument("--check", action="store_true", help=f"compare with {REFERENCE.name}, one row per config")
    parser.add_argument("--history-without", nargs="*", default=[], help="metric keys the history digest leaves out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = HERE.parents[1]
    names = args.names or sorted(p.stem for p in (root / "configs/method").glob("*.yaml"))
    digests = {}
    env = environment()
    references = load_references()
    saved = reference_for(env, references) or {}
    if args.check and not saved:
        sys.exit(f"no reference digests for this environment {env} in {REFERENCE}; --write records them")
    reference = saved.get("configs", {}) if args.check else {}
    partial_write = args.write and bool(args.names)
    if (args.check or partial_write) and not args.history_without:  # metrics added since the reference was written
        args.history_without = saved.get("history_leaves_out", [])
    for name in names:
        digests[name] = fingerprint(name, tuple(args.history_without))
        line = f"{name:28s} global {digests[name]['global_state'][:16]}  history {digests[name]['history'][:16]}"
        if args.check:
            fields = ("global_state", "global_keys", "personal", "history")
            line += "  " + " ".join(
                f"{field}={'same' if reference.get(name, {}).get(field) == digests[name][field] else 'DIFFERENT'}"
                for field in fields
            )
        print(line, flush=True)
    if args.write:
        if args.names:  # some configs: the others keep their reference digests
            digests = {**saved.get("configs", {}), **digests}
        entry = {
            "environment": env,
            "history_leaves_out": list(args.history_without),
            "configs": dict(sorted(digests.items())),
        }
        others = [r for r in references if r["environment"] != env]
        REFERENCE.write_text(json.dumps({"references": [*others, entry]}, indent=1) + "\n")
        print(f"wrote {REFERENCE} ({env})")


if __name__ == "__main__":
    main()
