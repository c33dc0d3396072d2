"""A cache of ``lit-fed``'s rendered ``--help`` pages, so that asking for help does not import Lightning.

Rendering ``lit-fed fit --help`` needs the parser, hence Lightning, torch and torchmetrics (several seconds of
imports before a line is printed). The first ``lit-fed --help`` or ``lit-fed <subcommand> --help`` renders the
page as usual and stores it; later ones print the stored page. A page is keyed by the arguments, the terminal
width, the program name, the installed versions of Python, lit_fed, Lightning, jsonargparse and torch, and the
size and modification time of every lit_fed source file, so a change to any of them renders afresh.

``LIT_FED_HELP_CACHE=0`` turns the cache off; ``LIT_FED_CACHE_DIR`` moves it (default
``$XDG_CACHE_HOME/lit_fed`` or ``~/.cache/lit_fed``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

CACHE_ENV = "LIT_FED_HELP_CACHE"
CACHE_DIR_ENV = "LIT_FED_CACHE_DIR"
_HELP_FLAGS = ("-h", "--help")
_SUBCOMMANDS = ("fit", "validate", "test")
_PACKAGES = ("lightning", "jsonargparse", "torch")


def is_help_request(args: list[str]) -> bool:
    """Whether ``args`` only ask for a help page: ``--help`` or ``<subcommand> --help`` (``-h`` alike)."""
    return (len(args) == 1 and args[0] in _HELP_FLAGS) or (
        len(args) == 2 and args[0] in _SUBCOMMANDS and args[1] in _HELP_FLAGS
    )


def cache_dir() -> Path:
    """The folder holding the cached pages (``LIT_FED_CACHE_DIR``, else the user's cache folder)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lit_fed"


def enabled() -> bool:
    """False when ``LIT_FED_HELP_CACHE`` is ``0``, ``false`` or ``no``."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _source_stamp() -> list[tuple[str, int, int]]:
    root = Path(__file__).resolve().parent
    stamp = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                info = os.stat(os.path.join(folder, name))
                stamp.append((os.path.relpath(os.path.join(folder, name), root), info.st_size, info.st_mtime_ns))
    return stamp


def help_key(args: list[str]) -> str:
    """The cache key of the help page for ``args`` in this environment (a hex digest)."""
    from lit_fed import __version__

    parts = {
        "prog": os.path.basename(sys.argv[0]) if sys.argv else "",
        "args": list(args),
        "columns": shutil.get_terminal_size().columns,
        "python": sys.version,
        "lit_fed": __version__,
        "packages": {name: _version(name) for name in _PACKAGES},
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith("JSONARGPARSE_")),
        "sources": _source_stamp(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _path(args: list[str]) -> Path:
    return cache_dir() / f"help-{help_key(args)}.txt"


def load(args: list[str]) -> str | None:
    """The cached page for ``args``, or ``None`` (not a help request, cache off, or not rendered yet)."""
    if not (enabled() and is_help_request(args)):
        return None
    try:
        return _path(args).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def store(args: list[str], text: str) -> None:
    """Stores the rendered page for ``args`` (silently skipped where the cache folder is not writable)."""
    if not (enabled() and is_help_request(args) and text):
        return
    path = _path(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def print_help(args: list[str], render: Callable[[list[str]], object]) -> None:
    """Prints the help page for ``args`` — the cached one, else ``render(args)``'s (then cached) — and exits 0.

    Args:
        args: The command-line arguments (a help request, :func:`is_help_request`).
        render: Called with ``args`` on a cache miss; prints the page to ``sys.stdout`` and raises
            ``SystemExit`` (as argparse's ``--help`` does).

    Raises:
        SystemExit: Always, with argparse's exit status (0 for a printed page).
    """
    import contextlib
    import io

    text = load(args)
    if text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
        raise SystemExit(0)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            render(args)
    except SystemExit as done:
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
        if done.code in (0, None):
            store(args, buffer.getvalue())
        raise
    sys.stdout.write(buffer.getvalue())
    raise SystemExit(0)
