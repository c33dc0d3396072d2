"""Small convolutional and fully connected backbones with timm's feature/head contract.

Every model here exposes ``forward_features`` / ``forward_head(pre_logits=...)`` / ``get_classifier`` /
``reset_classifier`` and the attributes ``num_features`` (embedding size, the classifier's
``in_features``) and ``num_classes``. The classifier is always the attribute ``fc``; everything else is the
"body" that personalization methods such as FedPer / FedRep share.

* :class:`FedAvgCNN` — the 2-conv + 2-FC CNN of McMahan et al. 2017, with the exact layout and attribute
  names of PFLlib's ``FedAvgCNN`` (``conv1``, ``conv2``, ``fc1``, ``fc``).
* :class:`TinyCNN` — a one-conv network with BatchNorm, for fast tests (and BN-personalization tests).
* :class:`MLP` — a flatten + fully connected network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_fed.models.head import ClassifierHeadModel, make_classifier

__all__ = ["FedAvgCNN", "TinyCNN", "MLP"]


def _spatial_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(int(s) for s in input_size)
    if len(size) != 2:
        raise ValueError(f"input_size must be an int or a (height, width) pair, got {input_size!r}")
    return size[0], size[1]


def _conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """``[Conv2d 5×5, (BatchNorm2d,) ReLU, MaxPool2d 2]`` — PFLlib's block, BN optional."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=0, stride=1, bias=True)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=(2, 2))]
    return nn.Sequential(*layers)


class FedAvgCNN(ClassifierHeadModel):
    """The FedAvg CNN: two 5×5 conv + max-pool blocks, one hidden FC layer and a linear classifier.

    The architecture of McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (AISTATS 2017), reproduced exactly as PFLlib's ``FedAvgCNN``
    (``system/flcore/trainmodel/models.py``): ``conv1 = [Conv2d(in, 32, 5), ReLU, MaxPool2d(2)]``,
    ``conv2 = [Conv2d(32, 64, 5), ReLU, MaxPool2d(2)]``, ``fc1 = [Linear(dim, 512), ReLU]``,
    ``fc = Linear(512, num_classes)``, with no padding. PFLlib's FedPer / FedRep take ``head = fc``, so the
    same split is obtained here through :meth:`get_classifier`.

    The flattened feature size ``dim`` is derived from ``input_size`` instead of being passed by hand
    (PFLlib's ``dim`` argument): 1024 for 28×28 inputs (MNIST, FMNIST), 1600 for 32×32 (CIFAR-10/100).

    Args:
        in_channels: Input channels (1 for MNIST-like data, 3 for CIFAR). PFLlib's ``in_features``.
        num_classes: Classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        hidden_dim: Width of ``fc1`` (the embedding size); 512 in the paper. PFLlib's ``dim1``.
        input_size: Spatial size of the input, an int or a ``(height, width)`` pair.
        batch_norm: Insert ``BatchNorm2d`` after each convolution (``[Conv, BN, ReLU, Pool]``), as FedBN's
            experiments do (Li et al. 2021); off by default, which is PFLlib's exact model.

    Example:
        >>> model = FedAvgCNN(in_channels=1, num_classes=10, input_size=28)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        hidden_dim: int = 512,
        input_size: int | Sequence[int] = 28,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        height, width = _spatial_size(input_size)
        # Two (5×5 valid conv, 2×2 max-pool) blocks: s -> (s - 4) // 2 -> ((s - 4) // 2 - 4) // 2.
        out_h = ((height - 4) // 2 - 4) // 2
        out_w = ((width - 4) // 2 - 4) // 2
        if out_h < 1 or out_w < 1:
            raise ValueError(f"FedAvgCNN needs inputs of at least 16x16, got input_size={input_size!r}")
        self.input_size = (height, width)
        self.feature_dim = 64 * out_h * out_w
        self.conv1 = _conv_block(in_channels, 32, batch_norm)
        self.conv2 = _conv_block(32, 64, batch_norm)
        self.fc1 = nn.Sequential(nn.Linear(self.feature_dim, hidden_dim), nn.ReLU(inplace=True))
        self.num_features = hidden_dim
        self.num_classes = num_classes
        self.fc = make_classifier(hidden_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the flattened output of the two conv blocks, shape ``(B, feature_dim)``."""
        return torch.flatten(self.conv2(self.conv1(x)), 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Maps features to logits, or to the ``fc1`` embedding ``(B, hidden_dim)`` if ``pre_logits``."""
        x = self.fc1(x)
        return x if pre_logits else self.fc(x)


class TinyCNN(ClassifierHeadModel):
    """A one-conv CNN with BatchNorm: ``Conv3×3 → BatchNorm2d → ReLU → 2×2 average pool → fc``.

    Intended for fast unit tests of the library, including BatchNorm personalization (FedBN, Li et al.
    2021), hence the BatchNorm layer. The adaptive 2×2 pool keeps coarse spatial layout (a global pool
    cannot tell apart classes that differ only in where their pixels are) and makes the network
    independent of the input size.

    Args:
        in_channels: Input channels.
        num_classes: Classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        width: Conv channels; the embedding size ``num_features`` is ``4 · width``.
        input_size: Nominal spatial input size; only recorded (as ``input_size``) for building example
            inputs, since the network accepts any size.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 8, input_size: int = 8) -> None:
        super().__init__()
        self.input_size = input_size
        self.conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.num_features = 4 * width
        self.num_classes = num_classes
        self.fc = make_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the unpooled feature map ``(B, width, H, W)``."""
        return self.act(self.bn(self.conv(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pools the feature map; returns logits, or the pooled embedding ``(B, 4·width)`` if ``pre_logits``."""
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.fc(x)


class MLP(ClassifierHeadModel):
    """A multi-layer perceptron on flattened inputs: ``flatten → [Linear → ReLU] * len(hidden) → fc``.

    Args:
        in_features: Size of the flattened input (e.g. 784 for 28×28 grayscale images).
        num_classes: Classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        hidden: Widths of the hidden layers; the last one is the embedding size ``num_features``
            (``in_features`` if ``hidden`` is empty, making the model a linear classifier).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_features
        for width in hidden:
            layers += [nn.Linear(dim, width), nn.ReLU(inplace=True)]
            dim = width
        self.body = nn.Sequential(*layers)
        self.num_features = dim
        self.num_classes = num_classes
        self.fc = make_classifier(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the last hidden activation ``(B, num_features)`` of the flattened input."""
        return self.body(torch.flatten(x, 1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Returns logits, or the features unchanged if ``pre_logits``."""
        return x if pre_logits else self.fc(x)
