"""FedAlign: local Lipschitz alignment of a width-reduced slice of the last stage.

Mendieta, Yang, Wang, Lee, Ding and Chen, "Local Learning Matters: Rethinking Data Heterogeneity in Federated
Learning" (CVPR 2022), Sec. 3.3 and the authors' code (``methods/fedalign.py``, ``models/resnet_fedalign.py``,
``models/slimmable_ops.py``). Per batch: the full-width network's CE; then a width-ω weight-shared slice of the last
stage re-runs on the (detached, channel-sliced) input of that stage; the Lipschitz constant of a block is
estimated as the spectral norm of its transmitting matrix ``G = a bᵀ/(HW)`` by power iteration, and the slice's is
matched to the full network's: ``L_lip = MSE(σ_slice, σ_full.detach())``, rescaled to ``μ·CE``. The server is FedAvg.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.losses.lipschitz import lipschitz_constant, lipschitz_mse, scale_to_reference
from lit_fed.models.cnn import FedAvgCNN, TinyCNN
from lit_fed.models.resnet import BasicBlock

__all__ = ["FedAlignClient", "last_stage", "slim_channels", "slim_forward"]


def slim_channels(channels: int, width: float, divisor: int = 1) -> int:
    """Channels of the width-``width`` slice: the authors' ``make_divisible(channels · width, divisor)``, clamped.

    ``make_divisible`` rounds to the nearest multiple of ``divisor``, adding one ``divisor`` if that lost more than
    10%; the result is clamped to ``[1, channels]``. The authors use
    ``divisor=8``; for the usual widths (16/32/64/128/256/512 × 0.25) it equals ``divisor=1``.
    """
    value = channels * width
    slim = max(1, int(value + divisor / 2) // divisor * divisor)
    if slim < 0.9 * value:
        slim += divisor
    return max(1, min(channels, slim))


def _conv(conv: nn.Conv2d, x: Tensor, width: float, divisor: int) -> Tensor:
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise TypeError(f"FedAlign slicing supports plain Conv2d (groups 1, zero padding), got {conv}")
    out_channels = slim_channels(conv.out_channels, width, divisor)
    weight = conv.weight[:out_channels, : x.shape[1]]
    bias = None if conv.bias is None else conv.bias[:out_channels]
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)


def _batch_norm(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    channels = x.shape[1]
    weight = None if bn.weight is None else bn.weight[:channels]
    bias = None if bn.bias is None else bn.bias[:channels]
    # The authors' USBatchNorm2d at a reduced width: batch statistics, sliced affine, no running statistics.
    return F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.0, eps=bn.eps)


def slim_forward(module: nn.Module, x: Tensor, width: float, divisor: int = 1) -> Tensor:
    """Runs the width-``width`` weight-shared slice of ``module`` on the (already channel-sliced) input ``x``.

    Every ``Conv2d`` uses ``weight[:slim(out), :in]`` (``in`` = the channels ``x`` carries); every ``BatchNorm2d``
    uses the first channels of its affine parameters with batch statistics and leaves its running statistics
    untouched (the authors' slimmable ops); parameter-free modules (activations, pooling, dropout) run as they are.
    Supports ``nn.Sequential`` nesting and lit_fed's :class:`~lit_fed.models.resnet.BasicBlock` (an identity
    shortcut wider than the slice is sliced too).

    Raises:
        TypeError: a module with parameters of another kind.
    """
    if isinstance(module, nn.Sequential):
        for child in module:
            x = slim_forward(child, x, width, divisor)
        return x
    if isinstance(module, BasicBlock):
        out = F.relu(_batch_norm(module.bn1, _conv(module.conv1, x, width, divisor)))
        out = _batch_norm(module.bn2, _conv(module.conv2, out, width, divisor))
        shortcut = x if module.downsample is None else slim_forward(module.downsample, x, width, divisor)
        if shortcut.shape[1] < out.shape[1]:
            raise TypeError(f"FedAlign slicing: a shortcut of {shortcut.shape[1]} channels for {out.shape[1]}")
        return F.relu(out + shortcut[:, : out.shape[1]])
    if isinstance(module, nn.Conv2d):
        return _conv(module, x, width, divisor)
    if isinstance(module, nn.BatchNorm2d):
        return _batch_norm(module, x)
    if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
        return module(x)
    raise TypeError(
        f"FedAlign slicing does not know how to slice {type(module).__name__}; supported: Conv2d, BatchNorm2d, "
        "parameter-free layers, nn.Sequential and lit_fed.models.BasicBlock"
    )


def _check_sliceable(module: nn.Module) -> None:
    if isinstance(module, nn.Sequential):
        for child in module:
            _check_sliceable(child)
        return
    if isinstance(module, BasicBlock | nn.BatchNorm2d):
        return
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise TypeError(f"FedAlign slicing supports plain Conv2d (groups 1, zero padding), got {module}")
        return
    if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
        return
    raise TypeError(f"FedAlign slicing does not know how to slice {type(module).__name__}")


def last_stage(backbone: nn.Module) -> tuple[str, ...]:
    """Names (relative to ``backbone``) of the modules forming its last stage, run in order.

    * a model listing ``stage_names`` (:class:`~lit_fed.models.resnet.CifarResNet`): the last one, ``layerN``;
    * :class:`~lit_fed.models.cnn.FedAvgCNN`: ``conv2`` (the second conv block, ``Conv → (BN) → ReLU → MaxPool``) —
      the last convolutional stage; the fully connected ``fc1`` belongs to the head side;
    * :class:`~lit_fed.models.cnn.TinyCNN`: ``conv, bn, act`` — its only (hence last) stage, whose input is the image.

    Raises:
        ValueError: another model: pass ``stage=`` to :class:`FedAlignClient`.
    """
    names = getattr(backbone, "stage_names", None)
    if names:
        return (str(names[-1]),)
    if isinstance(backbone, FedAvgCNN):
        return ("conv2",)
    if isinstance(backbone, TinyCNN):
        return ("conv", "bn", "act")
    raise ValueError(
        f"FedAlign: no default last stage for {type(backbone).__name__}; pass stage='<module name>' (or a list of "
        "consecutive module names) relative to the backbone"
    )


class FedAlignClient(FederatedClient):
    r"""FedAlign client (Mendieta et al. 2022) [code]: CE plus a Lipschitz-alignment term on a slice of the last stage.

    Per training batch (the authors' ``Client.train``):

    1. the full-width forward and ``CE`` (the task loss); the last stage's input ``a`` and output ``b`` are
       captured by forward hooks (detached copies);
    2. the width-ω slice of the last stage (ω = ``width``, 0.25) re-runs on ``a.detach()[:, :slim(C_in)]`` with
       weight-shared, channel-sliced convolutions and batch-statistics BatchNorm (:func:`slim_forward`, the
       authors' ``reuse_feature`` with ``width_mult`` = ω);
    3. ``σ = ‖G‖₂`` of the transmitting matrices ``G = a bᵀ/(HW)`` of the slice and of the full stage by
       ``power_iterations`` (10) power iterations (:func:`lit_fed.losses.lipschitz_constant`);
    4. ``L_lip = MSE(σ_slice, σ_full.detach())`` rescaled to ``μ·CE``: ``L_lip · μ·CE.item()/L_lip.item()``
       (:func:`lit_fed.losses.scale_to_reference`), added as ``lipschitz`` (logged ``train_lipschitz``).

    Gradients of ``L_lip`` reach only the sliced weights of the last stage. The authors clip the gradient norm to
    10 — set ``gradient_clip_val: 10`` on the Trainer (``configs/method/fedalign.yaml`` does).

    "Last stage" (:func:`last_stage`): ``layerN`` of a CIFAR ResNet; ``conv2`` of FedAvgCNN; the whole
    ``conv → bn → act`` feature extractor of TinyCNN; any other model needs ``stage=``.

    Args:
        backbone: A model with timm's feature/head contract.
        mu: μ ≥ 0, the Lipschitz term's size relative to CE (0.45).
        width: ω ∈ (0, 1), the slice's width multiplier (0.25).
        stage: Module name(s) of the last stage, relative to the backbone; ``None`` → :func:`last_stage`.
        power_iterations: Power-iteration steps (10).
        divisor: Channel rounding of the slice (:func:`slim_channels`); the authors use 8, which equals 1 for the
            usual widths; 1 keeps small test models' slices at ω.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule).

    Raises:
        ValueError: bad hyper-parameters, an unknown stage, or a slice as wide as the stage.
        TypeError: a stage with layers the slicer does not support.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mu: float = 0.45,
        width: float = 0.25,
        stage: str | Sequence[str] | None = None,
        power_iterations: int = 10,
        divisor: int = 1,
        **kwargs: Any,
    ) -> None:
        if mu < 0:
            raise ValueError(f"FedAlignClient: mu must be >= 0, got {mu}")
        if not 0.0 < width < 1.0:
            raise ValueError(f"FedAlignClient: width must be in (0, 1), got {width}")
        if power_iterations < 1:
            raise ValueError(f"FedAlignClient: power_iterations must be >= 1, got {power_iterations}")
        if divisor < 1:
            raise ValueError(f"FedAlignClient: divisor must be >= 1, got {divisor}")
        super().__init__(backbone, **kwargs)
        self.mu = mu
        self.width = width
        self.power_iterations = power_iterations
        self.divisor = divisor
        names = last_stage(backbone) if stage is None else ((stage,) if isinstance(stage, str) else tuple(stage))
        if not names:
            raise ValueError("FedAlignClient: stage names must not be empty")
        for name in names:
            try:
                module = backbone.get_submodule(name)
            except AttributeError as err:
                raise ValueError(f"FedAlignClient: the backbone has no module '{name}'") from err
            _check_sliceable(module)
        self.stage = names
        self._stage_io: tuple[Tensor, Tensor] | None = None

    def stage_modules(self) -> list[nn.Module]:
        """The last stage's modules, in order."""
        return [self.backbone.get_submodule(name) for name in self.stage]

    @contextlib.contextmanager
    def _capture_stage(self) -> Iterator[dict[str, Tensor]]:
        modules = self.stage_modules()
        captured: dict[str, Tensor] = {}

        def keep_input(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured["input"] = args[0].detach().clone()

        def keep_output(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            captured["output"] = output.detach().clone()

        handles = [modules[0].register_forward_pre_hook(keep_input), modules[-1].register_forward_hook(keep_output)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @override
    def compute_step(self, batch: tuple[Tensor, Tensor]) -> StepOutput:
        """The full-width forward and CE; in training, also captures the last stage's input and output."""
        if not (self.training and torch.is_grad_enabled()):
            return super().compute_step(batch)
        with self._capture_stage() as captured:
            output = super().compute_step(batch)
        if "input" not in captured or "output" not in captured:
            raise RuntimeError(f"FedAlignClient: the stage {self.stage} did not run in the backbone's forward")
        self._stage_io = (captured["input"], captured["output"])
        return output

    def slice_forward(self, stage_input: Tensor) -> tuple[Tensor, Tensor]:
        """``(sliced input, slice output)``: the width-ω slice of the last stage on the detached stage input."""
        sliced = stage_input.detach()[:, : slim_channels(stage_input.shape[1], self.width, self.divisor)]
        out = sliced
        for module in self.stage_modules():
            out = slim_forward(module, out, self.width, self.divisor)
        return sliced, out

    def lipschitz_loss(self, stage_input: Tensor, stage_output: Tensor) -> Tensor:
        """Unscaled ``L_lip = MSE(σ(G_slice), σ(G_full).detach())`` for captured full-width stage input/output."""
        sliced_in, sliced_out = self.slice_forward(stage_input)
        if sliced_in.shape[1] == stage_input.shape[1] and sliced_out.shape[1] == stage_output.shape[1]:
            raise ValueError(
                f"FedAlignClient: the width-{self.width} slice of stage {self.stage} is the full stage "
                f"({stage_input.shape[1]}→{stage_output.shape[1]} channels); lower `divisor` or `width`"
            )
        sigma_slice = lipschitz_constant(sliced_in, sliced_out, self.power_iterations)
        with torch.no_grad():
            sigma_full = lipschitz_constant(stage_input.detach(), stage_output.detach(), self.power_iterations)
        return lipschitz_mse(sigma_slice, sigma_full)

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """Regularizers plus ``lipschitz = L_lip · μ·CE.item()/L_lip.item()`` (after a training forward)."""
        extras = super().extra_losses(batch, output)
        if self._stage_io is None or output is None:
            return extras
        stage_input, stage_output = self._stage_io
        self._stage_io = None
        loss = self.lipschitz_loss(stage_input, stage_output)
        extras["lipschitz"] = scale_to_reference(loss, output.loss.detach(), self.mu)
        return extras
