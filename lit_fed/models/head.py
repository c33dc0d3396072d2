"""The classifier-head part of timm's feature/head contract, shared by lit_fed's own models.

A model subclassing :class:`ClassifierHeadModel` implements ``forward_features`` and
``forward_head(features, pre_logits)`` and keeps its classifier in ``self.fc`` (with ``num_features`` inputs);
``forward``, ``get_classifier`` and ``reset_classifier`` follow from that.
"""

from __future__ import annotations

import torch
from torch import nn


def make_classifier(num_features: int, num_classes: int) -> nn.Module:
    """A linear classifier, or ``nn.Identity`` for ``num_classes == 0`` (timm's convention)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


class ClassifierHeadModel(nn.Module):
    """Base of models whose classifier is ``self.fc``; subclasses set ``num_features``, ``num_classes``, ``fc``."""

    fc: nn.Module
    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output; implemented by each model."""
        raise TypeError(f"{type(self).__name__} must implement forward_features")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features to logits (or to the embedding if ``pre_logits``); implemented by each model."""
        raise TypeError(f"{type(self).__name__} must implement forward_head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Returns the classifier ``fc`` (the head that personalization methods keep local)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the classifier with a freshly initialised one with ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.fc = make_classifier(self.num_features, num_classes)
