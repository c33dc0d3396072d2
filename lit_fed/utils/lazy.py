"""Lazy package exports (PEP 562): a package names its public objects and imports each on first use.

A package ``__init__`` holding ``__getattr__, __dir__ = lazy_exports(__name__, {"Name": "pkg.module", ...})``
keeps ``import pkg`` cheap (no torch or Lightning until a name needs them) while ``from pkg import Name``,
``pkg.Name`` and jsonargparse's ``class_path: pkg.Name`` work as with eager imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` resolving ``exports`` on first access.

    Args:
        package: The package's ``__name__``.
        exports: Public name → the module defining it (``"FedAvg": "lit_fed.server.fedavg"``).

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's namespace. A resolved name is cached in the
        package's globals, so later lookups cost a dict access.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
