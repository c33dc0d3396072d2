"""TimmBackbone: delegation to timm, classifier identity, offline pretrained-weights error."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from torch import nn

from lit_fed.models import TimmBackbone


def test_delegates_to_timm_model() -> None:
    backbone = TimmBackbone("test_resnet", num_classes=5, in_channels=1)
    assert backbone.get_classifier() is backbone.model.get_classifier() is backbone.model.fc
    assert backbone.num_classes == 5 and backbone.num_features == backbone.model.num_features
    x = torch.randn(2, 1, 32, 32)
    backbone.eval()
    torch.testing.assert_close(backbone(x), backbone.model(x))


def test_num_features_is_the_pre_logits_size() -> None:
    backbone = TimmBackbone("mobilenetv3_small_050", num_classes=5)
    assert backbone.model.num_features != backbone.model.head_hidden_size
    assert backbone.num_features == backbone.model.head_hidden_size == backbone.get_classifier().in_features


def test_unknown_timm_model() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        TimmBackbone("no_such_net")


def test_pretrained_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def offline_create_model(name: str, **kwargs: Any) -> nn.Module:
        calls.append(kwargs)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    with pytest.raises(RuntimeError, match="pretrained weights.*offline") as info:
        TimmBackbone("resnet18", pretrained=True)
    assert isinstance(info.value.__cause__, OSError)
    assert calls == [{"pretrained": True, "num_classes": 10, "in_chans": 3}]  # no retry without weights


def test_non_pretrained_errors_propagate_unchanged() -> None:
    with pytest.raises(TypeError):
        TimmBackbone("test_resnet", model_kwargs={"not_an_argument": 1})
