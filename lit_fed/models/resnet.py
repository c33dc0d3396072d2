"""CIFAR-style residual networks (He et al. 2016) with timm's feature/head contract.

The CIFAR variant replaces ImageNet's 7×7 stride-2 stem and max-pool by a single 3×3 stride-1 convolution,
so 32×32 inputs keep their resolution in the first stage. Stages are the attributes ``layer1 .. layerN``
(listed in ``stage_names``) so that methods acting on "the last stage" or "the low-level stages" can
address them by name; the classifier is ``fc``.

* :func:`resnet8` — 3 stages × 1 BasicBlock, widths 16/32/64: the ResNet-8 of the FL literature
  (e.g. FedDF, Lin et al. 2020).
* :func:`resnet18` — 4 stages × 2 BasicBlocks, widths 64..512, with the CIFAR stem.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_fed.models.head import ClassifierHeadModel, make_classifier

__all__ = ["BasicBlock", "CifarResNet", "resnet8", "resnet18"]


class BasicBlock(nn.Module):
    """The two-3×3-conv residual block of He et al., "Deep Residual Learning for Image Recognition" (2016).

    When the stride or the width changes, the shortcut is a 1×1 strided conv + BatchNorm (the paper's
    projection shortcut, option B).

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first conv (and of the shortcut).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(ClassifierHeadModel):
    """A ResNet with the CIFAR stem (He et al. 2016, Sec. 4.2): 3×3 conv, no max-pool, BasicBlock stages.

    Stage ``i`` (attribute ``layer{i+1}``) has ``block_counts[i]`` blocks of width ``widths[i]``; the first
    stage keeps the resolution, every later one halves it. :meth:`forward_features` returns the unpooled
    output of the last stage; :meth:`forward_head` applies global average pooling and the classifier ``fc``.

    Args:
        block_counts: Number of BasicBlocks per stage.
        widths: Channels per stage (the stem has ``widths[0]`` channels); the last is ``num_features``.
        num_classes: Classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        in_channels: Input channels.
    """

    def __init__(
        self,
        block_counts: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(block_counts) != len(widths) or not block_counts:
            raise ValueError(
                f"block_counts and widths must be non-empty and of equal length, got {block_counts!r} and {widths!r}"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stage_names: list[str] = []
        in_planes = widths[0]
        for index, (count, planes) in enumerate(zip(block_counts, widths, strict=True)):
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            stage_names.append(name)
        self.stage_names: tuple[str, ...] = tuple(stage_names)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.num_classes = num_classes
        self.fc = make_classifier(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the unpooled output of the last stage, ``(B, num_features, H', W')``."""
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = self.get_submodule(name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global-average-pools; returns logits, or the pooled embedding ``(B, num_features)``."""
        x = torch.flatten(self.global_pool(x), 1)
        return x if pre_logits else self.fc(x)


def resnet8(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """ResNet-8: CIFAR stem + 3 stages × 1 BasicBlock, widths ``width, 2*width, 4*width`` (16/32/64).

    The small ResNet of the federated-learning literature, e.g. FedDF (Lin et al., "Ensemble Distillation
    for Robust Model Fusion in Federated Learning", NeurIPS 2020); built from He et al. 2016's blocks.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input channels.
        width: Width of the first stage.
    """
    return CifarResNet((1, 1, 1), (width, 2 * width, 4 * width), num_classes=num_classes, in_channels=in_channels)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-18 (He et al. 2016) with the CIFAR stem: 4 stages × 2 BasicBlocks, widths 64/128/256/512.

    About 11.17M parameters for 10 classes.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input channels.
    """
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes=num_classes, in_channels=in_channels)
