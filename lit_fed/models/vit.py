"""Transformers with addressable attention blocks: a ViT for images and a character transformer for text.

Both share one body — pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` whose fused query/key/value
projection is the named sub-module ``blocks.<i>.attn.qkv`` (an ``nn.Linear(dim, 3·heads·dim_head, bias=False)``) —
and differ only in the front end: :class:`ViT` embeds image patches (plus a class token), :class:`CharTransformer`
embeds tokens. This is the architecture FedTP personalizes (Li et al. 2023, "FedTP: Federated Learning by
Transformer Personalization", IEEE TNNLS; the official code uses lucidrains' ``vit-pytorch`` ViT): the
per-block QKV projections are the personal parameters, :meth:`TransformerBackbone.qkv_modules` lists them.

Both follow timm's feature/head contract (``forward_features`` returns the normalized token sequence,
``forward_head(x, pre_logits)`` pools it and applies ``head``; ``get_classifier()`` is ``head``), and expose the
token-level steps a prompt-tuning client needs: :meth:`TransformerBackbone.embed_tokens` (front end, position
embedding, dropout), :attr:`TransformerBackbone.num_prefix_tokens` and :meth:`TransformerBackbone.forward_blocks`.

Presets: :func:`vit_cifar` (FedTP's CIFAR configuration: image 32, patch 4, dim 128, depth 6, heads 8, dim_head 64,
mlp 256, dropout 0.1) and :func:`vit_tiny` (a CPU-sized configuration for 28×28 images).

Example:
    >>> model = vit_tiny(image_size=8, patch_size=4, num_classes=4)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 4])
    >>> sorted(model.qkv_modules())[:1]
    ['blocks.0.attn.qkv']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.models.head import ClassifierHeadModel, make_classifier

__all__ = ["Attention", "Block", "CharTransformer", "TransformerBackbone", "ViT", "vit_cifar", "vit_tiny"]


class Attention(nn.Module):
    """Multi-head self-attention with one fused, bias-free QKV projection (``qkv``).

    ``qkv`` maps ``dim → 3·heads·dim_head``; its output is laid out ``[q | k | v]``, each ``(heads, dim_head)``
    head-major, as ``vit-pytorch``'s ``to_qkv`` (FedTP's personalized matrix, shape ``(3·heads·dim_head, dim)``).

    Args:
        dim: Token width.
        heads: Attention heads.
        dim_head: Width of one head.
        dropout: Dropout after the output projection.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.proj: nn.Module = (
            nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project_out else nn.Identity()
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attends over ``x`` of shape ``(B, T, dim)``; ``attn_mask`` as for ``scaled_dot_product_attention``."""
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # scale 1/sqrt(dim_head)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.dim_head))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))`` (GELU MLP with dropout)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Applies the block to ``(B, T, dim)`` tokens."""
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class TransformerBackbone(ClassifierHeadModel):
    """The shared transformer body: blocks, final LayerNorm, pooling and a linear ``head``.

    Subclasses provide the front end (:meth:`embed_tokens`) and the pooling (``pool``).

    Args:
        num_classes: Classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        dim: Token width (the embedding size ``num_features``).
        depth: Number of blocks.
        heads: Attention heads per block.
        dim_head: Width of one head.
        mlp_dim: Hidden width of the block MLPs.
        dropout: Dropout in attention output and MLPs.
        pool: ``"cls"`` (the first token), ``"mean"`` (mean of the non-prefix tokens) or ``"last"`` (the last token).
    """

    num_prefix_tokens: int = 0

    def __init__(
        self,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float,
        pool: str,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads), ("dim_head", dim_head)):
            if value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {value}")
        if pool not in ("cls", "mean", "last"):
            raise ValueError(f"{type(self).__name__}: pool must be 'cls', 'mean' or 'last', got {pool!r}")
        self.dim = dim
        self.embed_dim = dim  # timm's name for the token width
        self.pool = pool
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.num_features = dim
        self.num_classes = num_classes
        self.head = make_classifier(dim, num_classes)

    # -- the contract ----------------------------------------------------------------------------------
    @override
    def get_classifier(self) -> nn.Module:
        """The linear classifier ``head``."""
        return self.head

    @override
    def reset_classifier(self, num_classes: int) -> None:
        """Replaces ``head`` by a fresh classifier with ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head = make_classifier(self.num_features, num_classes)

    def embed_tokens(self, x: Tensor) -> Tensor:
        """The front end: input → ``(B, T, dim)`` tokens (prefix tokens first), position-embedded."""
        raise NotImplementedError

    def attention_mask(self, tokens: int, device: torch.device) -> Tensor | None:
        """The attention mask for ``tokens`` tokens; ``None`` (full attention) by default."""
        return None

    def forward_blocks(self, x: Tensor) -> Tensor:
        """Runs ``(B, T, dim)`` tokens through the blocks and the final LayerNorm."""
        mask = self.attention_mask(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    @override
    def forward_features(self, x: Tensor) -> Tensor:
        """The normalized token sequence ``(B, T, dim)``."""
        return self.forward_blocks(self.embed_tokens(x))

    @override
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pools the tokens (``pool``); returns logits, or the pooled ``(B, dim)`` embedding if ``pre_logits``."""
        if self.pool == "cls":
            x = x[:, 0]
        elif self.pool == "last":
            x = x[:, -1]
        else:
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        return x if pre_logits else self.head(x)

    # -- addressable attention -------------------------------------------------------------------------
    def qkv_modules(self) -> dict[str, nn.Linear]:
        """The fused QKV projection of every block, by sub-module name (``"blocks.<i>.attn.qkv"``)."""
        return {f"blocks.{i}.attn.qkv": block.attn.qkv for i, block in enumerate(self.blocks)}


