"""Writes Fashion-MNIST, split among clients, as a PFLlib-layout folder: train/<i>.npz, test/<i>.npz, config.json.

The split follows PFLlib's Fashion-MNIST recipe (Zhang et al. 2023): the training and test sets are merged (70 000
images), split among the clients by per-class Dirichlet(alpha) proportions (at least ``--min-size`` samples each),
and every client's samples are split 75/25 (stratified) into its train and test files. It is computed with
lit_fed's own partition functions, reading the offline IDX files (no download). Each file holds plain arrays ``x``
(uint8, N×1×28×28) and ``y`` (int64); ``--pickled`` writes PFLlib's own encoding instead (a pickled dict under
``data``, read with ``PFLlibFolder(allow_pickle=True)``).

    python recipes/bring_your_own_split/make_pfllib_folder.py --out data/fmnist_pfllib
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lit_fed.data import FashionMNIST, PFLlibFolder, dirichlet_partition, split_train_test, write_pfllib_folder
from lit_fed.data.datasets import DatasetSource


def make_folder(
    out: str | Path,
    num_clients: int = 20,
    alpha: float = 0.1,
    min_size: int = 10,
    seed: int = 0,
    train_fraction: float = 0.75,
    merge_test: bool = True,
    pickled: bool = False,
    source: DatasetSource | None = None,
) -> Path:
    """Splits ``source`` (default: Fashion-MNIST) among ``num_clients`` and writes the PFLlib layout to ``out``."""
    data = (source or FashionMNIST(download=False)).load()
    images, labels = data.train_x.numpy(), data.train_y.numpy()
    if merge_test:
        images = np.concatenate([images, data.test_x.numpy()])
        labels = np.concatenate([labels, data.test_y.numpy()])
    parts = dirichlet_partition(labels, num_clients, alpha, seed, min_size=min_size)
    splits = [split_train_test(part, labels, train_fraction, seed=seed, client_id=k) for k, part in enumerate(parts)]
    train = [(images[tr], labels[tr]) for tr, _ in splits]
    test = [(images[te], labels[te]) for _, te in splits]
    config = {
        "source": data.name,
        "merged_test_set": merge_test,
        "partition": f"dirichlet(alpha={alpha}, min_size={min_size})",
        "train_fraction": train_fraction,
        "seed": seed,
    }
    out = write_pfllib_folder(out, train, test, num_classes=data.num_classes, config=config)
    if pickled:  # PFLlib's own encoding: np.savez_compressed(f, data={"x": ..., "y": ...})
        for kind, pairs in (("train", train), ("test", test)):
            for client, (x, y) in enumerate(pairs):
                with open(out / kind / f"{client}.npz", "wb") as handle:
                    np.savez_compressed(handle, data={"x": x, "y": y})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/fmnist_pfllib", help="output folder (default: %(default)s)")
    parser.add_argument("--num-clients", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration (default: %(default)s)")
    parser.add_argument("--min-size", type=int, default=10, help="minimum samples per client")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=0.75)
    parser.add_argument("--no-merge-test", action="store_true", help="split only the 60 000 training images")
    parser.add_argument("--pickled", action="store_true", help="PFLlib's pickled encoding instead of plain x/y")
    args = parser.parse_args()
    start = time.perf_counter()
    out = make_folder(
        args.out,
        args.num_clients,
        args.alpha,
        args.min_size,
        args.seed,
        args.train_fraction,
        not args.no_merge_test,
        args.pickled,
    )
    clients = PFLlibFolder(str(out), allow_pickle=args.pickled).load()  # read back: the folder is valid
    sizes = [train.size + test.size for train, test in clients.splits]
    print(
        f"wrote {clients.num_clients} clients ({min(sizes)}..{max(sizes)} samples each, {sum(sizes)} in all) to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
