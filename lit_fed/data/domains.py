"""A domain-shift federation: each client holds one "domain" made by a fixed style transform of the images.

Domain generalization (FedDG, Liu et al. 2021) trains on clients that each hold data from one domain (a
hospital, a scanner) and evaluates on a domain no client holds. :class:`DomainShiftDataModule` builds that
setting from any image dataset (Fashion-MNIST in ``configs/data/fmnist_domains.yaml``): client ``k``'s train
and test splits are restyled by ``styles[k mod len(styles)]`` and the global test set by the held-out
``test_style``. Labels and the partition are those of :class:`~lit_fed.data.datamodule.FederatedDataModule`
(IID is the natural partition here: the domains are the heterogeneity).

A style is a string ``"name"`` or ``"name:value"``, and styles compose with ``"+"`` (applied left to right),
e.g. ``"invert+blur:1.0"``. Styles act on images in ``[0, 1]``, before the dataset's normalization (whose
statistics are the source's, identical for every domain):

=============  ==========================================================================
``identity``   unchanged
``invert``     ``1 − x``
``contrast:f`` ``0.5 + f (x − 0.5)`` (``f < 1`` lowers the contrast)
``brightness:d`` ``x + d``
``gamma:g``    ``x^g`` (``g > 1`` darkens, ``g < 1`` brightens)
``blur:s``     Gaussian blur with standard deviation ``s`` pixels (reflect padding)
``solarize:t`` ``x`` below ``t``, ``1 − x`` above
=============  ==========================================================================

Results are clipped to ``[0, 1]``. Every style is deterministic, so the data stay a pure function of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.data.datamodule import FederatedDataModule
from lit_fed.data.datasets import DatasetSource
from lit_fed.data.partition import IID, Partitioner

__all__ = ["STYLES", "DomainShiftDataModule", "apply_style", "parse_style"]


def _blur_matrix(size: int, kernel: Tensor) -> Tensor:
    """``(size, size)`` matrix ``B`` with ``x @ B`` = 1-D convolution of ``x`` with ``kernel`` under reflect padding."""
    radius = kernel.numel() // 2
    matrix = torch.zeros(size, size, dtype=kernel.dtype)
    for i in range(size):
        for tap in range(-radius, radius + 1):
            j = i + tap
            j = -j if j < 0 else (2 * (size - 1) - j if j >= size else j)  # reflect without repeating the edge
            matrix[j, i] += kernel[tap + radius]
    return matrix


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images (radius ``⌈3σ⌉``, at most ``min(H, W) − 1``; reflect).

    Each 1-D pass is a matrix product with a banded matrix (much faster on CPU than a thin ``conv2d``).
    """
    height, width = images.shape[-2:]
    radius = min(math.ceil(3 * sigma), height - 1, width - 1) if sigma > 0 else 0
    if radius < 1:
        return images
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    rows = _blur_matrix(height, kernel).to(images.dtype)
    cols = _blur_matrix(width, kernel).to(images.dtype)
    return rows.T @ (images @ cols)


STYLES: dict[str, tuple[Callable[[Tensor, float], Tensor], float | None]] = {
    "identity": (lambda x, _: x, None),
    "invert": (lambda x, _: 1.0 - x, None),
    "contrast": (lambda x, f: 0.5 + f * (x - 0.5), 0.5),
    "brightness": (lambda x, d: x + d, 0.3),
    "gamma": (lambda x, g: x.clamp(min=0.0) ** g, 2.0),
    "blur": (_gaussian_blur, 1.0),
    "solarize": (lambda x, t: torch.where(x < t, x, 1.0 - x), 0.5),
}
"""Style name → (function ``(images in [0, 1], value) -> images``, default value or ``None`` if it takes none)."""


def parse_style(spec: str) -> list[tuple[str, float | None]]:
    """``"name[:value][+name[:value]…]"`` → ``[(name, value), …]`` (defaults filled in).

    Raises:
        ValueError: An unknown style name or a value that is not a number.
    """
    steps: list[tuple[str, float | None]] = []
    for part in spec.split("+"):
        name, _, raw = part.strip().partition(":")
        if name not in STYLES:
            raise ValueError(f"unknown style '{name}' in '{spec}'; known styles: {sorted(STYLES)}")
        default = STYLES[name][1]
        if raw:
            if default is None:
                raise ValueError(f"style '{name}' takes no value, got '{part}' in '{spec}'")
            try:
                value: float | None = float(raw)
            except ValueError as error:
                raise ValueError(f"style '{part}' in '{spec}': '{raw}' is not a number") from error
        else:
            value = default
        steps.append((name, value))
    return steps


