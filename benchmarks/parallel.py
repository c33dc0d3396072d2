"""Wall time per round: the sequential backend vs Flower's simulation engine with 1 and 2 clients in parallel.

The quickstart job (FedAvg, FedAvgCNN, Fashion-MNIST Dir(0.1) over 20 clients, batch 10, 1 local epoch, all clients
every round, global + personalized evaluation every round) for a few rounds under each backend, each in a fresh
subprocess. Reported per backend, from the loop's own ``round_seconds`` (sampling → training → aggregation →
evaluation): the first round (its first data loading) and the mean of the later rounds (steady state); then the
whole run's wall time and the start-up/tear-down outside the rounds (Ray, its actors, and — when the run begins —
each actor building its client loop and loading the data; paid once per run). Ratios are sequential / backend
(> 1: faster).

Every process trains with ``--threads`` torch threads (default 1: the sequential loop uses one core, each Ray actor
one core), so "1 parallel client" measures the engine's overhead on the same compute and "2 parallel clients" the
parallel speed-up; on a machine shared with other jobs, more threads than free cores make OpenMP spin and slow
everything down.

    python benchmarks/parallel.py                     # 20 clients, 3 rounds, Fashion-MNIST
    python benchmarks/parallel.py --data synthetic    # no dataset needed (tiny model: start-up dominates)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BACKENDS = {
    "sequential": None,
    "flower-simulation, 1 parallel client": {"num_cpus": 2},  # one Ray actor holds both cores
    "flower-simulation, 2 parallel clients": {"num_cpus": 1},  # two actors, one core each
}


def child(backend: str, clients: int, rounds: int, data: str, threads: int) -> dict:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by Ray's workers
    import functools

    import torch

    torch.set_num_threads(threads)

    from lit_fed import FedAvg, FederatedClient, FederatedLoop
    from lit_fed.data import Dirichlet, FashionMNIST, FederatedDataModule, Synthetic
    from lit_fed.loop.backend import Sequential
    from lit_fed.models import FedAvgCNN, TinyCNN

    started = time.perf_counter()
    torch.manual_seed(0)
    optimizer = functools.partial(torch.optim.SGD, lr=0.005)
    if data == "fmnist":
        client = FederatedClient(FedAvgCNN(), optimizer=optimizer)
        dm = FederatedDataModule(FashionMNIST(), Dirichlet(alpha=0.1), num_clients=clients, batch_size=10, seed=0)
    else:
        client = FederatedClient(TinyCNN(in_channels=1, num_classes=4), optimizer=optimizer)
        dataset = Synthetic(num_classes=4, num_train=100 * clients, num_test=30 * clients, image_size=8)
        dm = FederatedDataModule(dataset, Dirichlet(alpha=1.0, min_size=10), num_clients=clients, batch_size=10, seed=0)
    loop = FederatedLoop(
        client,
        dm,
        FedAvg(),
        rounds=rounds,
        trainer_kwargs={"accelerator": "cpu", "devices": 1},
        run_dir=f"runs/benchmark_parallel/{backend.split(',')[0]}_{os.getpid()}",
        loggers=[],
        progress=False,
        checkpoint_every=0,
    )
    resources = BACKENDS[backend]
    if resources is None:
        engine = Sequential()
    else:
        from lit_fed.flower import FlowerSimulation

        engine = FlowerSimulation(client_resources=resources, ray_init_args={"num_cpus": 2})
    result = engine.run(loop)
    wall = time.perf_counter() - started
    per_round = [h["round_seconds"] for h in result.history]
    later = per_round[1:] or per_round
    return {
        "backend": backend,
        "first_s": per_round[0],
        "round_s": sum(later) / len(later),
        "rounds_s": per_round,
        "wall_s": wall,
        "startup_s": wall - sum(per_round),
        "global_acc": result.history[-1]["global_acc"],
        "personal_acc": result.history[-1]["personal_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", choices=["fmnist", "synthetic"], default="fmnist")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (sequential, each actor)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, args.clients, args.rounds, args.data, args.threads)), flush=True)
        return

    print(
        f"{args.clients} clients, {args.rounds} rounds, {args.data}, {os.cpu_count()} CPU cores, "
        f"{args.threads} torch thread(s) per process, load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for backend in BACKENDS:
        command = [sys.executable, __file__, "--child", backend, "--clients", str(args.clients)]
        command += ["--rounds", str(args.rounds), "--data", args.data, "--threads", str(args.threads)]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(f"{backend}: failed\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}", file=sys.stderr)
            sys.exit(1)
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
    base = rows[0]
    header = f"{'backend':38s} {'round 1 s':>9s} {'later s/round':>13s} {'ratio':>6s} {'wall s':>7s} {'ratio':>6s}"
    header += f" {'outside rounds s':>16s} {'acc':>6s}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['backend']:38s} {row['first_s']:9.2f} {row['round_s']:13.2f} {base['round_s'] / row['round_s']:6.2f}"
            f" {row['wall_s']:7.1f} {base['wall_s'] / row['wall_s']:6.2f} {row['startup_s']:16.1f}"
            f" {row['global_acc']:6.4f}"
        )
    print("per-round seconds: " + "; ".join(f"{r['backend']}: {[round(s, 2) for s in r['rounds_s']]}" for r in rows))
    print("ratio = sequential / backend (> 1: faster than sequential); acc = global accuracy after the last round")


if __name__ == "__main__":
    main()
