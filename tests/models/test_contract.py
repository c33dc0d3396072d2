"""The backbone contract, checked on every registered model and on a few tiny timm models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lit_fed.models as models_pkg
from lit_fed.models import MODELS, TinyCNN, check_backbone_contract, create_model, register_model

# name -> (registry name, constructor kwargs, example input shape). Every registered model must appear.
CASES: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "fedavg_cnn": ("fedavg_cnn", {"in_channels": 1, "num_classes": 10, "input_size": 28}, (2, 1, 28, 28)),
    "fedavg_cnn_cifar": (
        "fedavg_cnn",
        {"in_channels": 3, "num_classes": 10, "input_size": 32},
        (2, 3, 32, 32),
    ),
    "tiny_cnn": ("tiny_cnn", {}, (2, 1, 8, 8)),
    "mlp": ("mlp", {"in_features": 3 * 4 * 4, "num_classes": 5, "hidden": (16, 8)}, (2, 3, 4, 4)),
    "resnet8": ("resnet8", {"num_classes": 10}, (2, 3, 32, 32)),
    "resnet18": ("resnet18", {"num_classes": 10}, (2, 3, 16, 16)),
    "timm": ("timm", {"name": "test_resnet", "num_classes": 5}, (2, 3, 32, 32)),
    "timm_vit": (
        "timm",
        {"name": "test_vit", "num_classes": 5, "model_kwargs": {"img_size": 32}},
        (2, 3, 32, 32),
    ),
    "vit": (
        "vit",
        {
            "image_size": 8,
            "patch_size": 4,
            "in_channels": 3,
            "num_classes": 5,
            "dim": 16,
            "depth": 2,
            "heads": 2,
            "dim_head": 8,
            "mlp_dim": 32,
        },
        (2, 3, 8, 8),
    ),
    "vit_tiny": ("vit_tiny", {"num_classes": 10, "depth": 1}, (2, 1, 28, 28)),
    "vit_cifar": ("vit_cifar", {"num_classes": 10, "depth": 1, "dim": 32, "heads": 2, "dim_head": 16}, (2, 3, 32, 32)),
    # token indices, not images: _build draws integers below the vocabulary size for it
    "char_transformer": (
        "char_transformer",
        {"vocab_size": 11, "seq_len": 6, "dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32},
        (2, 6),
    ),
    # A timm model whose pre-logits size (head_hidden_size=1024) differs from timm's num_features (288).
    "timm_mobilenetv3": ("timm", {"name": "mobilenetv3_small_050", "num_classes": 5}, (2, 3, 32, 32)),
}


def _build(case: str) -> tuple[nn.Module, torch.Tensor]:
    registry_name, kwargs, shape = CASES[case]
    torch.manual_seed(0)
    model = create_model(registry_name, **kwargs)
    if isinstance(model, models_pkg.CharTransformer):
        return model, torch.randint(0, model.vocab_size, shape)
    return model, torch.randn(*shape)


def test_every_registered_model_is_covered() -> None:
    assert set(MODELS) <= {registry_name for registry_name, _, _ in CASES.values()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract(case: str) -> None:
    model, x = _build(case)
    model.eval()
    batch = x.shape[0]
    check_backbone_contract(model, x)
    assert not model.training  # mode restored

    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features.clone())
        embedding = model.forward_head(features.clone(), pre_logits=True)
        torch.testing.assert_close(model(x), logits)
    assert isinstance(model.num_features, int) and isinstance(model.num_classes, int)
    assert embedding.shape == (batch, model.num_features)
    assert logits.shape == (batch, model.num_classes)

    head = model.get_classifier()
    assert any(module is head for module in model.modules())
    assert isinstance(head, nn.Linear)
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    assert linears[-1] is head
    assert head.in_features == model.num_features
    assert head.out_features == model.num_classes
    torch.testing.assert_close(head(embedding), logits)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reset_classifier(case: str) -> None:
    model, x = _build(case)
    old_head = model.get_classifier()
    model.reset_classifier(7)
    head = model.get_classifier()
    assert head is not old_head
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert model.num_classes == 7
    assert any(module is head for module in model.modules())
    check_backbone_contract(model, x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward(case: str) -> None:
    model, x = _build(case)
    model.train()
    target = torch.arange(x.shape[0]) % model.num_classes
    nn.functional.cross_entropy(model(x), target).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert model.get_classifier().weight.grad is not None


def test_reset_classifier_zero_gives_identity() -> None:
    model = TinyCNN(num_classes=3)
    model.reset_classifier(0)
    x = torch.randn(2, 1, 8, 8)
    assert isinstance(model.get_classifier(), nn.Identity)
    model.eval()
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    check_backbone_contract(model, x)


# --- check_backbone_contract: violations ------------------------------------------------------------


def test_plain_linear_is_rejected() -> None:
    with pytest.raises(TypeError, match="forward_features.*forward_head.*get_classifier.*num_features"):
        check_backbone_contract(nn.Linear(4, 2), torch.randn(2, 4))


def test_non_module_is_rejected() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        check_backbone_contract(lambda x: x, torch.randn(2, 4))  # type: ignore[arg-type]


class _ForwardMismatch(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


class _PreLogitsIgnored(TinyCNN):
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return super().forward_head(x)


class _NoPreLogitsArgument(TinyCNN):
    def forward_head(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward_head(x)


class _ForeignClassifier(TinyCNN):
    def get_classifier(self) -> nn.Module:
        return nn.Linear(self.num_features, self.num_classes)


@pytest.mark.parametrize(
    ("model_cls", "message"),
    [
        (_ForwardMismatch, r"forward\(x\) must equal"),
        (_PreLogitsIgnored, r"pre_logits=True\) must return the embedding"),
        (_NoPreLogitsArgument, r"forward_head\(features, pre_logits=True\) failed"),
        (_ForeignClassifier, "sub-module"),
    ],
)
def test_contract_violations(model_cls: type[TinyCNN], message: str) -> None:
    model = model_cls(num_classes=3)
    model.train()
    with pytest.raises(TypeError, match=message):
        check_backbone_contract(model, torch.randn(2, 1, 8, 8))
    assert model.training  # mode restored even on failure


def test_wrong_num_features_is_rejected() -> None:
    model = TinyCNN(num_classes=3, width=8)
    model.num_features = 9
    with pytest.raises(TypeError, match="num_features is 9 but the classifier's in_features is 32"):
        check_backbone_contract(model, torch.randn(2, 1, 8, 8))


def test_wrong_num_classes_is_rejected() -> None:
    model = TinyCNN(num_classes=3)
    model.num_classes = "3"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="num_classes must be a non-negative int"):
        check_backbone_contract(model, torch.randn(2, 1, 8, 8))


def test_failing_forward_is_reported() -> None:
    with pytest.raises(TypeError, match=r"forward_features\(x\) failed"):
        check_backbone_contract(TinyCNN(in_channels=1), torch.randn(2, 3, 8, 8))


# --- registry -----------------------------------------------------------------------------------------


def test_create_model_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'; available: .*fedavg_cnn.*resnet18"):
        create_model("nope")


def test_create_model_passes_kwargs() -> None:
    model = create_model("resnet8", num_classes=100, in_channels=1)
    assert model.num_classes == 100 and model.conv1.in_channels == 1


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_pkg, "MODELS", dict(MODELS))

    @register_model("tiny_wide")
    def tiny_wide(num_classes: int = 2) -> TinyCNN:
        return TinyCNN(num_classes=num_classes, width=32)

    assert models_pkg.MODELS["tiny_wide"] is tiny_wide
    assert create_model("tiny_wide", num_classes=5).num_features == 128
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_cnn", tiny_wide)
    register_model("tiny_cnn", tiny_wide, overwrite=True)
    assert create_model("tiny_cnn").num_features == 128
    assert MODELS["tiny_cnn"] is TinyCNN  # the real registry is untouched
