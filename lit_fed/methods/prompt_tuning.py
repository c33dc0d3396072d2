r"""Federated (visual) prompt tuning: a frozen ViT, ``k`` learnable prompt tokens, only prompts (+ head) travel.

Visual prompt tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022, the *shallow* variant) inserts ``k`` learnable
tokens after the patch embedding — between the class token(s) and the patch tokens, after the position embedding,
before the first block — and trains only them (and the classifier) on a frozen pretrained backbone. Federated, the
prompts (and optionally the head) are the whole shared state: they are what clients train, send and the server
averages (FedAvg), so each round communicates a small fraction of the model, which every round
reports as ``comm_param_fraction`` = communicated / all state-dict entries of the client module.

The split has three parts instead of two: *shared* = ``prompts`` (+ the head when ``head="shared"``), *personal* =
the head when ``head="personal"`` (kept in the client-state store), and *frozen* = the rest of the backbone, which is
neither trained, sent, aggregated nor stored — it stays bit-identical (tested). The frozen backbone is not part of
round checkpoints: it is the pretrained model (``TimmBackbone(pretrained=True)``), or a random initialization
reproduced from the run seed (the CLI seeds before building the model).

Backbones: a timm ``VisionTransformer`` (directly or inside :class:`~lit_fed.models.TimmBackbone`; e.g.
``vit_tiny_patch16_224`` with ``img_size=32, patch_size=4``, or ``test_vit`` in tests), or lit_fed's
:class:`~lit_fed.models.vit.ViT` / :class:`~lit_fed.models.vit.CharTransformer`. The prompt tokens' outputs are
dropped before the backbone's own pooling/head, so ``cls`` and ``avg`` pooling see the usual tokens (VPT classifies
from the class token). Prompts are initialized ``U(−a, a)`` with ``a = √(6 / (3·p_h·p_w + d))`` [VPT code].
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient
from lit_fed.client.payloads import ClientUpdate
from lit_fed.client.split import Head
from lit_fed.models.timm_backbone import TimmBackbone

__all__ = ["PromptTuningClient", "PROMPT_KEY"]

PROMPT_KEY = "prompts"
"""State-dict key of the prompt tokens, ``(1, k, d)``."""


def _vit_of(backbone: nn.Module) -> nn.Module:
    """The ViT inside ``backbone`` (a :class:`TimmBackbone` wraps it as ``.model``), checked for the needed steps."""
    vit = backbone.model if isinstance(backbone, TimmBackbone) else backbone
    lit_fed_style = all(hasattr(vit, a) for a in ("embed_tokens", "forward_blocks", "num_prefix_tokens"))
    timm_style = all(hasattr(vit, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens"))
    if not (lit_fed_style or timm_style) or not hasattr(vit, "embed_dim"):
        raise TypeError(
            f"PromptTuningClient: {type(vit).__name__} is not a supported ViT (a timm VisionTransformer, e.g. "
            "TimmBackbone('vit_tiny_patch16_224'), or lit_fed.models.ViT / CharTransformer)"
        )
    return vit


def _patch_area(vit: nn.Module) -> int:
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None) or getattr(vit, "patch_size", 1)
    if isinstance(patch, int):
        return patch * patch
    return int(math.prod(patch))


class PromptTuningClient(FederatedClient):
    """A frozen ViT backbone with ``num_prompts`` learnable prompt tokens; only prompts (and the head) train.

    Args:
        backbone: A ViT (see the module docstring); its weights are frozen here.
        num_prompts: ``k``, the number of prompt tokens.
        head: ``"shared"`` (trained and communicated with the prompts), ``"personal"`` (trained, kept locally) or
            ``"frozen"`` (only the prompts train).
        prompt_dropout: Dropout on the prompt tokens (VPT uses 0.1 on some datasets).
        **kwargs: FederatedClient's arguments but ``personal`` and ``schedule``, which ``head`` fixes
            (regularizers on the shared part, an optimizer factory over the trainable parameters, lr_scheduler).

    Raises:
        TypeError: the backbone is not a supported ViT, or ``personal``/``schedule`` is given.
        ValueError: ``num_prompts < 1`` or an unknown ``head`` mode.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_prompts: int = 10,
        head: Literal["shared", "personal", "frozen"] = "shared",
        prompt_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        for fixed in ("personal", "schedule"):
            if fixed in kwargs:
                raise TypeError(
                    f"PromptTuningClient.__init__() got an unexpected keyword argument '{fixed}' (head fixes what is "
                    "trained, sent and kept locally)"
                )
        if num_prompts < 1:
            raise ValueError(f"PromptTuningClient: num_prompts must be >= 1, got {num_prompts}")
        if head not in ("shared", "personal", "frozen"):
            raise ValueError(f"PromptTuningClient: head must be 'shared', 'personal' or 'frozen', got {head!r}")
        vit = _vit_of(backbone)
        super().__init__(backbone, personal=(), schedule=None, **kwargs)
        self.head_mode = head
        self.num_prompts = num_prompts
        dim = int(vit.embed_dim)
        bound = math.sqrt(6.0 / float(3 * _patch_area(vit) + dim))
        self.prompts = nn.Parameter(torch.empty(1, num_prompts, dim).uniform_(-bound, bound))
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        head_keys = Head().select(self)
        keys = list(self.state_dict().keys())
        self._shared_keys = [PROMPT_KEY] + ([k for k in keys if k in head_keys] if head == "shared" else [])
        self._personal_keys = [k for k in keys if k in head_keys] if head == "personal" else []
        communicated = set(self._shared_keys) | set(self._personal_keys)
        self._frozen_keys = [k for k in keys if k not in communicated]
        self._trainable = {PROMPT_KEY} | ({k for k in keys if k in head_keys} if head != "frozen" else set())
        self._freeze()

    # -- the three-way split ---------------------------------------------------------------------------
    @override
    def shared_keys(self) -> list[str]:
        """``prompts`` (+ the head's keys when ``head="shared"``): what is sent and aggregated."""
        return list(self._shared_keys)  # type: ignore[arg-type]

    @override
    def personal_keys(self) -> list[str]:
        """The head's keys when ``head="personal"``, else none."""
        return list(self._personal_keys)  # type: ignore[arg-type]

    def frozen_keys(self) -> list[str]:
        """The frozen backbone: neither trained, communicated nor stored."""
        return list(self._frozen_keys)

    def communicated_fraction(self) -> float:
        """Elements of the shared tensors over elements of all state-dict tensors (the same every round)."""
        tensors = self._tensors()
        total = sum(t.numel() for t in tensors.values())
        return sum(tensors[k].numel() for k in self.shared_keys()) / total

    def _freeze(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(name in self._trainable)

    @override
    def set_trainable(self, part: str) -> None:
        """The frozen backbone stays frozen whatever ``part`` asks; prompts (and a trained head) stay trainable."""
        self._freeze()

    @override
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The prompts (and the head unless frozen)."""
        return (p for name, p in self.named_parameters() if name in self._trainable)

    # -- forward -------------------------------------------------------------------------------------------
    def prompted_tokens(self, x: Tensor) -> Tensor:
        """The backbone's normalized tokens with the prompts inserted after the prefix tokens, then removed again."""
        vit = _vit_of(self.backbone)
        if hasattr(vit, "embed_tokens"):
            tokens = vit.embed_tokens(x)
        else:  # timm VisionTransformer.forward_features, step by step
            tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        prefix = int(vit.num_prefix_tokens)
        prompts = self.prompt_dropout(self.prompts).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :prefix], prompts, tokens[:, prefix:]], dim=1)
        out = vit.forward_blocks(tokens) if hasattr(vit, "forward_blocks") else vit.norm(vit.blocks(tokens))
        return torch.cat([out[:, :prefix], out[:, prefix + self.num_prompts :]], dim=1)

    @override
    def embed(self, x: Tensor) -> Tensor:
        """The pooled representation of the prompted token sequence."""
        return self.backbone.forward_head(self.prompted_tokens(x), pre_logits=True)

    # -- protocol ------------------------------------------------------------------------------------------
    @override
    def build_update(self, num_samples: int) -> ClientUpdate:
        """The prompts (+ head), with ``comm_param_fraction`` among the update's metrics."""
        update = super().build_update(num_samples)
        update.metrics["comm_param_fraction"] = self.communicated_fraction()
        return update
