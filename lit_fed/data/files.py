"""Reading dataset files with one clear error per problem: the file is missing, truncated, corrupt or malformed.

Every reader here raises :class:`FileNotFoundError` for a missing file and :class:`DataFileError` (a
``ValueError``) for a file that exists but cannot be read as its format; both messages start with the file's
path. The formats: NumPy's ``.npz`` (a zip archive of ``.npy`` arrays, `NEP 1
<https://numpy.org/neps/nep-0001-npy-format.html>`_) and JSON (RFC 8259).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataFileError", "read_json", "read_npz"]

_ZIP_MAGIC = b"PK"  # an .npz is a zip archive (local file header PK\x03\x04, empty archive PK\x05\x06)
_NPY_MAGIC = b"\x93NUMPY"


class DataFileError(ValueError):
    """A dataset file that exists but cannot be read: truncated, corrupt, or not in the expected format.

    The message starts with the file's path and says what is wrong.
    """


def _require_file(path: Path) -> None:
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"{path}: {problem}")


def read_npz(path: str | Path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read eagerly (so a corrupt member fails here, naming the file).

    Args:
        path: The ``.npz`` file.
        allow_pickle: Allow object arrays, which NumPy stores as pickles. Unpickling runs code from the file:
            enable it only for files you trust.

    Returns:
        ``{name: array}`` for every member.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFileError: The file is not a readable ``.npz`` archive (truncated, corrupt), or holds pickled
            object arrays while ``allow_pickle`` is false.
    """
    path = Path(path)
    _require_file(path)
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head == _NPY_MAGIC:
        raise DataFileError(f"{path}: is a single .npy array, not an .npz archive of named arrays")
    if head[:2] != _ZIP_MAGIC:
        raise DataFileError(f"{path}: not a readable .npz archive (truncated or corrupt): no zip header")
    try:
        with np.load(path, allow_pickle=allow_pickle) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataFileError(
                f"{path}: holds pickled Python objects; pass allow_pickle=True only if you trust the file"
            ) from error
        raise DataFileError(f"{path}: not a readable .npz archive (truncated or corrupt): {error}") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as error:
        raise DataFileError(f"{path}: not a readable .npz archive (truncated or corrupt): {error}") from error


def read_json(path: str | Path) -> Any:
    """The parsed content of a UTF-8 JSON file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFileError: The file is not valid JSON (e.g. truncated), naming the line and column.
    """
    path = Path(path)
    _require_file(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFileError(
            f"{path}: not valid JSON (truncated or corrupt?) at line {error.lineno} column {error.colno}: {error.msg}"
        ) from error
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not UTF-8 text, so not JSON: {error}") from error
