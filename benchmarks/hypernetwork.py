"""Seconds per round of the hypernetwork strategies for 10/50/100 registered clients with a fixed number sampled.

pFedHN and FedTP generate the *sampled* clients' tensors in one batched forward and step the hypernetwork from those
clients' updates only, so a round's server cost must not grow with the number of *registered* clients (only the
embedding table — N × d_e, with d_e = 1 + N/4 for pFedHN — and its weight decay do, negligibly). Two measurements:

* ``server``: one round of the strategy alone — ``configure_train`` (batched generation with the graph),
  ``aggregate_train`` (FedAvg of the shared keys), the server step (the vector–Jacobian product and the SGD step on
  φ) — with synthetic client updates ``θ̃ = θ − 10⁻³·ε``; median over ``--repeats`` rounds after one warm-up round.
* ``loop``: a whole FederatedLoop round (client fits included) on tiny synthetic data with an MLP target (pFedHN) or
  a tiny ViT (FedTP), evaluation off; median over the rounds after the first.

Prints seconds per round and the ratio to the 10-client setting (≈ 1 means no growth).

    python benchmarks/hypernetwork.py                       # pFedHN on FedAvgCNN (FMNIST), FedTP on vit_tiny
    python benchmarks/hypernetwork.py --fedtp-target vit_cifar --sampled 10 --repeats 5
    python benchmarks/hypernetwork.py --skip-loop --clients 10 50 100 500
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch

from lit_fed import FederatedLoop
from lit_fed.client.payloads import ClientUpdate
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.methods import FedTP, FedTPClient, HypernetworkStrategy, PFedHN, PFedHNClient
from lit_fed.models import MLP, FedAvgCNN, ViT, vit_cifar, vit_tiny
from lit_fed.server import ServerContext


def target_client(method: str, target: str) -> PFedHNClient | FedTPClient:
    torch.manual_seed(0)
    if method == "pfedhn":
        backbone = FedAvgCNN(in_channels=1, num_classes=10) if target == "fedavgcnn" else MLP(64, 4, hidden=(16,))
        return PFedHNClient(backbone)
    backbones = {"vit_tiny": vit_tiny, "vit_cifar": vit_cifar}
    return FedTPClient(backbones[target]())


def strategy_for(method: str) -> HypernetworkStrategy:
    return PFedHN() if method == "pfedhn" else FedTP()


def server_round_seconds(method: str, target: str, num_clients: int, sampled: int, repeats: int) -> float:
    client = target_client(method, target)
    strategy = strategy_for(method)
    strategy.setup(client.generated_shapes(), num_clients, seed=0)
    shared = client.shared_state()
    context = ServerContext(round=0)
    generator = torch.Generator().manual_seed(0)
    times = []
    for rnd in range(repeats + 1):
        ids = torch.randperm(num_clients, generator=generator)[:sampled].tolist()
        started = time.perf_counter()
        messages = strategy.configure_train(rnd, ids, shared)
        updates = [
            ClientUpdate(
                client_id=m.client_id,
                round=rnd,
                state=shared,
                num_samples=100,
                extras={k: v - 1e-3 * torch.randn(v.shape, generator=generator) for k, v in m.extras.items()},
            )
            for m in messages
        ]
        state = strategy.aggregate_train(rnd, updates, shared)
        for step in strategy.server_steps():  # the hypernetwork's step on φ
            step.run(state, updates, context)
        if rnd:  # the first round warms up allocators and kernels
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def loop_round_seconds(method: str, num_clients: int, sampled: int, rounds: int) -> float:
    torch.manual_seed(0)
    if method == "pfedhn":
        client: PFedHNClient | FedTPClient = PFedHNClient(
            MLP(64, 4, hidden=(16,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.05)
        )
    else:
        vit = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=2, heads=2, dim_head=8)
        client = FedTPClient(vit, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    datamodule = FederatedDataModule(
        Synthetic(num_classes=4, num_train=40 * num_clients, num_test=100, image_size=8),
        Dirichlet(alpha=1.0, min_size=10),
        num_clients=num_clients,
        batch_size=10,
    )
    loop = FederatedLoop(
        client,
        datamodule,
        strategy_for(method),
        rounds=rounds,
        local_steps=2,
        client_fraction=sampled / num_clients,
        eval_every=0,
        checkpoint_every=0,
        loggers=[],
        progress=False,
        run_dir=f"/tmp/lit_fed_hypernetwork_bench/{method}_{num_clients}",
    )
    result = loop.run()
    return statistics.median(h["round_seconds"] for h in result.history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100], help="registered clients")
    parser.add_argument("--sampled", type=int, default=5, help="clients sampled per round (fixed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed server rounds per setting")
    parser.add_argument("--loop-rounds", type=int, default=4, help="loop rounds per setting (the first is not timed)")
    parser.add_argument("--pfedhn-target", choices=["fedavgcnn", "mlp"], default="fedavgcnn")
    parser.add_argument("--fedtp-target", choices=["vit_tiny", "vit_cifar"], default="vit_tiny")
    parser.add_argument("--skip-loop", action="store_true", help="only the server-side measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    targets = {"pfedhn": args.pfedhn_target, "fedtp": args.fedtp_target}
    for method, target in targets.items():
        client = target_client(method, target)
        generated = sum(torch.Size(s).numel() for s in client.generated_shapes().values())
        print(f"\n{method} (target {target}: {generated:,} generated values per client), {args.sampled} sampled")
        header = f"{'registered':>10} | {'server s/round':>14} | {'ratio':>5}"
        if not args.skip_loop:
            header += f" | {'loop s/round':>12} | {'ratio':>5}"
        print(header)
        print("-" * len(header))
        base_server = base_loop = None
        for num_clients in args.clients:
            server = server_round_seconds(method, target, num_clients, args.sampled, args.repeats)
            base_server = base_server or server
            line = f"{num_clients:>10} | {server:>14.4f} | {server / base_server:>5.2f}"
            if not args.skip_loop:
                loop = loop_round_seconds(method, num_clients, args.sampled, args.loop_rounds)
                base_loop = base_loop or loop
                line += f" | {loop:>12.4f} | {loop / base_loop:>5.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
