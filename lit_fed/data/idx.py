"""Reader and writer for the IDX format of MNIST and Fashion-MNIST, gzipped or not.

The format (LeCun et al., "The MNIST database", http://yann.lecun.com/exdb/mnist/) is a 4-byte magic number
``0x00 0x00 <dtype code> <ndim>``, ``ndim`` big-endian uint32 dimension sizes, then the values in C order,
big-endian. Reading it directly with NumPy avoids a torchvision download when the files are already on disk
(e.g. Debian's ``dataset-fashion-mnist`` package).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from lit_fed.data.files import DataFileError

_GZIP_MAGIC = b"\x1f\x8b"

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type codes and the (big-endian) NumPy dtypes they denote."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}")
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head != _GZIP_MAGIC:
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (EOFError, OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"{path}: truncated or corrupt gzip data: {error}") from error


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (gzip detected by its magic bytes, not by the file name) into a NumPy array.

    Args:
        path: The ``.idx``/``-ubyte`` file, optionally gzipped.

    Returns:
        An array of the file's shape in native byte order (``uint8`` for images and labels).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFileError: (a ``ValueError``) If the gzip stream is truncated or corrupt, or the magic number, the
            type code or the payload size is invalid; the message starts with ``path``.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataFileError(f"{path}: not an IDX file: bad magic number {data[:4].hex() or '<empty>'}")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataFileError(f"{path}: unknown IDX type code 0x{code:02x} (known: {sorted(IDX_DTYPES)})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        problem = "truncated" if len(data) - header < expected else "trailing bytes after the"
        raise DataFileError(
            f"{path}: {problem} IDX payload: {len(data) - header} bytes, expected {expected} for shape {shape} "
            f"and dtype {dtype}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Writes ``array`` as an IDX file (the inverse of :func:`read_idx`).

    Args:
        path: Destination file.
        array: Array whose dtype is one of :data:`IDX_DTYPES` (up to byte order).
        compress: Gzip the file; by default when ``path`` ends in ``.gz``.

    Returns:
        The written path.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code (supported: {sorted(map(str, codes))})")
    code = codes[dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + payload)
    return path
