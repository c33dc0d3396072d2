"""Runs a lit-fed config on a local Flower deployment: one SuperLink, N SuperNodes, ``flwr run``, then cleanup.

Everything listens on 127.0.0.1 on free ports, in insecure mode (no TLS, no SuperNode authentication) — a local
demo only; README.md lists the TLS and authentication flags for real machines. Every process started here is
stopped (its whole process group) when the run ends, fails or times out.

    python recipes/flower_deployment/launch.py                                    # FedPer, 2 nodes, 2 rounds
    python recipes/flower_deployment/launch.py --config my_method.yaml --overrides "--trainer.rounds=5"

Exit status 0 means the Flower run finished and ``<run-dir>/checkpoints/last.ckpt`` holds its last round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Waits until ``port`` accepts connections (or ``process`` exits, or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop(processes: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM to each process group, SIGKILL to what is left after ``grace`` seconds; reaps them all."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # also children that outlived their parent in the group
        except ProcessLookupError:
            pass
        process.wait()


def toml_string(value: str) -> str:
    """A TOML literal for a run-config value."""
    return json.dumps(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fedper_synthetic.yaml", help="lit-fed configs, comma-separated")
    parser.add_argument("--overrides", default="", help="extra lit-fed CLI arguments, e.g. '--trainer.rounds=3'")
    parser.add_argument("--run-dir", default="runs/flower_deployment", help="the server's run directory")
    parser.add_argument("--resume-from", default="", help="a round checkpoint of an earlier run in --run-dir")
    parser.add_argument("--num-nodes", type=int, default=2, help="SuperNodes (= clients of the config)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before everything is stopped")
    parser.add_argument(
        "--reply-timeout", type=float, default=600.0, help="seconds the server waits for a round's replies (0: none)"
    )
    parser.add_argument("--logs", default=None, help="directory for the SuperLink/SuperNode logs (default: temp)")
    args = parser.parse_args(argv)

    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)  # the nodes forget state of rounds the run (re)starts from themselves
    config = ",".join(str(Path(c).resolve()) if Path(c).exists() else c for c in args.config.split(","))
    work = Path(tempfile.mkdtemp(prefix="lit_fed_flower_"))
    logs = Path(args.logs).resolve() if args.logs else work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_HOME": str(work / "flwr_home")}
    (work / "flwr_home").mkdir()
    deadline = time.monotonic() + args.timeout
    processes: list[subprocess.Popen] = []
    succeeded = False

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed when the process is reaped
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        processes.append(process)
        return process

    try:
        link_port = free_port()
        superlink = start(
            "superlink",
            ["flower-superlink", "--insecure", "--port", str(link_port), "--disable-runtime-dependency-installation"],
        )
        wait_for_port(link_port, superlink, timeout=60)
        for node in range(args.num_nodes):
            state_dir = run_dir / "node_states" / f"node_{node}"
            node_config = f"partition-id={node} num-partitions={args.num_nodes} state-dir={toml_string(str(state_dir))}"
            start(
                f"supernode_{node}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    node_config,
                ],
            )
        (work / "flwr_home" / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n'
            f'[superlink.local-deployment]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
        )
        run_config = " ".join(
            [
                f"config={toml_string(config)}",
                f"overrides={toml_string(args.overrides)}",
                f"run-dir={toml_string(str(run_dir))}",
                f"resume-from={toml_string(str(Path(args.resume_from).resolve()) if args.resume_from else '')}",
                f"reply-timeout={args.reply_timeout}",
            ]
        )
        command = ["flwr", "run", str(HERE), "local-deployment", "--stream", "--run-config", run_config]
        print("$", " ".join(command), flush=True)
        flwr_run = start("flwr_run", command)
        while flwr_run.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Flower run did not finish within {args.timeout:.0f} s (logs: {logs})")
            for process in processes[:-1]:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited early with {process.returncode} (logs: {logs})")
            time.sleep(0.5)
        print((logs / "flwr_run.log").read_text()[-3000:], flush=True)
        status = subprocess.run(
            ["flwr", "ls", "local-deployment", "--format", "json"], env=env, capture_output=True, text=True, timeout=60
        )
        print(status.stdout[-2000:], flush=True)
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        if flwr_run.returncode != 0 or '"finished:completed"' not in status.stdout or not checkpoint.exists():
            raise RuntimeError(f"the Flower run failed (logs: {logs})")
        print(f"finished: {checkpoint}", flush=True)
        succeeded = True
        return 0
    finally:
        stop(processes)
        if not succeeded:
            for log in sorted(logs.glob("*.log")):
                tail = "\n".join(log.read_text().splitlines()[-40:])
                print(f"--- {log.name} (last 40 lines)\n{tail}", file=sys.stderr)
        elif not args.logs:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
