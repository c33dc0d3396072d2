"""FedAvgCNN (PFLlib / McMahan et al. 2017), TinyCNN and MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_fed.models import MLP, FedAvgCNN, TinyCNN


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fedavg_cnn_params(in_channels: int, fc1_in: int, num_classes: int = 10, hidden: int = 512) -> int:
    conv1 = 32 * in_channels * 5 * 5 + 32
    conv2 = 64 * 32 * 5 * 5 + 64
    fc1 = fc1_in * hidden + hidden
    fc = hidden * num_classes + num_classes
    return conv1 + conv2 + fc1 + fc


def test_fedavg_cnn_mnist_param_count() -> None:
    model = FedAvgCNN(in_channels=1, num_classes=10, input_size=28)
    assert model.feature_dim == 1024  # 64 * 4 * 4
    assert _num_params(model) == _fedavg_cnn_params(1, 1024) == 582_026


def test_fedavg_cnn_cifar_param_count() -> None:
    model = FedAvgCNN(in_channels=3, num_classes=10, input_size=32)
    assert model.feature_dim == 1600  # 64 * 5 * 5
    assert _num_params(model) == _fedavg_cnn_params(3, 1600) == 878_538


def test_fedavg_cnn_matches_pfllib_layout() -> None:
    model = FedAvgCNN(in_channels=1, num_classes=10)
    # PFLlib's state-dict keys, so PFLlib checkpoints load and its `head = fc` split is reproduced.
    assert list(model.state_dict()) == [
        "conv1.0.weight", "conv1.0.bias", "conv2.0.weight", "conv2.0.bias",
        "fc1.0.weight", "fc1.0.bias", "fc.weight", "fc.bias",
    ]  # fmt: skip
    for block, (c_in, c_out) in ((model.conv1, (1, 32)), (model.conv2, (32, 64))):
        conv, act, pool = block
        assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (c_in, c_out)
        assert conv.kernel_size == (5, 5) and conv.padding == (0, 0) and conv.stride == (1, 1)
        assert conv.bias is not None
        assert isinstance(act, nn.ReLU) and isinstance(pool, nn.MaxPool2d)
    assert isinstance(model.fc1[0], nn.Linear) and isinstance(model.fc1[1], nn.ReLU)
    assert model.get_classifier() is model.fc
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)


def test_fedavg_cnn_shapes() -> None:
    model = FedAvgCNN(in_channels=3, num_classes=100, input_size=32)
    x = torch.randn(3, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (3, 1600)
    embedding = model.forward_head(features, pre_logits=True)
    assert embedding.shape == (3, 512) and (embedding >= 0).all()  # post-ReLU fc1 output
    assert model(x).shape == (3, 100)


def test_fedavg_cnn_hidden_dim_and_rectangular_input() -> None:
    model = FedAvgCNN(in_channels=1, num_classes=4, hidden_dim=128, input_size=(28, 32))
    assert model.num_features == 128 and model.feature_dim == 64 * 4 * 5
    assert model(torch.randn(2, 1, 28, 32)).shape == (2, 4)


def test_fedavg_cnn_too_small_input() -> None:
    with pytest.raises(ValueError, match="at least 16x16"):
        FedAvgCNN(input_size=12)


def test_tiny_cnn_has_batchnorm_and_is_size_agnostic() -> None:
    model = TinyCNN(in_channels=3, num_classes=4, width=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.get_classifier() is model.fc and model.num_features == 32
    assert model.forward_features(torch.randn(2, 3, 8, 8)).shape == (2, 8, 8, 8)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert model(torch.randn(2, 3, 5, 7)).shape == (2, 4)


def test_mlp_flattens_input() -> None:
    model = MLP(in_features=2 * 3 * 3, num_classes=4, hidden=(16, 8))
    x = torch.randn(5, 2, 3, 3)
    assert model.forward_features(x).shape == (5, 8)
    assert model.num_features == 8
    assert model(x).shape == (5, 4)
    torch.testing.assert_close(model(x), model(x.flatten(1)))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [16, 8, 4] and linears[-1] is model.get_classifier()


def test_mlp_without_hidden_layers_is_linear() -> None:
    model = MLP(in_features=6, num_classes=3, hidden=())
    x = torch.randn(4, 6)
    assert model.num_features == 6
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), x)
    assert sum(p.numel() for p in model.parameters()) == 6 * 3 + 3
