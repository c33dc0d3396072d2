"""Any timm model as a backbone with the library's feature/head contract.

timm models already implement the contract (``forward_features``, ``forward_head(pre_logits=...)``,
``get_classifier``, ``reset_classifier``); :class:`TimmBackbone` builds one from its name and delegates to
it, so a timm architecture can be chosen from a config file.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

__all__ = ["TimmBackbone"]


class TimmBackbone(nn.Module):
    """A ``timm.create_model`` network, randomly initialised by default, behind the backbone contract.

    The timm model is stored as ``self.model``; :meth:`get_classifier` returns its classifier module itself
    (e.g. ``self.model.fc`` for a ResNet, ``self.model.head`` for a ViT), so head-based parameter splits
    select the right parameters.

    ``num_features`` is the size of the representation fed to the classifier (what
    ``forward_head(..., pre_logits=True)`` returns): timm's ``head_hidden_size`` where the model defines it
    (it differs from timm's ``num_features`` for models with a pre-logits layer, e.g. MobileNetV3), else
    timm's ``num_features``.

    Args:
        name: A timm model name, e.g. ``"resnet18"`` or ``"vit_tiny_patch16_224"``.
        num_classes: Classifier outputs.
        in_channels: Input channels (timm's ``in_chans``).
        pretrained: Load timm's pretrained weights. They are downloaded (Hugging Face Hub) unless already
            cached; if that fails, a ``RuntimeError`` explains how to provide them offline — there is no
            silent fallback to random weights.
        model_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``{"img_size": 32}`` for a
            ViT, or ``{"pretrained_cfg_overlay": {"file": "/path/to/weights.safetensors"}}`` to load local
            weights with ``pretrained=True``).

    Raises:
        ValueError: If ``name`` is not a timm model.
        RuntimeError: If ``pretrained`` is true and the weights cannot be loaded.
    """

    def __init__(
        self,
        name: str = "resnet18",
        num_classes: int = 10,
        in_channels: int = 3,
        pretrained: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if ":" not in name and not timm.is_model(name):
            raise ValueError(f"unknown timm model '{name}' (see timm.list_models())")
        kwargs = dict(model_kwargs or {})
        self.name = name
        self.pretrained = pretrained
        try:
            self.model = timm.create_model(
                name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
            )
        except Exception as err:
            if not pretrained:
                raise
            raise RuntimeError(
                f"could not load pretrained weights for timm model '{name}' ({type(err).__name__}: {err}). "
                "Pretrained weights are downloaded from the Hugging Face Hub on first use; when running "
                "offline, download them beforehand into the cache (HF_HOME), or pass "
                "model_kwargs={'pretrained_cfg_overlay': {'file': '/path/to/weights'}}, or use "
                "pretrained=False for random initialisation."
            ) from err
        for attribute in ("forward_features", "forward_head", "get_classifier", "reset_classifier"):
            if not callable(getattr(self.model, attribute, None)):
                raise TypeError(f"timm model '{name}' does not implement {attribute}()")

    @property
    def num_features(self) -> int:
        """Size of the embedding fed to the classifier (``forward_head(..., pre_logits=True)``)."""
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs (0 if the classifier has been removed)."""
        return int(self.model.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the timm model's unpooled features (a feature map, or tokens for a ViT)."""
        return self.model.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pools the features; returns logits, or the embedding ``(B, num_features)`` if ``pre_logits``."""
        return self.model.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Returns the timm model's classifier module (a sub-module of ``self.model``)."""
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the classifier with a freshly initialised one with ``num_classes`` outputs."""
        self.model.reset_classifier(num_classes)
