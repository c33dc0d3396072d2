"""Per-round overhead of lit_fed against a plain PyTorch loop doing the identical work.

The same rounds (FedAvgCNN, Fashion-MNIST Dir(0.1), 20 clients, 1 local epoch, SGD lr 0.005) run by lit_fed's
FederatedLoop (one Lightning Trainer.fit per client) and by a hand-written loop over the identical batches (the
same client loaders) with the identical SGD steps and the same float64 FedAvg, for three methods:

* ``fedavg`` — the whole model is shared;
* ``fedrep`` — FedRep as PFLlib runs it: a personal head trained for 1 epoch with the body frozen, then the
  shared body for 1 epoch with the head frozen (one optimizer over both, as lit_fed builds it once per fit);
* ``ditto`` — Ditto (λ = 0.1): per batch, the global copy on CE and the personal model on CE plus
  λ/2 ‖v − w_g‖², one SGD step over both.

One process, the two sides interleaved, best of ``--repeats`` per side. Prints, per method and batch size, the
wall-time ratio lit_fed / plain and the largest difference between the two final global models (0 proves the
same work was done). With ``--whole-round`` (default for FedAvg) lit_fed also runs with evaluation every round
(global accuracy and every client's personalized accuracy) and that whole round is compared with the plain
loop's training alone; the round's own timing split (``train_seconds``, ``evaluate_seconds``, ...) is shown.

    python benchmarks/overhead.py                                 # fedavg, fedrep, ditto at batch 10 and 64
    python benchmarks/overhead.py --methods fedavg --batch-size 10 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_fed import FedAvg, FederatedClient, FederatedLoop, Head, LocalSchedule, Phase
from lit_fed.data import Dirichlet, FashionMNIST, FederatedDataModule
from lit_fed.methods import DittoClient
from lit_fed.models import FedAvgCNN

METHODS = ("fedavg", "fedrep", "ditto")
DITTO_LAM = 0.1
LR = 0.005


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR)


def build(method: str, batch_size: int, seed: int, num_clients: int) -> tuple[FederatedClient, FederatedDataModule]:
    torch.manual_seed(seed)
    backbone = FedAvgCNN()
    if method == "fedavg":
        client = FederatedClient(backbone, optimizer=sgd)
    elif method == "fedrep":
        schedule = LocalSchedule([Phase("personal", epochs=1), Phase("shared")])
        client = FederatedClient(backbone, personal=[Head()], schedule=schedule, optimizer=sgd)
    elif method == "ditto":
        client = DittoClient(backbone, lam=DITTO_LAM, optimizer=sgd)
    else:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    dm = FederatedDataModule(FashionMNIST(), Dirichlet(0.1), num_clients=num_clients, batch_size=batch_size, seed=seed)
    dm.setup()
    return client, dm


def run_lit_fed(
    client: FederatedClient, dm: FederatedDataModule, rounds: int, args: argparse.Namespace, evaluate: bool
) -> tuple[float, dict[str, Tensor], list[dict[str, Any]]]:
    loop = FederatedLoop(
        client,
        dm,
        FedAvg(),
        rounds=rounds,
        eval_every=1 if evaluate else 0,
        checkpoint_every=0,
        loggers=[],
        progress=False,
        trainer_kwargs={"accelerator": args.accelerator, "devices": 1, "precision": args.precision},
        run_dir="/tmp/lit_fed_overhead",
    )
    start = time.perf_counter()
    result = loop.run()
    return time.perf_counter() - start, result.global_state, result.history


class PlainStep:
    """One batch of the plain loop: forward, loss, backward, SGD step (AMP when ``precision`` asks)."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device = device
        self.dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def __call__(self, optimizer: torch.optim.Optimizer, loss_fn: Any, x: Tensor, y: Tensor) -> None:
        x, y = x.to(self.device), y.to(self.device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = loss_fn(x, y)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


def fedavg_mean(states: list[dict[str, Tensor]], counts: list[int]) -> dict[str, Tensor]:
    total = sum(counts)
    return {
        k: sum((n / total) * s[k].double() for n, s in zip(counts, states, strict=True)).to(v.dtype)
        for k, v in states[0].items()
    }


def run_plain(
    method: str, client: FederatedClient, dm: FederatedDataModule, rounds: int, args: argparse.Namespace
) -> tuple[float, dict[str, Tensor]]:
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    step = PlainStep(device, args.precision)
    model = copy.deepcopy(client.backbone).to(device)
    head_keys = {f"fc.{k}" for k in model.fc.state_dict()} if method == "fedrep" else set()
    global_state = {k: v.clone() for k, v in model.state_dict().items() if k not in head_keys}
    personal: dict[int, dict[str, Tensor]] = {}  # FedRep's heads / Ditto's personal models, per client
    initial_personal = (
        {k: v.clone() for k, v in model.state_dict().items() if k in head_keys}
        if method == "fedrep"
        else {k: v.clone() for k, v in model.state_dict().items()}
    )
    v_model = copy.deepcopy(model) if method == "ditto" else None
    start = time.perf_counter()
    for rnd in range(rounds):
        states, counts = [], []
        for cid in range(dm.num_clients):
            loader = dm.client_train_dataloader(cid, rnd)
            if method == "fedavg":
                model.load_state_dict(global_state)
                optimizer = sgd(model.parameters())
                for x, y in loader:
                    step(optimizer, lambda x, y: F.cross_entropy(model(x), y), x, y)
            elif method == "fedrep":
                model.load_state_dict({**global_state, **personal.get(cid, initial_personal)})
                optimizer = sgd(model.parameters())
                for part in ("head", "body"):
                    for name, p in model.named_parameters():
                        p.requires_grad_((name in head_keys) == (part == "head"))
                    for x, y in loader:
                        step(optimizer, lambda x, y: F.cross_entropy(model(x), y), x, y)
                for p in model.parameters():
                    p.requires_grad_(True)
                personal[cid] = {k: v.detach().clone() for k, v in model.state_dict().items() if k in head_keys}
            else:
                assert v_model is not None
                model.load_state_dict(global_state)
                v_model.load_state_dict(personal.get(cid, initial_personal))
                anchors = [p.detach().to(torch.float32).clone() for p in model.parameters()]
                optimizer = sgd([*model.parameters(), *v_model.parameters()])

                def ditto_loss(x: Tensor, y: Tensor, anchors: list[Tensor] = anchors) -> Tensor:
                    loss = F.cross_entropy(model(x), y) + F.cross_entropy(v_model(x), y)
                    total = torch.zeros((), device=x.device, dtype=torch.float32)
                    for param, anchor in zip(v_model.parameters(), anchors, strict=True):
                        total = total + (param.float() - anchor).pow(2).sum()
                    return loss + 0.5 * DITTO_LAM * total

                for x, y in loader:
                    step(optimizer, ditto_loss, x, y)
                personal[cid] = {k: v.detach().clone() for k, v in v_model.state_dict().items()}
            states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in head_keys})
            counts.append(dm.client_num_train_samples(cid))
        global_state = fedavg_mean(states, counts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, global_state


def max_difference(lit_state: dict[str, Tensor], plain_state: dict[str, Tensor]) -> float:
    return max(
        (lit_state[f"backbone.{k}"].double() - v.double()).abs().max().item()
        for k, v in plain_state.items()
        if torch.is_floating_point(v)
    )


def bench(method: str, batch_size: int, args: argparse.Namespace, whole_round: bool) -> dict[str, Any]:
    client, dm = build(method, batch_size, args.seed, args.num_clients)
    initial = copy.deepcopy(client.state_dict())
    epochs = 2 if method == "fedrep" else 1
    steps = sum(-(-dm.client_num_train_samples(c) // batch_size) for c in range(dm.num_clients)) * epochs
    steps *= args.rounds
    times: dict[str, list[float]] = {"plain": [], "lit_fed": [], "whole_round": []}
    history: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        client.load_state_dict(initial)
        t_plain, plain_state = run_plain(method, client, dm, args.rounds, args)
        client.load_state_dict(initial)
        t_lit, lit_state, _ = run_lit_fed(client, dm, args.rounds, args, evaluate=False)
        times["plain"].append(t_plain)
        times["lit_fed"].append(t_lit)
        if whole_round:
            client.load_state_dict(initial)
            t_round, _, history = run_lit_fed(client, dm, args.rounds, args, evaluate=True)
            times["whole_round"].append(t_round)
    best = {k: min(v) for k, v in times.items() if v}
    row = {"method": method, "batch": batch_size, "steps": steps, "diff": max_difference(lit_state, plain_state)}
    row.update({f"t_{k}": v for k, v in best.items()})
    row["runs"] = times
    row["ratio"] = best["lit_fed"] / best["plain"]
    if whole_round:
        row["round_ratio"] = best["whole_round"] / best["plain"]
        row["split"] = {
            key.removesuffix("_seconds"): sum(h[key] for h in history)
            for key in ("train_seconds", "aggregate_seconds", "evaluate_seconds")
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[10, 64])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-clients", type=int, default=20)
    parser.add_argument(
        "--whole-round",
        nargs="*",
        default=["fedavg"],
        choices=METHODS,
        help="methods whose whole round (training + evaluation of every client) is also timed",
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"setting: FedAvgCNN, Fashion-MNIST Dir(0.1), {args.num_clients} clients, 1 local epoch, SGD lr {LR}, "
        f"{args.rounds} round(s), {args.accelerator} {args.precision}, torch threads {torch.get_num_threads()}, "
        f"best of {args.repeats}",
        flush=True,
    )
    for batch_size in args.batch_size:
        for method in args.methods:
            row = bench(method, batch_size, args, method in args.whole_round)
            runs = {k: [round(t, 2) for t in v] for k, v in row["runs"].items() if v}
            print(
                f"{method:7s} batch {batch_size:3d}: plain {row['t_plain']:7.2f} s "
                f"({1e3 * row['t_plain'] / row['steps']:.3f} ms/step), lit_fed {row['t_lit_fed']:7.2f} s, "
                f"ratio lit_fed/plain = {row['ratio']:.3f}, max |w_lit_fed - w_plain| = {row['diff']:.3e}  runs {runs}",
                flush=True,
            )
            if "round_ratio" in row:
                split = ", ".join(f"{k} {v:.2f} s" for k, v in row["split"].items())
                evaluate_share = row["split"]["evaluate"] / max(row["split"]["train"], 1e-12)
                print(
                    f"{'':7s} batch {batch_size:3d}: whole round (training + evaluation of every client) "
                    f"{row['t_whole_round']:7.2f} s, ratio to plain training = {row['round_ratio']:.3f}; "
                    f"split {split}; evaluation / training = {evaluate_share:.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
