"""Per-round overhead of lit_fed against a plain PyTorch loop doing the identical work.

The same FedAvg rounds (FedAvgCNN, Fashion-MNIST Dir(0.1), 20 clients, 1 local epoch, SGD lr 0.005) run by
lit_fed's FederatedLoop (one Lightning Trainer.fit per client) and by a hand-written loop over the identical
batches (the same client loaders) with the identical SGD steps and the same float64 FedAvg. One process, the
two interleaved, best of ``--repeats`` per side. Prints the wall-time ratio lit_fed / plain and the largest
difference between the two final global models (≈0 proves the same work was done).

    python benchmarks/overhead.py --batch-size 10 --rounds 1
    python benchmarks/overhead.py --batch-size 64 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from lit_fed import FedAvg, FederatedClient, FederatedLoop
from lit_fed.data import Dirichlet, FashionMNIST, FederatedDataModule
from lit_fed.models import FedAvgCNN


def build(batch_size: int, seed: int) -> tuple[FederatedClient, FederatedDataModule]:
    torch.manual_seed(seed)
    client = FederatedClient(FedAvgCNN(), optimizer=lambda p: torch.optim.SGD(p, lr=0.005))
    dm = FederatedDataModule(FashionMNIST(), Dirichlet(0.1), num_clients=20, batch_size=batch_size, seed=seed)
    dm.setup()
    return client, dm


def run_lit_fed(client, dm, rounds: int, accelerator: str, precision: str) -> tuple[float, dict]:
    loop = FederatedLoop(
        client,
        dm,
        FedAvg(),
        rounds=rounds,
        eval_every=0,
        checkpoint_every=0,
        loggers=[],
        progress=False,
        trainer_kwargs={"accelerator": accelerator, "devices": 1, "precision": precision},
        run_dir="/tmp/lit_fed_overhead",
    )
    start = time.perf_counter()
    result = loop.run()
    return time.perf_counter() - start, result.global_state


def run_plain(client, dm, rounds: int, device: torch.device, precision: str) -> tuple[float, dict]:
    model = copy.deepcopy(client.backbone).to(device)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    start = time.perf_counter()
    for rnd in range(rounds):
        states, counts = [], []
        for cid in range(dm.num_clients):
            model.load_state_dict(global_state)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.005)
            for x, y in dm.client_train_dataloader(cid, rnd):
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss = F.cross_entropy(model(x), y)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            counts.append(dm.client_num_train_samples(cid))
        total = sum(counts)
        global_state = {
            k: sum((n / total) * s[k].double() for n, s in zip(counts, states, strict=True)).to(v.dtype)
            for k, v in states[0].items()
        }
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, global_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    client, dm = build(args.batch_size, args.seed)
    initial = copy.deepcopy(client.state_dict())
    steps = sum(-(-dm.client_num_train_samples(c) // args.batch_size) for c in range(dm.num_clients)) * args.rounds
    lit_times, plain_times = [], []
    for _ in range(args.repeats):
        client.load_state_dict(initial)
        t_plain, plain_state = run_plain(client, dm, args.rounds, device, args.precision)
        client.load_state_dict(initial)
        t_lit, lit_state = run_lit_fed(client, dm, args.rounds, args.accelerator, args.precision)
        plain_times.append(t_plain)
        lit_times.append(t_lit)
    diff = max(
        (lit_state[f"backbone.{k}"].double() - v.double()).abs().max().item()
        for k, v in plain_state.items()
        if torch.is_floating_point(v)
    )
    t_lit, t_plain = min(lit_times), min(plain_times)
    print(
        f"setting: FedAvgCNN, Fashion-MNIST Dir(0.1), 20 clients, batch {args.batch_size}, 1 local epoch, "
        f"SGD lr 0.005, {args.rounds} round(s), {steps} SGD steps, {args.accelerator} {args.precision}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"plain PyTorch : {t_plain:8.2f} s  ({1e3 * t_plain / steps:.3f} ms/step)   "
        f"runs {[round(t, 2) for t in plain_times]}"
    )
    print(
        f"lit_fed       : {t_lit:8.2f} s  ({1e3 * t_lit / steps:.3f} ms/step)   runs {[round(t, 2) for t in lit_times]}"
    )
    print(f"ratio lit_fed/plain = {t_lit / t_plain:.3f}")
    print(f"max |w_lit_fed - w_plain| = {diff:.3e}")


if __name__ == "__main__":
    main()