class ViT(TransformerBackbone):
    """A Vision Transformer (Dosovitskiy et al. 2021) in the form FedTP personalizes (Li et al. 2023).

    Patches of ``patch_size`` are linearly embedded (a strided convolution), a class token is prepended and a
    learned position embedding added; ``depth`` pre-norm blocks follow. Defaults are FedTP's CIFAR configuration
    ([code]): image 32, patch 4, dim 128, depth 6, heads 8, dim_head 64, mlp 256, dropout 0.1.

    Args:
        image_size: Input height and width (square).
        patch_size: Patch height and width; must divide ``image_size``.
        in_channels: Input channels.
        num_classes: Classifier outputs.
        dim: Token width.
        depth: Number of blocks.
        heads: Attention heads.
        dim_head: Width of one head.
        mlp_dim: Hidden width of the block MLPs.
        dropout: Dropout in the blocks.
        emb_dropout: Dropout after the position embedding.
        pool: ``"cls"`` (default) or ``"mean"``.
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 128,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int = 256,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        pool: str = "cls",
    ) -> None:
        if pool not in ("cls", "mean"):
            raise ValueError(f"ViT: pool must be 'cls' or 'mean', got {pool!r}")
        super().__init__(num_classes, dim, depth, heads, dim_head, mlp_dim, dropout, pool)
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"ViT: patch_size {patch_size} must divide image_size {image_size}")
        self.image_size = image_size
        self.input_size = image_size
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.pos_drop = nn.Dropout(emb_dropout)

    @override
    def embed_tokens(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` → ``(B, 1 + num_patches, dim)``: class token, patch tokens, + positions."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"ViT: expected {self.image_size}x{self.image_size} inputs, got {tuple(x.shape)}")
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)
        return self.pos_drop(tokens + self.pos_embed)


class CharTransformer(TransformerBackbone):
    """The same transformer body on token inputs: next-character prediction from the last position.

    A token embedding and a learned position embedding replace the patch embedding; the classifier reads the last
    position's output (``pool="last"``), so ``(B, T)`` character indices map to ``(B, vocab_size)`` scores for the
    character that follows. FedTP applies its QKV personalization to the same body on Shakespeare (Li et al. 2023).

    Args:
        vocab_size: Number of distinct tokens (characters).
        seq_len: The longest input sequence (size of the position embedding).
        num_classes: Classifier outputs; ``None`` means ``vocab_size`` (next-token prediction).
        dim: Token width.
        depth: Number of blocks.
        heads: Attention heads.
        dim_head: Width of one head.
        mlp_dim: Hidden width of the block MLPs.
        dropout: Dropout in the blocks.
        emb_dropout: Dropout after the position embedding.
        causal: Causal attention (each position sees only itself and earlier ones). The last position sees the
            whole window either way; off by default.
    """

    def __init__(
        self,
        vocab_size: int = 65,
        seq_len: int = 80,
        num_classes: int | None = None,
        dim: int = 128,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int = 256,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        causal: bool = False,
    ) -> None:
        super().__init__(
            vocab_size if num_classes is None else num_classes, dim, depth, heads, dim_head, mlp_dim, dropout, "last"
        )
        if vocab_size < 1 or seq_len < 1:
            raise ValueError(f"CharTransformer: vocab_size and seq_len must be >= 1, got {vocab_size}, {seq_len}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.causal = causal
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        self.pos_drop = nn.Dropout(emb_dropout)

    @override
    def embed_tokens(self, x: Tensor) -> Tensor:
        """Token indices ``(B, T)`` (``T ≤ seq_len``) → ``(B, T, dim)`` embeddings plus positions."""
        if x.dim() != 2 or x.shape[1] > self.seq_len:
            raise ValueError(f"CharTransformer: expected (B, T<={self.seq_len}) token indices, got {tuple(x.shape)}")
        return self.pos_drop(self.token_embed(x) + self.pos_embed[:, : x.shape[1]])

    @override
    def attention_mask(self, tokens: int, device: torch.device) -> Tensor | None:
        """A lower-triangular boolean mask when ``causal``, else ``None``."""
        if not self.causal:
            return None
        return torch.ones(tokens, tokens, dtype=torch.bool, device=device).tril()


def vit_cifar(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> ViT:
    """FedTP's CIFAR ViT [code]: image 32, patch 4, dim 128, depth 6, 8 heads of 64, mlp 256, dropout 0.1."""
    config: dict[str, object] = dict(
        image_size=32, patch_size=4, dim=128, depth=6, heads=8, dim_head=64, mlp_dim=256, dropout=0.1, emb_dropout=0.1
    )
    config.update(kwargs)
    return ViT(num_classes=num_classes, in_channels=in_channels, **config)  # type: ignore[arg-type]


def vit_tiny(num_classes: int = 10, in_channels: int = 1, **kwargs: object) -> ViT:
    """A CPU-sized ViT for 28×28 inputs (Fashion-MNIST): patch 7, dim 64, depth 4, 4 heads of 16, mlp 128."""
    config: dict[str, object] = dict(
        image_size=28, patch_size=7, dim=64, depth=4, heads=4, dim_head=16, mlp_dim=128, dropout=0.1, emb_dropout=0.1
    )
    config.update(kwargs)
    return ViT(num_classes=num_classes, in_channels=in_channels, **config)  # type: ignore[arg-type]