def apply_style(images: Tensor, spec: str) -> Tensor:
    """Applies a style (see the module docstring) to ``(N, C, H, W)`` images in ``[0, 1]``; returns ``[0, 1]``."""
    out = images
    for name, value in parse_style(spec):
        out = STYLES[name][0](out, value if value is not None else 0.0)
    return out.clamp(0.0, 1.0)


class DomainShiftDataModule(FederatedDataModule):
    """A federated datamodule whose clients each hold one style "domain", tested on a held-out style.

    Everything else (partition, 75/25 local splits, loaders, determinism) is
    :class:`~lit_fed.data.datamodule.FederatedDataModule`'s; after its setup the images are restyled in place:
    client ``k``'s train and test splits with ``styles[k mod len(styles)]`` (so the personalized accuracy is
    measured in the client's own domain) and the global test set with ``test_style`` (the unseen domain, so the
    global accuracy measures domain generalization). The pooled plain-Lightning loaders serve the restyled
    clients' data.

    Args:
        dataset: Image source (``None``: Fashion-MNIST).
        partitioner: Partition of the training pool (``None``: IID — the domains are the heterogeneity).
        num_clients: Number of clients; more clients than styles cycle through the styles.
        batch_size: Training batch size.
        eval_batch_size: Test batch size.
        train_fraction: Local train fraction.
        imbalance_ratio: Optional long-tail subsampling (see the base class).
        seed: Run seed.
        augment: Random crop and flip on training batches (see the base class).
        styles: One style per domain (see the module docstring).
        test_style: The held-out style of the global test set; it must not be one of ``styles``.

    Raises:
        ValueError: An unknown style, no styles, or a ``test_style`` that some client holds.
    """

    def __init__(
        self,
        dataset: DatasetSource | None = None,
        partitioner: Partitioner | None = None,
        num_clients: int = 5,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        train_fraction: float = 0.75,
        imbalance_ratio: float | None = None,
        seed: int = 0,
        augment: bool = False,
        styles: Sequence[str] = ("identity", "invert", "contrast:0.4", "blur:1.0", "gamma:2.5"),
        test_style: str = "gamma:0.4",
    ) -> None:
        super().__init__(
            dataset,
            IID() if partitioner is None else partitioner,
            num_clients,
            batch_size,
            eval_batch_size,
            train_fraction,
            imbalance_ratio,
            seed,
            augment,
        )
        styles = list(styles)
        if not styles:
            raise ValueError("DomainShiftDataModule: styles must name at least one domain")
        for spec in [*styles, test_style]:
            parse_style(spec)
        if test_style in styles:
            raise ValueError(f"DomainShiftDataModule: test_style '{test_style}' is also a client's style; hold it out")
        self.styles = styles
        self.test_style = test_style

    def client_style(self, client_id: int) -> str:
        """The style (domain) of a client."""
        self._check_client(client_id)
        return self.styles[client_id % len(self.styles)]

    @override
    def setup(self, stage: str | None = None) -> None:
        """Builds the federation (base class), then restyles every client's splits and the global test set."""
        if self._built is not None:
            return
        super().setup(stage)
        if not self.built.global_test:
            self._built = None
            raise ValueError(
                "DomainShiftDataModule: the source has no test set to restyle as the held-out domain; use a "
                "dataset with a test set"
            )
        mean = torch.tensor(self.built.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.built.std, dtype=torch.float32).view(1, -1, 1, 1)

        def restyle(images: Tensor, spec: str, chunk: int = 8192) -> None:
            for start in range(0, images.shape[0], chunk):
                block = images[start : start + chunk]
                block.copy_((apply_style(block * std + mean, spec) - mean) / std)

        for client in range(self.num_clients):
            spec = self.client_style(client)
            if spec == "identity":
                continue
            restyle(self.built.images[self._train_slice(client)], spec)
            restyle(self.built.images[self._test_slice(client)], spec)
        restyle(self.built.test_images, self.test_style)
