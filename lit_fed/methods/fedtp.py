r"""FedTP and Personalized-T: transformer personalization through the self-attention projections (seed paper).

Li, Lin, Shao, Chen, Zhao and Wei, "FedTP: Federated Learning by Transformer Personalization" (IEEE TNNLS 2023);
official code ``zhyczy/FedTP`` [code].

The personal part of a transformer is each block's fused query/key/value projection ``W^{qkv}_l``
(``3·heads·dim_head × dim``, no bias) — selected by module with :class:`QKV`; everything else is shared and FedAvg'd.

* **Personalized-T**: the QKV projections simply stay local (personal keys in the client-state store), never
  aggregated: a plain :class:`~lit_fed.client.module.FederatedClient` with ``personal=[QKV()]`` and FedAvg
  (``configs/method/personalized_t.yaml``). A client that never trained keeps the initial projections.
* **FedTP** (learn to personalize): a server hypernetwork maps a client embedding (128) through an MLP
  (``Linear(128, 150) → [ReLU → Linear(150, 150)] × 3``) and, per block ``l``, a linear head emitting ``W^{qkv}_{i,l}``.
  Each round the server generates ``W_i`` for the sampled clients (one batched forward), each client overwrites its
  QKV with ``W_i`` and trains *all* its parameters for ``E`` epochs (SGD lr 0.01, momentum 0.9, wd 1e-5, batch 64);
  the server FedAvgs the shared rest and steps the hypernetwork with
  ``g_φ = Σ_i p_i (∂W_i/∂φ)ᵀ (W_i − W̃_i)`` (SGD lr 0.01, momentum 0.9, wd 1e-3) [code: ``main.py``, ``FedTP`` branch].
  Evaluation uses the hypernetwork's ``W_c`` for every client, trained or not [code: ``compute_accuracy_per_client``].
  Unlike the official code, the trained QKV matrices are never averaged into the global state (they are personal
  keys here; in the official code they are averaged into the global model and then always overwritten).

The machinery (batched generation, the vector–Jacobian product, checkpointed hypernetwork, evaluation of never-trained
clients through the strategy's personal overlay) is shared with pFedHN and lives in
:mod:`lit_fed.methods.pfedhn`; :class:`FedTP` sets FedTP's defaults and :class:`FedTPClient` generates the QKV
projections of a :class:`~lit_fed.models.vit.ViT` / :class:`~lit_fed.models.vit.CharTransformer` (or a timm ViT).
FedTP applies to text with the same body: see :mod:`lit_fed.data.shakespeare` and
``configs/model/char_transformer.yaml``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from typing_extensions import override

from lit_fed.client.split import ParameterSelector
from lit_fed.methods.pfedhn import HypernetworkClient, HypernetworkStrategy
from lit_fed.models.vit import Attention
from lit_fed.server.aggregation import Aggregator

__all__ = ["QKV", "FedTP", "FedTPClient", "attention_modules"]


def _attention_types() -> tuple[type[nn.Module], ...]:
    types: list[type[nn.Module]] = [Attention]
    try:  # timm's ViT attention (``blocks.<i>.attn.qkv``), when timm is importable
        from timm.layers.attention import Attention as TimmAttention

        types.append(TimmAttention)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(types)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every self-attention module with a fused ``qkv`` projection, by sub-module name (lit_fed's and timm's)."""
    types = _attention_types()
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, types) and isinstance(getattr(module, "qkv", None), nn.Linear)
    }


class QKV(ParameterSelector):
    """The fused QKV projection of every attention block — chosen by module type, not by name.

    Selects the ``qkv`` linear layer (weight, and bias where it has one) of every
    :class:`lit_fed.models.vit.Attention` and every timm ``Attention`` (``timm.layers.attention.Attention``).

    Raises:
        ValueError: the model has no such attention block.
    """

    @override
    def select(self, model: nn.Module) -> set[str]:
        keys: set[str] = set()
        for name in attention_modules(model):
            prefix = f"{name}.qkv"
            keys |= {f"{prefix}.{k}" for k in model.get_submodule(prefix).state_dict()}
        if not keys:
            raise ValueError(
                f"QKV: {type(model).__name__} has no attention block with a fused qkv projection "
                "(use lit_fed.models.ViT / CharTransformer or a timm ViT)"
            )
        return keys

    def __repr__(self) -> str:
        return "QKV()"


class FedTP(HypernetworkStrategy):
    """FedTP's server (Li et al. 2023): a hypernetwork generating every block's QKV projection, FedAvg of the rest.

    Defaults [code]: client embedding 128, MLP width 150 with 3 hidden layers (ReLU between), one linear head
    per block; SGD on ``φ`` with lr 0.01, momentum 0.9, weight decay 1e-3; no gradient clipping [code];
    ``g_φ = Σ_i p_i (∂W_i/∂φ)ᵀ (W_i − W̃_i)``. Pair with :class:`FedTPClient` (``configs/method/fedtp.yaml``).

    Args:
        embedding_dim: Client-embedding size.
        hidden_dim: Width of the hypernetwork MLP.
        n_hidden: Hidden ``ReLU → Linear`` layers after the first.
        lr: SGD learning rate on ``φ``.
        momentum: SGD momentum on ``φ``.
        weight_decay: SGD weight decay on ``φ``.
        max_grad_norm: Optional clipping of ``‖g_φ‖`` (off in FedTP's code).
        weighted: ``p_i = n_i/Σn`` (FedTP's code) in FedAvg and ``g_φ``; else uniform.
        aggregator: The FedAvg rule for the shared keys.
        device: Where the hypernetwork lives.
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        hidden_dim: int = 150,
        n_hidden: int = 3,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        max_grad_norm: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(
            embedding_dim, hidden_dim, n_hidden, lr, momentum, weight_decay, max_grad_norm, weighted, aggregator, device
        )


class FedTPClient(HypernetworkClient):
    """FedTP's client: each round the server's QKV projections overwrite the local ones; all parameters train.

    The generated parameters are :class:`QKV` (every block's ``attn.qkv``); they are returned trained in
    ``ClientUpdate.extras`` and never enter the shared state. ``personal`` adds private layers on top (e.g.
    ``[Head()]``: FedTP with a personal head, the official ``FedTP-Per``).

    Args:
        backbone: A transformer whose attention blocks have a fused ``qkv`` projection
            (:class:`~lit_fed.models.vit.ViT`, :class:`~lit_fed.models.vit.CharTransformer`, a timm ViT).
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule);
            ``personal`` selects extra private layers. FedTP's local optimizer: SGD lr 0.01, momentum 0.9, weight
            decay 1e-5.
    """

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        super().__init__(backbone, generated=[QKV()], **kwargs)
