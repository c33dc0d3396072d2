"""CIFAR-style ResNet-8 / ResNet-18 (He et al. 2016)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_fed.models import CifarResNet, resnet8, resnet18


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv3(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9  # bias-free 3x3 conv


def _bn(c: int) -> int:
    return 2 * c  # weight + bias


def _block(c_in: int, c_out: int, stride: int) -> int:
    params = _conv3(c_in, c_out) + _bn(c_out) + _conv3(c_out, c_out) + _bn(c_out)
    if stride != 1 or c_in != c_out:
        params += c_in * c_out + _bn(c_out)  # 1x1 projection shortcut
    return params


def _cifar_resnet_params(block_counts: tuple[int, ...], widths: tuple[int, ...], num_classes: int) -> int:
    total = _conv3(3, widths[0]) + _bn(widths[0])
    c_in = widths[0]
    for stage, (count, width) in enumerate(zip(block_counts, widths, strict=True)):
        for index in range(count):
            total += _block(c_in, width, 2 if stage > 0 and index == 0 else 1)
            c_in = width
    return total + c_in * num_classes + num_classes


def test_resnet18_param_count() -> None:
    model = resnet18(num_classes=10)
    expected = _cifar_resnet_params((2, 2, 2, 2), (64, 128, 256, 512), 10)
    assert expected == 11_173_962  # the usual CIFAR ResNet-18 count (~11.2M)
    assert _num_params(model) == expected


def test_resnet8_param_count() -> None:
    expected = _cifar_resnet_params((1, 1, 1), (16, 32, 64), 10)
    assert expected == 78_042
    assert _num_params(resnet8(num_classes=10)) == expected


@pytest.mark.parametrize(
    ("factory", "stages", "feature_shape"),
    [(resnet8, 3, (2, 64, 8, 8)), (resnet18, 4, (2, 512, 4, 4))],
)
def test_shapes_on_cifar_inputs(factory: object, stages: int, feature_shape: tuple[int, ...]) -> None:
    model = factory(num_classes=10)  # type: ignore[operator]
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == feature_shape
    assert model.forward_head(features, pre_logits=True).shape == (2, feature_shape[1])
    assert model(x).shape == (2, 10)
    assert model.num_features == feature_shape[1]
    assert model.stage_names == tuple(f"layer{i}" for i in range(1, stages + 1))
    assert not hasattr(model, f"layer{stages + 1}")


def test_cifar_stem_and_stage_addressing() -> None:
    model = resnet18()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert len(model.get_submodule("layer4")) == 2
    assert model.get_submodule("layer4")[0].conv1.stride == (2, 2)
    assert model.get_submodule("layer1")[0].downsample is None
    assert model.get_classifier() is model.fc


def test_resnet8_width_and_channels() -> None:
    model = resnet8(num_classes=100, in_channels=1, width=8)
    assert model.num_features == 32 and model.num_classes == 100
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_custom_cifar_resnet() -> None:
    model = CifarResNet((1, 2), (8, 12), num_classes=3, in_channels=3)
    assert model.stage_names == ("layer1", "layer2")
    assert _num_params(model) == _cifar_resnet_params((1, 2), (8, 12), 3)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="equal length"):
        CifarResNet((1, 1), (16,))
