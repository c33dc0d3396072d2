"""Shared vs personal parameters, chosen by module — one mechanism for every method.

A :class:`ParameterSplit` is a list of selectors; the state-dict keys they select are *personal* (kept by
the client across rounds), the rest are *shared* (sent to and aggregated by the server). Selectors pick
modules by what they are, never by substring matching on names:

* :class:`Head` — the backbone's classifier, found through ``get_classifier()`` (timm's contract).
* :class:`BatchNorm` — every ``torch.nn.modules.batchnorm._BatchNorm`` (FedBN, Li et al. 2021).
* :class:`Modules` — named sub-modules (e.g. ``"backbone.layer4"`` or ``"personal_model"``).
* :class:`Regex` — the escape hatch: a regular expression over state-dict keys.
* :class:`Complement` — everything another selection leaves out (LG-FedAvg's local body).

Example:
    >>> split = ParameterSplit([Head(), BatchNorm()])
    >>> personal_keys = split.personal_keys(client_module)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override


def _module_keys(root: nn.Module, prefix: str) -> set[str]:
    """All state-dict keys (parameters and buffers) of the sub-module registered at ``prefix``."""
    sub = root.get_submodule(prefix) if prefix else root
    return {f"{prefix}.{k}" if prefix else k for k in sub.state_dict().keys()}


def _find_prefix(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError(f"module {type(target).__name__} is not a sub-module of {type(root).__name__}")


class ParameterSelector(ABC):
    """Selects a set of state-dict keys of a model."""

    @abstractmethod
    def select(self, model: nn.Module) -> set[str]:
        """Returns the selected state-dict keys of ``model``."""


class Head(ParameterSelector):
    """The classifier head of every sub-module that exposes ``get_classifier()``.

    Args:
        backbone: Name of the sub-module holding the backbone; ``None`` searches every sub-module exposing
            ``get_classifier`` (outermost first) and selects the first one's classifier.
    """

    def __init__(self, backbone: str | None = "backbone") -> None:
        self.backbone = backbone

    @override
    def select(self, model: nn.Module) -> set[str]:
        owner = self._owner(model)
        head = owner.get_classifier()
        if not isinstance(head, nn.Module):
            raise TypeError(f"{type(owner).__name__}.get_classifier() did not return an nn.Module")
        return _module_keys(model, _find_prefix(model, head))

    def _owner(self, model: nn.Module) -> nn.Module:
        if self.backbone is not None:
            try:
                owner = model.get_submodule(self.backbone)
            except AttributeError as err:
                raise ValueError(f"Head: the model has no sub-module '{self.backbone}'") from err
            if not hasattr(owner, "get_classifier"):
                raise TypeError(f"Head: '{self.backbone}' ({type(owner).__name__}) has no get_classifier()")
            return owner
        for _, module in model.named_modules():
            if module is not model and hasattr(module, "get_classifier"):
                return module
        raise TypeError(f"Head: no sub-module of {type(model).__name__} exposes get_classifier()")

    def __repr__(self) -> str:
        return f"Head(backbone={self.backbone!r})"


class BatchNorm(ParameterSelector):
    """Every BatchNorm layer's affine parameters and running statistics (FedBN, Li et al. 2021).

    A model without BatchNorm layers gets a warning: nothing would be personal, and FedBN would silently be FedAvg.
    """

    @override
    def select(self, model: nn.Module) -> set[str]:
        keys: set[str] = set()
        for name, module in model.named_modules():
            if isinstance(module, _BatchNorm):
                keys |= _module_keys(model, name)
        if not keys:
            warnings.warn(
                f"BatchNorm(): {type(model).__name__} has no BatchNorm layer, so this selector makes nothing "
                "personal (FedBN on it is FedAvg); use a model with BatchNorm layers or another selector",
                UserWarning,
                stacklevel=2,
            )
        return keys

    def __repr__(self) -> str:
        return "BatchNorm()"


class Modules(ParameterSelector):
    """Named sub-modules, e.g. ``Modules(["backbone.fc1", "backbone.fc"])``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    @override
    def select(self, model: nn.Module) -> set[str]:
        keys: set[str] = set()
        for name in self.names:
            try:
                keys |= _module_keys(model, name)
            except AttributeError as err:
                raise ValueError(f"Modules: the model has no sub-module '{name}'") from err
        return keys

    def __repr__(self) -> str:
        return f"Modules({self.names!r})"


class Regex(ParameterSelector):
    """State-dict keys matching a regular expression (``re.search``) — the escape hatch."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled = re.compile(pattern)

    @override
    def select(self, model: nn.Module) -> set[str]:
        keys = {k for k in model.state_dict().keys() if self._compiled.search(k)}
        if not keys:
            raise ValueError(f"Regex({self.pattern!r}) selects no state-dict key")
        return keys

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class Complement(ParameterSelector):
    """Every state-dict key *not* selected by ``selectors``.

    LG-FedAvg (Liang et al. 2020) keeps the lower layers local and shares the head:
    ``personal=[Complement([Head()])]``.
    """

    def __init__(self, selectors: Sequence[ParameterSelector]) -> None:
        self.selectors = list(selectors)

    @override
    def select(self, model: nn.Module) -> set[str]:
        excluded: set[str] = set()
        for selector in self.selectors:
            excluded |= selector.select(model)
        return set(model.state_dict().keys()) - excluded

    def __repr__(self) -> str:
        return f"Complement({self.selectors!r})"


class ParameterSplit:
    """The union of selectors marks personal keys; everything else is shared.

    Args:
        personal: Selectors of personal parameters. Empty: everything is shared (FedAvg).
        invert: If true, the selected keys are the *shared* ones and the rest is personal (LG-FedAvg shares
            the head and keeps the body).
    """

    def __init__(self, personal: Iterable[ParameterSelector] = (), invert: bool = False) -> None:
        self.selectors = list(personal)
        self.invert = invert

    def personal_keys(self, model: nn.Module) -> list[str]:
        """Personal state-dict keys, in ``state_dict`` order."""
        selected: set[str] = set()
        for selector in self.selectors:
            selected |= selector.select(model)
        keys = list(model.state_dict().keys())
        return [k for k in keys if (k in selected) != self.invert]

    def shared_keys(self, model: nn.Module) -> list[str]:
        """Shared state-dict keys, in ``state_dict`` order."""
        personal = set(self.personal_keys(model))
        return [k for k in model.state_dict().keys() if k not in personal]

    def __repr__(self) -> str:
        return f"ParameterSplit({self.selectors!r}, invert={self.invert})"
