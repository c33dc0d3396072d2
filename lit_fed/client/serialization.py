"""A compact wire format for payloads, and its exact byte size.

The in-process loop never needs to serialize, but communication is reported as the size of what *would* be
sent: :func:`encode_tensors` writes the format, and :func:`encoded_size` computes its length from the same
headers without copying tensor data, so the two agree by construction (tested).

Format, per tensor: ``u16 key length | key utf-8 | u8 dtype code | u8 ndim | ndim × u32 shape | raw bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import torch
from torch import Tensor

from lit_fed.client.payloads import ClientUpdate, ServerMessage

_DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.int16: 6,
    torch.int8: 7,
    torch.uint8: 8,
    torch.bool: 9,
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def _header(key: str, tensor: Tensor) -> bytes:
    if tensor.dtype not in _DTYPE_CODES:
        raise TypeError(f"cannot serialize tensor '{key}' of dtype {tensor.dtype}")
    name = key.encode("utf-8")
    shape = tuple(tensor.shape)
    return (
        struct.pack("<H", len(name))
        + name
        + struct.pack("<BB", _DTYPE_CODES[tensor.dtype], len(shape))
        + struct.pack(f"<{len(shape)}I", *shape)
    )


def encoded_size(tensors: Mapping[str, Tensor]) -> int:
    """Exact number of bytes :func:`encode_tensors` produces for ``tensors``, computed without copying data."""
    return 4 + sum(len(_header(k, t)) + t.numel() * t.element_size() for k, t in tensors.items())


def encode_tensors(tensors: Mapping[str, Tensor]) -> bytes:
    """Serializes named tensors into the wire format (a ``u32`` count, then one record per tensor)."""
    parts = [struct.pack("<I", len(tensors))]
    for key, tensor in tensors.items():
        parts.append(_header(key, tensor))
        parts.append(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return b"".join(parts)


def decode_tensors(data: bytes) -> dict[str, Tensor]:
    """Inverse of :func:`encode_tensors`."""
    (count,) = struct.unpack_from("<I", data, 0)
    offset, out = 4, {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, offset)
        offset += 2
        key = data[offset : offset + name_len].decode("utf-8")
        offset += name_len
        code, ndim = struct.unpack_from("<BB", data, offset)
        offset += 2
        shape = struct.unpack_from(f"<{ndim}I", data, offset)
        offset += 4 * ndim
        dtype = _CODE_DTYPES[code]
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        raw = bytearray(data[offset : offset + nbytes])
        offset += nbytes
        out[key] = (
            torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()
            if nbytes
            else (torch.empty(shape, dtype=dtype))
        )
    return out


def _update_tensors(update: ClientUpdate) -> dict[str, Tensor]:
    tensors = {f"state/{k}": v for k, v in update.state.items()}
    tensors.update({f"extras/{k}": v for k, v in update.extras.items()})
    return tensors


def message_nbytes(message: ServerMessage) -> int:
    """Bytes a server message occupies on the wire (state and tensor extras), or its compressed size if set."""
    if message.wire_nbytes is not None:
        return message.wire_nbytes
    tensors = {f"state/{k}": v for k, v in message.state.items()}
    tensors.update({f"extras/{k}": v for k, v in message.extras.items()})
    return encoded_size(tensors)


def update_nbytes(update: ClientUpdate) -> int:
    """Bytes a client update occupies on the wire (state and tensor extras), or its compressed size if set."""
    if update.wire_nbytes is not None:
        return update.wire_nbytes
    return encoded_size(_update_tensors(update))
