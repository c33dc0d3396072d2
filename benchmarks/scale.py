"""Memory and time as the number of registered clients grows (10, 100, 1,000, 10,000).

FedAvgCNN with a personal head (FedPer-style: ``personal=[Head()]``) on Fashion-MNIST split IID among N
clients; each round samples 10 clients. Each N runs in a fresh subprocess so its peak RSS is its own. Prints
peak RSS, the client-state store's size, what N full model copies would take, seconds per sampled client,
and the time of one personalized evaluation over all N clients.

    python benchmarks/scale.py            # 10, 100, 1000, 10000 clients
    python benchmarks/scale.py --clients 10 100
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SAMPLED_PER_ROUND = 10


def child(num_clients: int, rounds: int) -> dict:
    import torch

    from lit_fed import FedAvg, FederatedClient, FederatedLoop, Head
    from lit_fed.data import IID, FashionMNIST, FederatedDataModule
    from lit_fed.models import FedAvgCNN

    torch.manual_seed(0)
    client = FederatedClient(FedAvgCNN(), personal=[Head()])
    dm = FederatedDataModule(FashionMNIST(), IID(), num_clients=num_clients, batch_size=10, seed=0)
    dm.setup()
    rss_after_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loop = FederatedLoop(
        client,
        dm,
        FedAvg(),
        rounds=rounds,
        client_fraction=SAMPLED_PER_ROUND / num_clients,
        eval_every=0,
        checkpoint_every=0,
        loggers=[],
        progress=False,
        trainer_kwargs={"accelerator": "cpu"},
        run_dir="/tmp/lit_fed_scale",
    )
    result = loop.run()
    round_seconds = sum(h["round_seconds"] for h in result.history)  # the rounds, not the end-of-run report
    train_seconds = sum(h["train_seconds"] for h in result.history)
    # every client gets a personal state: touch all of them as a long run would
    store = loop.runner.worker.store
    personal = loop.client.personal_state()
    for cid in range(num_clients):
        if cid not in store:
            store.put(cid, personal, 0)
    start = time.perf_counter()
    metrics = loop.evaluate()
    eval_seconds = time.perf_counter() - start
    model_bytes = sum(t.numel() * t.element_size() for t in client.state_dict().values())
    return {
        "clients": num_clients,
        "sampled": rounds * SAMPLED_PER_ROUND,
        "s_per_sampled_client": round_seconds / (rounds * SAMPLED_PER_ROUND),
        "train_s_per_sampled_client": train_seconds / (rounds * SAMPLED_PER_ROUND),
        "eval_all_clients_s": eval_seconds,
        "store_mb": store.nbytes() / 1e6,
        "full_copies_mb": num_clients * model_bytes / 1e6,
        "rss_after_data_mb": rss_after_setup,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "personal_acc": metrics["personal_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rounds)))
        return
    rows = []
    for n in args.clients:
        out = (
            subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--rounds", str(args.rounds)],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append(json.loads(out))
    print(
        f"FedAvgCNN + personal head, Fashion-MNIST IID, {SAMPLED_PER_ROUND} sampled clients/round, "
        f"{args.rounds} rounds, CPU"
    )
    header = (
        f"{'clients':>8} {'peak RSS MB':>12} {'RSS after data MB':>18} {'store MB':>9} "
        f"{'N full copies MB':>17} {'s/sampled client':>17} {'of it training':>15} {'eval all clients s':>19}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['clients']:>8} {r['peak_rss_mb']:>12.0f} {r['rss_after_data_mb']:>18.0f} {r['store_mb']:>9.2f} "
            f"{r['full_copies_mb']:>17.1f} {r['s_per_sampled_client']:>17.3f} "
            f"{r['train_s_per_sampled_client']:>15.3f} {r['eval_all_clients_s']:>19.2f}"
        )
    base = rows[0]
    for r in rows[1:]:
        print(
            f"{base['clients']}→{r['clients']} clients: peak RSS x{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}, "
            f"s/sampled client x{r['s_per_sampled_client'] / base['s_per_sampled_client']:.2f}"
        )


if __name__ == "__main__":
    main()
