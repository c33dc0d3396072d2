"""Validation of the backbone contract (timm's feature/head interface) with clear error messages.

The library's personalization (head / body splits, embeddings for prototype methods, ...) relies on every
backbone exposing:

* ``forward_features(x) -> Tensor`` and ``forward_head(features, pre_logits: bool = False) -> Tensor``,
  with ``forward(x) == forward_head(forward_features(x))``;
* ``forward_head(features, pre_logits=True)`` returning the embedding of shape ``(B, num_features)``;
* ``get_classifier() -> nn.Module``, the final classifier layer, a sub-module of the model;
* ``reset_classifier(num_classes) -> None``;
* the integer attributes ``num_features`` (classifier ``in_features``) and ``num_classes``.

:func:`check_backbone_contract` checks all of this on an example batch, so that a user-provided backbone
is rejected at construction rather than failing deep inside a federated round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["check_backbone_contract", "REQUIRED_METHODS", "REQUIRED_ATTRIBUTES"]

#: Methods a backbone must implement.
REQUIRED_METHODS: tuple[str, ...] = ("forward_features", "forward_head", "get_classifier", "reset_classifier")
#: Integer attributes a backbone must expose.
REQUIRED_ATTRIBUTES: tuple[str, ...] = ("num_features", "num_classes")


def _call(description: str, fn: Callable[[], Any], model_name: str) -> Any:
    try:
        return fn()
    except Exception as err:
        raise TypeError(f"{model_name}: {description} failed ({type(err).__name__}: {err})") from err


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def check_backbone_contract(model: nn.Module, example_input: torch.Tensor) -> None:
    """Checks that ``model`` implements the backbone contract; raises ``TypeError`` naming any violation.

    The model is run once, in eval mode and without gradients, on ``example_input`` (a batch on the
    model's device; a batch of at least 2 is recommended). Its training mode is restored afterwards and it
    is not otherwise modified — in particular :meth:`reset_classifier` is only checked to exist, not called.

    Checks, in order: the required methods and integer attributes exist; ``get_classifier()`` returns an
    ``nn.Module`` registered inside the model (whose ``in_features`` / ``out_features`` match
    ``num_features`` / ``num_classes`` if it is an ``nn.Linear``); ``forward_features`` and ``forward_head``
    return tensors; ``forward_head(..., pre_logits=True)`` has shape ``(B, num_features)``; the logits have
    shape ``(B, num_classes)`` and equal ``model(x)``.

    Args:
        model: The backbone to check.
        example_input: An example input batch of size ``B``.

    Raises:
        TypeError: If any part of the contract is missing or wrong; the message names it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"a backbone must be a torch.nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    missing += [a for a in REQUIRED_ATTRIBUTES if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{name} does not implement the backbone contract (timm's feature/head interface): missing "
            f"{', '.join(missing)}. Wrap it, e.g. with lit_fed.models.TimmBackbone for timm models."
        )
    for attribute in REQUIRED_ATTRIBUTES:
        value = getattr(model, attribute)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"{name}.{attribute} must be a non-negative int, got {value!r}")
    num_features: int = model.num_features
    num_classes: int = model.num_classes

    classifier = _call("get_classifier()", model.get_classifier, name)
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"{name}.get_classifier() must return an nn.Module, got {type(classifier).__name__}")
    if not any(module is classifier for module in model.modules()) or classifier is model:
        raise TypeError(f"{name}.get_classifier() must return a sub-module of the model (its classifier layer)")
    if isinstance(classifier, nn.Linear):
        if classifier.in_features != num_features:
            raise TypeError(
                f"{name}.num_features is {num_features} but the classifier's in_features is {classifier.in_features}"
            )
        if classifier.out_features != num_classes:
            raise TypeError(
                f"{name}.num_classes is {num_classes} but the classifier's out_features is {classifier.out_features}"
            )
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise TypeError(f"example_input must be a batched tensor, got {_shape(example_input)}")
    batch = example_input.shape[0]

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = _call("forward_features(x)", lambda: model.forward_features(example_input), name)
            if not isinstance(features, torch.Tensor):
                raise TypeError(f"{name}.forward_features(x) must return a Tensor, got {_shape(features)}")
            embedding = _call(
                "forward_head(features, pre_logits=True)",
                lambda: model.forward_head(features.clone(), pre_logits=True),
                name,
            )
            logits = _call("forward_head(features)", lambda: model.forward_head(features.clone()), name)
            output = _call("forward(x)", lambda: model(example_input), name)
    finally:
        model.train(was_training)

    if not isinstance(embedding, torch.Tensor) or tuple(embedding.shape) != (batch, num_features):
        raise TypeError(
            f"{name}.forward_head(features, pre_logits=True) must return the embedding of shape "
            f"(B, num_features) = {(batch, num_features)}, got {_shape(embedding)}"
        )
    expected_logits = (batch, num_classes) if num_classes > 0 else (batch, num_features)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected_logits:
        raise TypeError(
            f"{name}.forward_head(features) must return logits of shape {expected_logits}, got {_shape(logits)}"
        )
    if not isinstance(output, torch.Tensor) or output.shape != logits.shape:
        raise TypeError(
            f"{name}.forward(x) must equal forward_head(forward_features(x)): shape {_shape(output)} vs "
            f"{_shape(logits)}"
        )
    # Loose tolerances: the check targets structural mismatches, not kernel non-determinism or low precision.
    low_precision = output.dtype in (torch.float16, torch.bfloat16)
    rtol, atol = (2e-2, 1e-2) if low_precision else (1e-3, 1e-4)
    if not torch.allclose(output.float(), logits.float(), rtol=rtol, atol=atol):
        max_diff = (output.float() - logits.float()).abs().max().item()
        raise TypeError(
            f"{name}.forward(x) must equal forward_head(forward_features(x)) (max abs difference {max_diff:.3g})"
        )
