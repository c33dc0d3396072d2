"""PSE: Personalized Semantics Excitation — a personal model that attends to a global copy, excited towards it.

A seed paper of this project with no public code, so no rule below could be checked against an implementation:
the whole design is this library's, tagged **[design]**; the finer choices beyond the rules listed here are tagged
[design] where they are made, and explained.

Each client keeps a *personal model* (a convolutional backbone, a cross-model attention block, a classifier and an
auxiliary head) and trains a copy of the *global model* (Ditto-like: Li et al., ICML 2021, Alg. 1); only the global
copy is sent.

* **Per batch** (one optimizer step, disjoint parameters — the same argument as Ditto's): the global copy is trained
  on ``CE(w_g(x), y)``; the personal path computes the personal feature map ``H_k`` (the last conv stage, tokens =
  its ``H·W`` positions, the channels as the embedding), lets it attend to the global copy's *detached* feature map
  ``H_g`` (4-head cross-attention, residual on ``H_k``, LayerNorm), pools and classifies, and adds
  ``CE + 0.5·CE(aux head on pooled H_k)``.
* **Gradient excitation**: for every conv layer (both models have the same ones) and output channel ``c``,
  ``a^g_c = mean|∇w_g[c]|``, ``a^k_c = mean|∇w_k[c]|`` and the EMA score ``s_c ← 0.9 s_c + 0.1 |a^g_c − a^k_c|``,
  read after AMP unscaling (Lightning's ``on_before_optimizer_step``) and skipped on a step with non-finite
  gradients. After each local epoch, in the first (low-level) conv stages, the top ``ρ`` (0.3) channels of each layer
  by ``s`` are excited: ``W_k[c] ← W_k[c] + β α_c (W_g[c] − W_k[c])`` with ``α_c = s_c / max s`` and ``β`` 0.5.
* **Inference** uses both models: personalized logits come from the personal path attending to the global copy's
  features; :meth:`PSEClient.global_logits` is the global copy alone.

Switches for ablations: ``excitation`` (off: no scores, no excitation), ``attention`` (off: the personal classifier
reads the pooled ``H_k`` directly and never touches the global features), ``score`` (``"absolute"`` or the
one-sided ``max(0, a^g − a^k)``), ``excited_stages``, ``rho``, ``beta``, ``ema``.

Configs: ``configs/method/pse.yaml``, ``pse_no_excitation.yaml``, ``pse_no_attention.yaml``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.split import Modules, ParameterSelector
from lit_fed.models.cnn import FedAvgCNN

__all__ = [
    "BackboneAdapter",
    "CrossModelAttention",
    "ExcitationScores",
    "PSEClient",
    "PSEStepOutput",
    "channel_grad_magnitude",
    "excite_channels_",
    "num_excited",
    "score_increment",
    "select_channels",
]

ScoreMode = Literal["absolute", "one_sided"]
SCORE_MODES: tuple[str, ...] = ("absolute", "one_sided")


# ---------------------------------------------------------------------------------------------------------------------
# Backbone adapter: the last conv stage's feature map and the conv stages, without editing the model files
# ---------------------------------------------------------------------------------------------------------------------
def _is_conv(module: nn.Module) -> bool:
    """A forward convolution (``Conv1d/2d/3d``; transposed convolutions have no "output channel" rows)."""
    return isinstance(module, _ConvNd) and not module.transposed


def _has_conv(module: nn.Module) -> bool:
    return any(_is_conv(m) for m in module.modules())


class BackboneAdapter:
    """How PSE reads a backbone: the last conv stage's feature map, the head on it, and the conv stages.

    Knows lit_fed's models and falls back on timm's contract [design]:

    * :class:`~lit_fed.models.FedAvgCNN`: ``forward_features`` flattens, so the map is ``conv2(conv1(x))``
      ``(B, 64, h, w)`` and the head input is its flattening;
    * anything whose ``forward_features`` returns a 4-D map (``TinyCNN``, ``CifarResNet`` — the output of its last
      stage ``layerN`` —, timm CNNs through ``TimmBackbone``): that map, and ``forward_head`` on it.

    Conv *stages* (for ``excited_stages``) are the top-level children that contain a convolution, in registration
    order, after descending through single wrapper children (``TimmBackbone.model``) [design]: FedAvgCNN
    ``conv1, conv2``; TinyCNN ``conv``; CifarResNet ``conv1`` (the stem), ``layer1 .. layerN``.

    Args:
        backbone: The global model (timm's feature/head contract).

    Raises:
        TypeError: the backbone has no convolution.
    """

    def __init__(self, backbone: nn.Module) -> None:
        if not _has_conv(backbone):
            raise TypeError(f"PSE needs a convolutional backbone; {type(backbone).__name__} has no conv layer")
        self.flattening = isinstance(backbone, FedAvgCNN)

    def feature_map(self, model: nn.Module, x: Tensor) -> Tensor:
        """The last conv stage's output ``(B, C, H, W)`` of ``model`` (the backbone or its personal copy)."""
        if self.flattening:
            return model.conv2(model.conv1(x))  # type: ignore[operator]
        out = model.forward_features(x)  # type: ignore[operator]
        if out.dim() != 4:
            raise TypeError(
                f"PSE: {type(model).__name__}.forward_features returned a {out.dim()}-D tensor; PSE needs the last "
                "conv stage's (B, C, H, W) feature map"
            )
        return out

    def embedding(self, model: nn.Module, feature_map: Tensor) -> Tensor:
        """The backbone's own embedding (``forward_head(..., pre_logits=True)``) computed from its feature map."""
        features = torch.flatten(feature_map, 1) if self.flattening else feature_map
        return model.forward_head(features, pre_logits=True)  # type: ignore[operator]

    def strip_head(self, model: nn.Module) -> None:
        """Removes the backbone's own head from the personal copy (PSE's personal model has its own heads).

        FedAvgCNN: ``fc1`` and ``fc`` become ``nn.Identity``; others: ``reset_classifier(0)`` when available (timm's
        convention for "no classifier"). The copy's conv layers keep their names, so they pair with the backbone's.
        """
        if self.flattening:
            model.fc1 = nn.Identity()
            model.fc = nn.Identity()
        elif callable(getattr(model, "reset_classifier", None)):
            model.reset_classifier(0)  # type: ignore[operator]

    def probe(self, model: nn.Module) -> tuple[int, int, int]:
        """``(C, H, W)`` of the feature map, from one forward pass in eval mode without gradients.

        The probe input has the first conv's ``in_channels`` and the model's ``input_size`` attribute when it has
        one, else 32×32 [design]: only ``C`` must be known in advance (the token count may vary with the input).
        """
        first = next(m for m in model.modules() if _is_conv(m))
        size = getattr(model, "input_size", 32)
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        x = torch.zeros(2, first.in_channels, height, width, device=first.weight.device, dtype=first.weight.dtype)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                shape = self.feature_map(model, x).shape
        finally:
            model.train(was_training)
        return int(shape[1]), int(shape[2]), int(shape[3])

    @staticmethod
    def conv_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
        """``[(stage name, [conv layer names]), ...]`` in registration order (names relative to ``model``)."""
        prefix, module = "", model
        while True:
            children = [(name, child) for name, child in module.named_children() if _has_conv(child)]
            if len(children) == 1 and not _is_conv(children[0][1]):
                name, module = children[0]
                prefix = f"{prefix}{name}."
                continue
            break
        stages = []
        for name, child in children:
            convs = [f"{prefix}{name}" + (f".{sub}" if sub else "") for sub, m in child.named_modules() if _is_conv(m)]
            stages.append((f"{prefix}{name}", convs))
        return stages


# ---------------------------------------------------------------------------------------------------------------------
# Cross-model attention
# ---------------------------------------------------------------------------------------------------------------------
def _tokens(feature_map: Tensor) -> Tensor:
    """``(B, C, H, W) → (B, H·W, C)``: one token per spatial position, the channels as its embedding."""
    return feature_map.flatten(2).transpose(1, 2)


class CrossModelAttention(nn.Module):
    """Personal tokens attend to the global copy's tokens: ``LayerNorm(T_k + MHA(T_k, T_g, T_g))`` [design].

    Queries come from the personal feature map ``H_k``, keys and values from the global copy's ``H_g``; the
    residual is on ``H_k``. [design] Post-norm (one ``nn.LayerNorm`` after the residual), no positional encoding
    (both maps come from the same positions of the same input), ``nn.MultiheadAttention(batch_first=True)``.

    Args:
        dim: Channels ``C`` of the feature maps (the token embedding size).
        num_heads: Attention heads (4 by default [design]); must divide ``dim``.
        dropout: Attention dropout (0 by default [design]).

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"CrossModelAttention: num_heads={num_heads} must divide the feature channels {dim}")
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, personal_map: Tensor, global_map: Tensor) -> Tensor:
        """Returns the attended personal tokens ``(B, H·W, C)``; ``global_map`` is used as given (detach it)."""
        query = _tokens(personal_map)
        memory = _tokens(global_map).to(query.dtype)
        attended, _ = self.attn(query, memory, memory, need_weights=False)
        return self.norm(query + attended)


# ---------------------------------------------------------------------------------------------------------------------
# Gradient excitation: scores, selection, update (pure functions, then the score bank)
# ---------------------------------------------------------------------------------------------------------------------
def channel_grad_magnitude(grad: Tensor) -> Tensor:
    """``a_c = mean|∇w[c]|`` per output channel (dim 0), in float32: ``(C_out, ...) → (C_out,)``."""
    return grad.detach().float().abs().flatten(1).mean(1) if grad.dim() > 1 else grad.detach().float().abs()


def score_increment(a_global: Tensor, a_personal: Tensor, mode: ScoreMode = "absolute") -> Tensor:
    """The EMA's new term: ``|a^g − a^k|`` (``"absolute"``, the default) or ``max(0, a^g − a^k)`` (``"one_sided"``).

    [design] One-sided scores only channels whose global gradient is the larger, i.e. where the global copy is
    still learning something the personal model is not.
    """
    diff = a_global - a_personal
    if mode == "absolute":
        return diff.abs()
    if mode == "one_sided":
        return diff.clamp_min(0.0)
    raise ValueError(f"score must be one of {SCORE_MODES}, got {mode!r}")


def num_excited(channels: int, rho: float) -> int:
    """How many channels the top-``ρ`` selection keeps: ``⌈ρ·C⌉`` [design: at least the fraction ρ; 0 for ρ = 0].

    A ``1e-9`` tolerance keeps float noise from rounding up (``0.3·10`` is ``3.0000000000000004``).
    """
    return min(channels, max(0, math.ceil(rho * channels - 1e-9)))


def select_channels(scores: Tensor, rho: float) -> tuple[Tensor, Tensor]:
    """The top-``ρ`` channels by score and their ``α_c = s_c / max s`` [design].

    Ties are broken by the lower channel index (stable sort) [design: deterministic]. With no positive score
    every ``α`` is 0, so excitation changes nothing.

    Returns:
        ``(indices, alpha)``, both of length :func:`num_excited`, highest score first.
    """
    k = num_excited(scores.numel(), rho)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    top = scores.max() if scores.numel() else scores.new_zeros(())
    alpha = torch.where(top > 0, scores[order] / top.clamp_min(torch.finfo(scores.dtype).tiny), 0.0)
    return order, alpha


def excite_channels_(personal: Tensor, global_: Tensor, indices: Tensor, coefficient: Tensor) -> None:
    """In place: ``W_k[c] ← W_k[c] + coefficient_c (W_g[c] − W_k[c])`` for ``c`` in ``indices`` (dim 0)."""
    if indices.numel() == 0:
        return
    shape = (-1,) + (1,) * (personal.dim() - 1)
    current = personal[indices]
    target = global_[indices].to(personal.dtype)
    personal[indices] = current + coefficient.to(personal.dtype).view(shape) * (target - current)


def _buffer_name(layer: str) -> str:
    return "score__" + layer.replace(".", "__")


class ExcitationScores(nn.Module):
    """The per-channel EMA scores ``s`` of every paired conv layer, as persistent float32 buffers.

    Buffers (so they follow the module to the device and are in its state dict, hence in the personal state):
    ``score__<layer name with "." → "__">`` of shape ``(C_out,)`` and ``num_updates`` (how many EMA updates were
    applied; steps with non-finite gradients do not count).

    Args:
        layers: ``{conv layer name: output channels}``.
    """

    def __init__(self, layers: dict[str, int]) -> None:
        super().__init__()
        self.layer_names = list(layers)
        for name, channels in layers.items():
            self.register_buffer(_buffer_name(name), torch.zeros(channels, dtype=torch.float32))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def score(self, layer: str) -> Tensor:
        """The score buffer of ``layer`` (the live tensor: writes change the state)."""
        return getattr(self, _buffer_name(layer))

    def scores(self) -> dict[str, Tensor]:
        """``{layer: score buffer}``."""
        return {name: self.score(name) for name in self.layer_names}


@dataclass
class PSEStepOutput(StepOutput):
    """:class:`~lit_fed.client.module.StepOutput` plus the global copy's feature map ``H_g`` of the batch.

    Attributes:
        global_map: ``(B, C, H, W)`` (with its graph: the global CE trains through it; the personal path detaches).
    """

    global_map: Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------------------------
class PSEClient(FederatedClient):
    r"""PSE client (all **[design]**): a trained global copy plus a personal model that attends to it.

    Modules: ``backbone`` is the global copy ``w_g`` (the shared state, uploaded and aggregated by FedAvg);
    ``personal_model`` is a copy of the backbone taken at construction, with its own head removed (it computes
    ``H_k``); ``cross_attention`` (:class:`CrossModelAttention`, absent with ``attention=False``), ``personal_head``
    and ``aux_head`` (``Linear(C, num_classes)`` on pooled tokens) and ``excitation_scores``
    (:class:`ExcitationScores`, absent with ``excitation=False``). Everything but ``backbone`` is personal: it is
    added to the split, persists per client in the client-state store across rounds, and never leaves the client.

    Per batch (one ``training_step``, one optimizer step): the task loss is the global copy's ``CE(w_g(x), y)``
    (:meth:`compute_step`, which also returns ``H_g``), and :meth:`extra_losses` adds ``personal_ce`` (CE of the
    personal prediction) and ``aux_ce`` (``aux_weight · CE(aux_head(pool(H_k)))``). ``H_g`` enters the personal path
    detached, and the two models share no parameter, so the personal terms give no gradient to ``w_g`` and the
    global CE none to the personal model: one step of a per-parameter optimizer equals the two separate steps
    (as in Ditto; gradient clipping by global norm would couple them through the shared norm). The logged and
    uploaded ``train_loss`` is the sum of the three terms.

    [design] choices beyond the rules of the module docstring:

    * ``H_k`` / ``H_g`` are the *last* conv stage's maps (see :class:`BackboneAdapter`); pooling is the mean over
      tokens; the aux head reads the pooled ``H_k`` before attention.
    * The personal model starts as a copy of the initial global model, identical on every client (as Ditto's ``v``).
    * Scores are kept for *every* paired conv layer (the rule), only the ``excited_stages`` layers are excited.
      The score reads the weight gradient only; excitation moves the channel's weight slice *and* its bias entry
      (the channel's whole filter). BatchNorm layers are not excited.
    * ``W_g`` in the excitation is the client's *current* global copy (the locally trained one whose gradients
      produced ``a^g``), at the end of each local epoch (Lightning's ``on_train_epoch_end``; with ``local_steps``
      that is the end of the run's last, possibly partial, epoch).
    * The EMA update runs in ``on_before_optimizer_step``: after AMP unscaling under ``16-mixed`` (Lightning unscales
      before this hook; for optimizers that unscale inside ``step()`` — fused ones — the gradients are divided by the
      scale here), before gradient clipping, once per optimizer step (accumulated gradients). It is skipped — scores
      and ``num_updates`` unchanged — when any gradient of the optimizer's parameters is non-finite (the steps the
      grad scaler skips), without a host sync (``torch.where``).
    * At evaluation, the loop loads the latest aggregated global state into the global copy, so the personalized
      prediction attends to the aggregated global model's features.

    Args:
        backbone: The global model (a conv net with timm's feature/head contract: FedAvgCNN, TinyCNN, CifarResNet,
            timm CNNs).
        attention: Use the cross-model attention; off, the personal classifier reads the pooled ``H_k`` directly
            (ablation "attention off").
        excitation: Track gradient scores and excite; off, neither (ablation "excitation off").
        score: ``"absolute"`` (``|a^g − a^k|``, the default) or ``"one_sided"`` (``max(0, a^g − a^k)`` [design]).
        excited_stages: Which conv stages are excited: ``None`` = the first ``⌈n/2⌉`` of the ``n`` stages (the
            low-level half [design]: FedAvgCNN ``conv1``; TinyCNN ``conv``; ResNet-8 ``conv1`` + ``layer1``), an int
            = the first that many stages, or a list of stage names (see :meth:`BackboneAdapter.conv_stages`).
        rho: Fraction of each excited layer's channels excited (top by score), in [0, 1]; 0.3.
        beta: Excitation strength ``β`` in [0, 1]; 0.5.
        ema: EMA decay of the scores in [0, 1); 0.9.
        num_heads: Attention heads; 4. Must divide the feature channels.
        aux_weight: Weight of the auxiliary CE; 0.5.
        attention_dropout: Dropout inside the attention; 0.
        personal: Extra personal selectors (the PSE modules are always personal).
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler, schedule); e.g. a
            proximal term on the global copy; one optimizer over all trainable parameters of both models.

    Raises:
        ValueError: an option is out of range, a stage name is unknown, or the classifier has no outputs.
        TypeError: the backbone is not convolutional or its features are not a 4-D map.
    """

    def __init__(
        self,
        backbone: nn.Module,
        attention: bool = True,
        excitation: bool = True,
        score: ScoreMode = "absolute",
        excited_stages: int | list[str] | None = None,
        rho: float = 0.3,
        beta: float = 0.5,
        ema: float = 0.9,
        num_heads: int = 4,
        aux_weight: float = 0.5,
        attention_dropout: float = 0.0,
        personal: Sequence[ParameterSelector] = (),
        **kwargs: Any,
    ) -> None:
        if score not in SCORE_MODES:
            raise ValueError(f"PSEClient: score must be one of {SCORE_MODES}, got {score!r}")
        for name, value, low, high in (("rho", rho, 0.0, 1.0), ("beta", beta, 0.0, 1.0)):
            if not low <= value <= high:
                raise ValueError(f"PSEClient: {name} must be in [{low}, {high}], got {value}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"PSEClient: ema must be in [0, 1), got {ema}")
        if aux_weight < 0:
            raise ValueError(f"PSEClient: aux_weight must be >= 0, got {aux_weight}")
        adapter = BackboneAdapter(backbone)
        names = ["personal_model", "personal_head", "aux_head"]
        names += ["cross_attention"] if attention else []
        names += ["excitation_scores"] if excitation else []
        super().__init__(backbone, [*personal, Modules(names)], **kwargs)
        if self.num_classes < 1:
            raise ValueError("PSEClient: the backbone's classifier has no outputs (num_classes 0)")
        self.adapter = adapter
        self.use_attention = attention
        self.use_excitation = excitation
        self.score_mode: ScoreMode = score
        self.rho, self.beta, self.ema, self.aux_weight = float(rho), float(beta), float(ema), float(aux_weight)

        personal_model = copy.deepcopy(backbone)
        adapter.strip_head(personal_model)
        self.personal_model = personal_model
        channels, _, _ = adapter.probe(backbone)
        self.feature_channels = channels
        self.cross_attention = CrossModelAttention(channels, num_heads, attention_dropout) if attention else None
        self.personal_head = nn.Linear(channels, self.num_classes)
        self.aux_head = nn.Linear(channels, self.num_classes)

        self.conv_stages = adapter.conv_stages(backbone)
        personal_modules = dict(personal_model.named_modules())
        pairs: dict[str, int] = {}  # conv layers present, with the same shape, in both models
        for _, convs in self.conv_stages:
            for layer in convs:
                mine = personal_modules.get(layer)
                theirs = backbone.get_submodule(layer).weight.shape
                if mine is not None and _is_conv(mine) and mine.weight.shape == theirs:
                    pairs[layer] = int(theirs[0])
        self.scored_layers: list[str] = list(pairs) if excitation else []
        self.excited_stage_names = self._resolve_stages(excited_stages)
        stage_convs = dict(self.conv_stages)
        self.excited_layers: list[str] = (
            [layer for stage in self.excited_stage_names for layer in stage_convs[stage] if layer in pairs]
            if excitation
            else []
        )
        self.excitation_scores = ExcitationScores(pairs) if excitation else None
        self.last_excitation: dict[str, tuple[Tensor, Tensor]] = {}

    def _resolve_stages(self, excited_stages: int | list[str] | None) -> list[str]:
        available = [name for name, _ in self.conv_stages]
        if excited_stages is None:
            return available[: math.ceil(len(available) / 2)]
        if isinstance(excited_stages, int) and not isinstance(excited_stages, bool):
            if not 1 <= excited_stages <= len(available):
                raise ValueError(
                    f"PSEClient: excited_stages={excited_stages} must be in [1, {len(available)}] (the stages are "
                    f"{available}); use excitation=False to turn excitation off"
                )
            return available[:excited_stages]
        names = list(excited_stages)
        unknown = [name for name in names if name not in available]
        if unknown or not names:
            raise ValueError(f"PSEClient: excited_stages {names} must be a non-empty subset of the stages {available}")
        return names

    # -- forward paths ---------------------------------------------------------------------------------
    def global_feature_map(self, x: Tensor) -> Tensor:
        """``H_g``: the global copy's last conv stage map ``(B, C, H, W)``."""
        return self.adapter.feature_map(self.backbone, x)

    def personal_feature_map(self, x: Tensor) -> Tensor:
        """``H_k``: the personal model's last conv stage map ``(B, C, H, W)``."""
        return self.adapter.feature_map(self.personal_model, x)

    def personal_outputs(self, x: Tensor, global_map: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(personal logits, aux logits)`` of the personal path.

        Args:
            x: The input batch.
            global_map: ``H_g`` of the same batch if already computed; it is detached here either way. Unused (and
                never computed) with ``attention=False``.
        """
        personal_map = self.personal_feature_map(x)
        pooled_personal = personal_map.mean(dim=(2, 3))
        aux_logits = self.aux_head(pooled_personal)
        if self.cross_attention is None:
            return self.personal_head(pooled_personal), aux_logits
        if global_map is None:
            with torch.no_grad():
                global_map = self.global_feature_map(x)
        attended = self.cross_attention(personal_map, global_map.detach())
        return self.personal_head(attended.mean(dim=1)), aux_logits

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Personalized class scores (the personal path attending to the global copy)."""
        return self.personal_outputs(x)[0]

    @override
    def predict_logits(self, x: Tensor) -> Tensor:
        """Personalized class scores used by the evaluator: :meth:`forward`."""
        return self.personal_outputs(x)[0]

    @override
    def global_logits(self, x: Tensor) -> Tensor:
        """Class scores of the global copy alone."""
        return self.classify(self.embed(x))

    # -- losses ----------------------------------------------------------------------------------------
    @override
    def compute_step(self, batch: tuple[Tensor, Tensor]) -> PSEStepOutput:
        """The global copy's CE; also returns its feature map ``H_g`` (one forward, one BatchNorm update)."""
        x, y = batch[0], batch[1]
        global_map = self.global_feature_map(x)
        embedding = self.adapter.embedding(self.backbone, global_map)
        logits = self.classify(embedding)
        return PSEStepOutput(
            loss=F.cross_entropy(logits, y), logits=logits, target=y, embedding=embedding, global_map=global_map
        )

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """The regularizers' terms plus ``personal_ce`` and ``aux_ce`` (``aux_weight · CE(aux head)``)."""
        extras = super().extra_losses(batch, output)
        x, y = batch[0], batch[1]
        global_map = output.global_map if isinstance(output, PSEStepOutput) else None
        logits, aux_logits = self.personal_outputs(x, global_map)
        extras["personal_ce"] = F.cross_entropy(logits, y)
        extras["aux_ce"] = self.aux_weight * F.cross_entropy(aux_logits, y)
        return extras

    # -- gradient excitation ---------------------------------------------------------------------------
    def layer_pair(self, layer: str) -> tuple[nn.Module, nn.Module]:
        """``(global conv, personal conv)`` named ``layer``."""
        return self.backbone.get_submodule(layer), self.personal_model.get_submodule(layer)

    def update_scores(self, check: Iterable[Tensor] | None = None, inv_scale: Tensor | float | None = None) -> None:
        """One EMA step of every layer's scores from the current ``.grad`` [design].

        ``s_c ← ema·s_c + (1 − ema)·inc_c`` with ``inc`` from :func:`score_increment` of ``a^g``, ``a^k``
        (:func:`channel_grad_magnitude`). Layers whose gradients are missing on either side (a frozen part) are
        left unchanged. Nothing changes when a gradient in ``check`` (default: the scored gradients) is non-finite.

        Args:
            check: Gradients whose finiteness decides whether the update applies (all the optimizer's gradients:
                the grad scaler skips the step if any is non-finite).
            inv_scale: Multiplies the gradients first (``1/scale`` when they are still scaled).
        """
        if self.excitation_scores is None:
            return
        with torch.no_grad():
            pairs = []
            for layer in self.scored_layers:
                global_conv, personal_conv = self.layer_pair(layer)
                if global_conv.weight.grad is not None and personal_conv.weight.grad is not None:
                    pairs.append((layer, global_conv.weight.grad, personal_conv.weight.grad))
            if not pairs:
                return
            grads = list(check) if check is not None else [g for _, gg, gk in pairs for g in (gg, gk)]
            finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
            for layer, grad_global, grad_personal in pairs:
                a_global, a_personal = channel_grad_magnitude(grad_global), channel_grad_magnitude(grad_personal)
                if inv_scale is not None:
                    a_global, a_personal = a_global * inv_scale, a_personal * inv_scale
                scores = self.excitation_scores.score(layer)
                updated = self.ema * scores + (1.0 - self.ema) * score_increment(a_global, a_personal, self.score_mode)
                scores.copy_(updated if finite is None else torch.where(finite.to(scores.device), updated, scores))
            counter = self.excitation_scores.num_updates
            counter.add_(1 if finite is None else finite.to(counter.device, torch.long))

    def excite(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Excites the selected layers' top-``ρ`` channels towards the global copy [design].

        For each layer of the excited stages: ``(indices, α) = select_channels(s, ρ)`` and
        ``W_k[c] ← W_k[c] + β α_c (W_g[c] − W_k[c])`` (weight slice and bias entry). Nothing else changes.

        Returns:
            ``{layer: (indices, alpha)}``, also kept as ``last_excitation``.
        """
        record: dict[str, tuple[Tensor, Tensor]] = {}
        if self.excitation_scores is None:
            return record
        with torch.no_grad():
            for layer in self.excited_layers:
                global_conv, personal_conv = self.layer_pair(layer)
                indices, alpha = select_channels(self.excitation_scores.score(layer), self.rho)
                indices = indices.to(personal_conv.weight.device)
                coefficient = (self.beta * alpha).to(personal_conv.weight.device)
                excite_channels_(personal_conv.weight, global_conv.weight, indices, coefficient)
                if personal_conv.bias is not None and global_conv.bias is not None:
                    excite_channels_(personal_conv.bias, global_conv.bias, indices, coefficient)
                record[layer] = (indices, alpha)
        self.last_excitation = record
        return record

    def _gradient_inv_scale(self, optimizer: torch.optim.Optimizer) -> Tensor | None:
        """``1/scale`` when the gradients are still scaled in ``on_before_optimizer_step``, else ``None``.

        Lightning's AMP plugin unscales before the hook unless the optimizer unscales inside ``step()``
        (``_step_supports_amp_scaling``, e.g. fused Adam); then the gradients seen here are still scaled.
        """
        if self._trainer is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return None
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None:
            return None
        return scaler.get_scale() ** -1

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Updates the EMA scores from this step's (unscaled) gradients; skipped on non-finite gradients."""
        super().on_before_optimizer_step(optimizer)
        if self.excitation_scores is None:
            return
        check = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.update_scores(check=check, inv_scale=self._gradient_inv_scale(optimizer))

    @override
    def on_train_epoch_end(self) -> None:
        """Excites the personal model after each local epoch."""
        super().on_train_epoch_end()
        self.excite()
