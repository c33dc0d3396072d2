"""8-bit uniform quantization per tensor (min/max scale), with optional stochastic rounding.

Each tensor ``x`` is mapped to 256 evenly spaced levels between its minimum and maximum:
``scale = (max − min) / 255``, ``q = round((x − min) / scale) ∈ {0, …, 255}`` stored as ``uint8``, and
``x̂ = min + q · scale``. Deterministic rounding (nearest level) bounds the error by ``scale / 2`` per entry.
Stochastic rounding, ``q = floor((x − min) / scale + u)`` with ``u ~ U[0, 1)``, makes ``x̂`` unbiased,
``E[x̂] = x`` (the QSGD-style estimator of Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
Quantization and Encoding", NeurIPS 2017, §3.1, with one uniform grid per tensor).

Wire format of a quantized tensor: ``q`` (``uint8``, the tensor's shape) and ``range`` (float32 ``[min, scale]``).
The rebuilt tensor is float32 (the wrappers cast it back to the state's dtype).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.compression.base import Compressor

LEVELS = 255
"""The largest code: 8 bits give the codes 0 … 255."""


def quantize_uint8(
    tensor: Tensor, stochastic: bool = False, generator: torch.Generator | None = None
) -> tuple[Tensor, float, float]:
    """Uniform 8-bit quantization of one tensor on its own ``[min, max]`` range.

    Args:
        tensor: A floating-point tensor.
        stochastic: Round up with probability equal to the fractional part (unbiased) instead of to nearest.
        generator: Source of the rounding noise (CPU generator; stochastic rounding only).

    Returns:
        ``(codes, minimum, scale)``: ``uint8`` codes of ``tensor``'s shape, and the float32 grid origin and step
        (``scale`` is 0 for a constant tensor).
    """
    work = tensor.detach().float()
    if work.numel() == 0:
        return torch.zeros(work.shape, dtype=torch.uint8, device=work.device), 0.0, 0.0
    minimum = work.min()
    scale = (work.max() - minimum) / LEVELS
    low, step = float(minimum), float(scale)
    if step == 0.0:
        return torch.zeros(work.shape, dtype=torch.uint8, device=work.device), low, 0.0
    position = (work - minimum) / scale
    if stochastic:
        noise = torch.rand(work.shape, generator=generator, device="cpu").to(work.device)
        codes = torch.floor(position + noise)
    else:
        codes = torch.round(position)
    return codes.clamp_(0, LEVELS).to(torch.uint8), low, step


def dequantize_uint8(codes: Tensor, minimum: float, scale: float) -> Tensor:
    """``minimum + codes · scale`` as float32."""
    return codes.float() * scale + minimum


class Quantize8Bit(Compressor):
    """8-bit uniform quantization per tensor (min/max scale), deterministic or with seeded stochastic rounding.

    Args:
        stochastic: Use unbiased stochastic rounding (drawn from the generator the caller passes; the wrappers
            derive it from ``(seed, round, client)`` so runs and resumes are reproducible).
        dense_max_dim: Tensors with ``dim() <= dense_max_dim`` go dense (1: biases and norm parameters;
            0 quantizes them too, scalars excepted).
    """

    scheme = "q8"

    def __init__(self, stochastic: bool = False, dense_max_dim: int = 1) -> None:
        super().__init__(dense_max_dim)
        self.stochastic = stochastic

    @override
    def compress_tensor(self, tensor: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """``q`` (uint8 codes) and ``range`` (float32 ``[min, scale]``)."""
        codes, minimum, scale = quantize_uint8(tensor, self.stochastic, generator)
        return {"q": codes, "range": torch.tensor([minimum, scale], dtype=torch.float32)}

    @override
    def decompress_tensor(self, parts: Mapping[str, Tensor]) -> Tensor:
        """``min + q · scale`` (float32)."""
        minimum, scale = (float(v) for v in parts["range"].tolist())
        return dequantize_uint8(parts["q"], minimum, scale)

    def __repr__(self) -> str:
        return f"Quantize8Bit(stochastic={self.stochastic}, dense_max_dim={self.dense_max_dim})"
