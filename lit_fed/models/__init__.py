"""Backbones exposing timm's feature/head contract, and a name → constructor registry.

Every model has ``forward_features``, ``forward_head(features, pre_logits=False)``, ``get_classifier()``,
``reset_classifier(num_classes)``, ``num_features`` and ``num_classes`` (see :mod:`lit_fed.models.contract`).
The classifier returned by ``get_classifier()`` is the personalizable "head"; everything else is the "body".

Example:
    >>> model = create_model("fedavg_cnn", in_channels=1, num_classes=10)
    >>> check_backbone_contract(model, torch.zeros(2, 1, 28, 28))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from lit_fed.models.cnn import MLP, FedAvgCNN, TinyCNN
from lit_fed.models.contract import check_backbone_contract
from lit_fed.models.resnet import BasicBlock, CifarResNet, resnet8, resnet18
from lit_fed.models.vit import Attention, Block, CharTransformer, TransformerBackbone, ViT, vit_cifar, vit_tiny

__all__ = [
    "Attention",
    "Block",
    "CharTransformer",
    "TransformerBackbone",
    "ViT",
    "vit_cifar",
    "vit_tiny",
    "MODELS",
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "FedAvgCNN",
    "TimmBackbone",
    "TinyCNN",
    "check_backbone_contract",
    "create_model",
    "register_model",
    "resnet8",
    "resnet18",
]


def __getattr__(name: str) -> Any:
    """``TimmBackbone`` is imported on first use (PEP 562): importing timm takes seconds."""
    if name == "TimmBackbone":
        value = importlib.import_module("lit_fed.models.timm_backbone").TimmBackbone
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _timm_backbone(*args: Any, **kwargs: Any) -> nn.Module:
    """Builds a :class:`~lit_fed.models.TimmBackbone` (imports timm on the first call)."""
    return __getattr__("TimmBackbone")(*args, **kwargs)


#: Registered model constructors, by name. Extend with :func:`register_model`.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "fedavg_cnn": FedAvgCNN,
    "tiny_cnn": TinyCNN,
    "mlp": MLP,
    "resnet8": resnet8,
    "resnet18": resnet18,
    "timm": _timm_backbone,
    "vit": ViT,
    "vit_cifar": vit_cifar,
    "vit_tiny": vit_tiny,
    "char_transformer": CharTransformer,
}


def register_model(
    name: str, constructor: Callable[..., nn.Module] | None = None, *, overwrite: bool = False
) -> Callable[..., nn.Module] | Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers a model constructor under ``name``; usable directly or as a decorator.

    Args:
        name: Registry key, as passed to :func:`create_model`.
        constructor: Class or function building the model; omit to use as ``@register_model("name")``.
        overwrite: Allow replacing an existing entry.

    Returns:
        The constructor (or, as a decorator, a function registering and returning it).

    Raises:
        ValueError: If ``name`` is already registered and ``overwrite`` is false.
    """

    def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and not overwrite and MODELS[name] is not fn:
            raise ValueError(f"model '{name}' is already registered")
        MODELS[name] = fn
        return fn

    return _register if constructor is None else _register(constructor)


def create_model(name: str, /, **kwargs: object) -> nn.Module:
    """Builds the registered model ``name`` with keyword arguments ``kwargs``.

    ``name`` is positional-only, so ``create_model("timm", name="resnet18")`` forwards ``name`` to
    :class:`TimmBackbone`.

    Args:
        name: A key of :data:`MODELS` (e.g. ``"fedavg_cnn"``, ``"resnet18"``, ``"timm"``).
        **kwargs: Passed to the constructor (e.g. ``num_classes=100``).

    Returns:
        The model.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    try:
        constructor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}") from None
    return constructor(**kwargs)
