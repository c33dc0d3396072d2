"""Compression throughput and measured compression ratios on a ResNet-18-sized update.

The update is ``g = w' − w`` for ``w`` = ``lit_fed.models.resnet18()``'s state dict (11.2 M float entries,
44.7 MB) and ``w'`` a small random perturbation (``--update noise``: i.i.d. ``N(0, 1e-3²)`` per entry). With
``--update lowrank`` every matrix-shaped update is rank 8 plus 1 % noise instead — closer to real SGD updates,
which are far from i.i.d. and on which SVD actually compresses (on i.i.d. noise it cannot, and every tensor
falls back to dense). Integer buffers are part of the state and travel dense.

For each scheme the table shows: wire bytes (``encoded_size`` of the payload = ``len(encode_tensors(...))``,
indices/values/metadata included), the ratio dense bytes / compressed bytes, and compress / decompress
throughput in MB/s of dense float32 update data (best of ``--repeats``), all measured in this one run.

    python benchmarks/compression.py                       # all schemes, noise update
    python benchmarks/compression.py --update lowrank --repeats 3 --threads 4
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_fed.client.serialization import encode_tensors
from lit_fed.compression import SVD, Compressor, Dense, Quantize8Bit, TopK
from lit_fed.models import resnet18


def make_update(kind: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = resnet18().state_dict()
    generator = torch.Generator().manual_seed(seed)
    update = {}
    for key, value in state.items():
        if not torch.is_floating_point(value):
            update[key] = value
            continue
        noise = 1e-3 * torch.randn(value.shape, generator=generator)
        if kind == "lowrank" and value.dim() >= 2:
            rows = value.shape[0]
            cols = value.numel() // rows
            rank = min(8, rows, cols)
            low = torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)
            noise = 1e-3 * low.view(value.shape) / rank**0.5 + 1e-2 * noise
        update[key] = noise
    return update


SCHEMES: dict[str, Compressor] = {
    "dense": Dense(),
    "top-k 90% (sampled)": TopK(0.9),
    "top-k 99% (sampled)": TopK(0.99),
    "top-k 99.9% (sampled)": TopK(0.999),
    "top-k 99% (exact)": TopK(0.99, exact=True),
    "SVD T=0.95": SVD(energy=0.95),
    "SVD T=0.98": SVD(energy=0.98),
    "8-bit": Quantize8Bit(),
    "8-bit stochastic": Quantize8Bit(stochastic=True),
}


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", choices=["noise", "lowrank"], default="noise")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--schemes", nargs="*", default=list(SCHEMES), help=f"subset of {list(SCHEMES)}".replace("%", "%%")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-bytes", action="store_true", help="also serialize each payload and check its size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    update = {k: v.to(device) for k, v in make_update(args.update, args.seed).items()}
    float_mb = sum(v.numel() * v.element_size() for v in update.values() if torch.is_floating_point(v)) / 1e6
    entries = sum(v.numel() for v in update.values() if torch.is_floating_point(v))
    dense_bytes = Dense().compress(update).nbytes

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(
        f"ResNet-18 update ({args.update}): {entries / 1e6:.2f} M float entries, {float_mb:.1f} MB float32, "
        f"dense payload {dense_bytes / 1e6:.2f} MB; device {device}, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}"
    )
    print()
    print("| scheme | wire MB | ratio vs dense | compress MB/s | decompress MB/s | max abs error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.schemes:
        compressor = SCHEMES[name]
        generator = torch.Generator().manual_seed(args.seed)
        payload = compressor.compress(update, generator)  # warm-up and the measured payload

        def compress(compressor: Compressor = compressor) -> None:
            compressor.compress(update, torch.Generator().manual_seed(args.seed))
            sync()

        def decompress(compressor: Compressor = compressor, payload=payload) -> None:
            compressor.decompress(payload)
            sync()

        t_compress = best_time(compress, args.repeats)
        t_decompress = best_time(decompress, args.repeats)
        nbytes = payload.nbytes
        if args.check_bytes:
            assert nbytes == len(encode_tensors(payload.tensors)), name
        rebuilt = compressor.decompress(payload)
        error = max(
            float((rebuilt[k].float() - v.float()).abs().max()) for k, v in update.items() if torch.is_floating_point(v)
        )
        print(
            f"| {name} | {nbytes / 1e6:.3f} | {dense_bytes / nbytes:.1f}x | {float_mb / t_compress:,.0f} | "
            f"{float_mb / t_decompress:,.0f} | {error:.2e} |"
        )


if __name__ == "__main__":
    main()
