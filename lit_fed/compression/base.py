"""The compressor interface: named tensors in, a :class:`CompressedPayload` (named tensors on the wire) out.

A compressor turns a mapping ``name -> tensor`` into a payload that is itself a flat mapping of tensors, so the
library's wire format (:func:`lit_fed.client.serialization.encode_tensors`) serializes it and
:func:`~lit_fed.client.serialization.encoded_size` gives its exact size — the byte count reported by the
wrappers in :mod:`lit_fed.compression.wrappers` is the length of what is actually serialized, indices, values
and metadata included [design: a reported size is never an estimate].

Payload layout (one or more *records* per input tensor):

* ``"<name>"`` — the tensor sent as is (dense, lossless);
* ``"<name>#<scheme>.<part>"`` — the parts of a compressed tensor, e.g. ``conv.weight#topk.idx``,
  ``conv.weight#topk.val``, ``conv.weight#topk.shape``.

Rules shared by every compressor (:class:`Compressor`):

* tensors that are not floating point (integer buffers such as BatchNorm's ``num_batches_tracked``) go dense;
* tensors with ``dim() <= dense_max_dim`` (1 by default: biases, norm parameters, scalars) go dense
  (Aji & Heafield 2017 and DGC, Lin et al. 2018, leave them uncompressed);
* a tensor whose compressed records would occupy at least as many wire bytes as the dense record goes dense
  [design: never inflate a tensor].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.client.serialization import decode_tensors, encode_tensors, encoded_size

SEPARATOR = "#"
"""Separates a tensor's name from its record's ``<scheme>.<part>`` in a payload key."""


@dataclass
class CompressedPayload:
    """What a compressor sends: a flat mapping of named tensors, serializable by ``encode_tensors``.

    Attributes:
        tensors: The records (see the module docstring for the key layout).
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Exact size of :meth:`encode` (``encoded_size`` of the records; no data copied)."""
        return encoded_size(self.tensors)

    def encode(self) -> bytes:
        """The serialized payload (the library's wire format)."""
        return encode_tensors(self.tensors)

    @classmethod
    def decode(cls, data: bytes) -> CompressedPayload:
        """Inverse of :meth:`encode`."""
        return cls(decode_tensors(data))


def record_key(name: str, scheme: str, part: str) -> str:
    """``"<name>#<scheme>.<part>"``: the payload key of one part of a compressed tensor."""
    return f"{name}{SEPARATOR}{scheme}.{part}"


def split_record_key(key: str) -> tuple[str, str | None, str | None]:
    """``(name, scheme, part)`` of a payload key; ``scheme`` and ``part`` are ``None`` for a dense record."""
    if SEPARATOR not in key:
        return key, None, None
    name, rest = key.rsplit(SEPARATOR, 1)
    scheme, _, part = rest.partition(".")
    return name, scheme, part


def records_nbytes(records: Mapping[str, Tensor]) -> int:
    """Wire bytes of some records inside a payload (their headers and data, without the payload's count)."""
    return encoded_size(records) - 4


def shape_tensor(shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A tensor's shape as metadata for the wire: int32 (int64 if a dimension needs it), one entry per dim."""
    dtype = torch.int64 if any(d > torch.iinfo(torch.int32).max for d in shape) else torch.int32
    return torch.tensor(list(shape), dtype=dtype)


class Compressor(ABC):
    """Compresses named tensors into a :class:`CompressedPayload` and back.

    Subclasses implement :meth:`compress_tensor` and :meth:`decompress_tensor` for one tensor; the shared
    rules (dense for non-float and low-dimensional tensors, never inflate) live in :meth:`compress`.
    Per-round schedules (top-k warm-up, FedKD's SVD energy ``T(t)``) are expressed by :meth:`at_round`, which
    returns the compressor to use in a given round.

    Args:
        dense_max_dim: Tensors with ``dim() <= dense_max_dim`` are sent dense (1: biases and norm parameters).
    """

    scheme: str = "base"
    """The ``<scheme>`` part of this compressor's record keys."""

    lossless: bool = False
    """Whether ``decompress(compress(x)) == x`` exactly for every tensor."""

    def __init__(self, dense_max_dim: int = 1) -> None:
        if dense_max_dim < 0:
            raise ValueError(f"{type(self).__name__}: dense_max_dim must be >= 0, got {dense_max_dim}")
        self.dense_max_dim = dense_max_dim

    # -- schedule --------------------------------------------------------------------------------------
    def at_round(self, round: int, total_rounds: int) -> Compressor:
        """The compressor to use in ``round`` of ``total_rounds`` (a scheduled copy, or ``self``). Default: self."""
        return self

    # -- one tensor ------------------------------------------------------------------------------------
    def sends_dense(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is sent dense whatever its values (non-float, or ``dim() <= dense_max_dim``)."""
        return not torch.is_floating_point(tensor) or tensor.dim() <= self.dense_max_dim

    @abstractmethod
    def compress_tensor(self, tensor: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """The records of one floating-point tensor, keyed by ``part`` (e.g. ``{"idx": ..., "val": ...}``)."""

    @abstractmethod
    def decompress_tensor(self, parts: Mapping[str, Tensor]) -> Tensor:
        """Rebuilds one tensor from its records (inverse of :meth:`compress_tensor`, up to the compression loss)."""

    # -- named tensors ---------------------------------------------------------------------------------
    def compress(self, tensors: Mapping[str, Tensor], generator: torch.Generator | None = None) -> CompressedPayload:
        """Compresses every tensor (see the module docstring for which ones go dense).

        Args:
            tensors: Named tensors (e.g. a model update ``w_k - w_g``); names must not contain ``"#"``.
            generator: Source of randomness (top-k sampling, stochastic rounding); ``None``: the global RNG.

        Raises:
            ValueError: A name contains the record separator ``"#"``.
        """
        records: dict[str, Tensor] = {}
        for name, tensor in tensors.items():
            if SEPARATOR in name:
                raise ValueError(f"{type(self).__name__}: tensor name '{name}' contains the separator '{SEPARATOR}'")
            tensor = tensor.detach()
            if self.sends_dense(tensor):
                records[name] = tensor
                continue
            compressed = self.compress_tensor(tensor, generator)
            parts = {record_key(name, self.scheme, part): value for part, value in compressed.items()}
            if records_nbytes(parts) >= records_nbytes({name: tensor}):
                records[name] = tensor  # compression would not save bytes: send it as is
            else:
                records.update(parts)
        return CompressedPayload(records)

    def decompress(self, payload: CompressedPayload) -> dict[str, Tensor]:
        """Rebuilds the named tensors from a payload (dense records are returned as they are)."""
        grouped: dict[str, dict[str, Tensor]] = {}
        out: dict[str, Tensor] = {}
        for key, value in payload.tensors.items():
            name, scheme, part = split_record_key(key)
            if scheme is None:
                out[name] = value
                continue
            if scheme != self.scheme:
                raise ValueError(f"{type(self).__name__} cannot decode record '{key}' (scheme '{scheme}')")
            grouped.setdefault(name, {})[part] = value  # type: ignore[index]
        for name, parts in grouped.items():
            out[name] = self.decompress_tensor(parts)
        order = {split_record_key(key)[0]: None for key in payload.tensors}  # keep the input's key order
        return {name: out[name] for name in order}

    def sent_masks(self, payload: CompressedPayload) -> dict[str, Tensor] | None:
        """For sparsifiers, the boolean mask of the entries each tensor actually sent; ``None`` otherwise.

        Used by DGC's momentum factor masking (:class:`~lit_fed.compression.wrappers.ErrorFeedback`).
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dense_max_dim={self.dense_max_dim})"


class Dense(Compressor):
    """The identity compressor: every tensor is sent as is (the dense baseline; lossless).

    Args:
        dense_max_dim: Unused (every tensor is dense); kept for a uniform signature.
    """

    scheme = "dense"
    lossless = True

    @override
    def sends_dense(self, tensor: Tensor) -> bool:
        """Always true."""
        return True

    @override
    def compress_tensor(self, tensor: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Never called (every tensor is dense)."""
        return {"data": tensor}

    @override
    def decompress_tensor(self, parts: Mapping[str, Tensor]) -> Tensor:
        """Returns the ``data`` record."""
        return parts["data"]
