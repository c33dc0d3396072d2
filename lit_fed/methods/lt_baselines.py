"""Long-tailed baselines compared with FedLoGe: FedRoD-style balanced softmax and a FedETF-style fixed simplex ETF.

* **FedRoD** — Chen and Chao, "On Bridging Generic and Personalized Federated Learning for Image Classification"
  (ICLR 2022). A shared body and *generic* head trained with the balanced softmax (Ren et al., "Balanced
  Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020) on the client's own label counts, plus a
  *personalized* head trained with CE on top of the detached generic logits; personalized prediction = generic
  logits + personal logits. The per-batch order follows PFLlib's ``clientrod.py`` (a faithful port of the official
  code): step body + generic head on ``BSM(g(f))``, then the personal head on ``CE(g(f).detach() + p(f.detach()))``.
* **FedETF** — Li, Shang, He, Lin and Wu, "No Fear of Classifier Biases: Neural Collapse Inspired Federated
  Learning with Synthetic and Fixed Classifier" (ICCV 2023). The classifier is a fixed *dense* simplex ETF
  (:func:`~lit_fed.methods.fedloge.etf.simplex_etf`, no sparsity); features go through a learnable projection and
  are L2-normalized; logits are ``τ · normalize(z) Mᵀ`` with an optional learnable temperature ``τ``
  ([code] ``models_dict``: ``linear_proto``, ``Proto_Classifier``, ``scaling_train``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.split import Modules, ParameterSelector
from lit_fed.methods.fedloge.client import dataloader_label_counts
from lit_fed.methods.fedloge.etf import simplex_etf

__all__ = ["FedETFClient", "FedRoDClient", "balanced_softmax_loss", "etf_logits"]


def balanced_softmax_loss(logits: Tensor, target: Tensor, class_counts: Tensor, reduction: str = "mean") -> Tensor:
    """Balanced softmax cross-entropy: ``CE(logits + log n_c, y)`` (Ren et al. 2020; FedRoD's generic loss).

    Adding the log of the label prior ``π_c ∝ n_c`` to the logits before the softmax makes the loss an unbiased
    estimate of the *balanced* error; the normalization of the prior is a constant shift and cancels. Classes with
    ``n_c = 0`` get a logit of ``−inf`` (probability 0, zero gradient), as in PFLlib's ``balanced_softmax_loss``.
    Computed in float32 whatever the autocast precision.

    Args:
        logits: ``(B, C)``.
        target: ``(B,)`` labels; each must have ``n_c > 0`` (else the loss is infinite).
        class_counts: ``(C,)`` training-sample counts of the client.
        reduction: As for :func:`torch.nn.functional.cross_entropy`.
    """
    log_prior = torch.log(class_counts.to(device=logits.device, dtype=torch.float32))
    return F.cross_entropy(logits.float() + log_prior, target, reduction=reduction)


class FedRoDClient(FederatedClient):
    """FedRoD client (Chen & Chao, ICLR 2022) with the balanced-softmax generic loss.

    * ``backbone`` (body + its classifier, the **generic head** g) — *shared*, FedAvg.
    * ``personal_head`` p — a ``nn.Linear(d, C)``, *personal*.
    * Per batch: task loss ``BSM(g(f), y; n)`` (``n`` = the client's training label counts, read at the start of
      every local fit — or ``CE`` when ``balanced=False``) steps body + g; ``personal_ce =
      CE(g(f).detach() + p(f.detach()), y)`` steps p only. One optimizer over disjoint parameter sets = the two
      official optimizers with the same settings.
    * :meth:`global_logits` = ``g(f)``; :meth:`predict_logits` = ``g(f) + p(f)`` (FedRoD's personalized model).

    Args:
        backbone: A model with timm's feature/head contract whose classifier is a ``nn.Linear``.
        balanced: Balanced softmax (FedRoD's BSM variant) or plain CE for the generic head.
        personal: Extra personal selectors (``personal_head`` is always personal).
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler, schedule); the
            optimizer defaults to SGD lr 0.005 (the library default).

    Raises:
        TypeError: the backbone's classifier is not a ``nn.Linear``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        balanced: bool = True,
        personal: Sequence[ParameterSelector] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, [*personal, Modules(["personal_head"])], **kwargs)
        head = backbone.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"FedRoDClient: the backbone's classifier must be a nn.Linear, got {type(head).__name__}")
        self.personal_head = nn.Linear(head.in_features, head.out_features)
        self.balanced = balanced
        self.register_buffer("class_counts", torch.zeros(head.out_features, dtype=torch.long), persistent=False)

    @property
    def generic_head(self) -> nn.Linear:
        """The generic head g (the backbone's classifier, shared)."""
        return self.backbone.get_classifier()  # type: ignore[return-value]

    def set_label_counts(self, counts: Tensor) -> None:
        """Sets the label counts of the balanced softmax (done automatically at the start of every fit)."""
        self.class_counts.copy_(torch.as_tensor(counts, dtype=torch.long))

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self.set_label_counts(dataloader_label_counts(self.trainer.train_dataloader, self.class_counts.numel()))

    @override
    def compute_step(self, batch: tuple[Tensor, Tensor]) -> StepOutput:
        """Generic logits and the balanced-softmax (or CE) loss; the embedding is kept for the personal head."""
        x, y = batch
        embedding = self.embed(x)
        logits = self.generic_head(embedding)
        if self.balanced:
            if not bool(self.class_counts.any()):
                raise ValueError(
                    "FedRoDClient: the label counts are unknown; train through a Trainer (they are read at the start "
                    "of every fit) or call set_label_counts()"
                )
            loss = balanced_softmax_loss(logits, y, self.class_counts)
        else:
            loss = F.cross_entropy(logits, y)
        return StepOutput(loss=loss, logits=logits, target=y, embedding=embedding)

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """Regularizers + ``personal_ce = CE(g(f).detach() + p(f.detach()), y)``."""
        extras = super().extra_losses(batch, output)
        x, y = batch[0], batch[1]
        if output is None or output.embedding is None:
            output = self.compute_step((x, y))
        combined = output.logits.detach() + self.personal_head(output.embedding.detach())  # type: ignore[union-attr]
        extras["personal_ce"] = F.cross_entropy(combined, y)
        return extras

    @override
    def global_logits(self, x: Tensor) -> Tensor:
        """The generic model: ``g(f)``."""
        return self.generic_head(self.embed(x))

    @override
    def predict_logits(self, x: Tensor) -> Tensor:
        """The personalized model: ``g(f) + p(f)``."""
        embedding = self.embed(x)
        return self.generic_head(embedding) + self.personal_head(embedding)

    @override
    def forward(self, x: Tensor) -> Tensor:
        """The personalized prediction."""
        return self.predict_logits(x)


def etf_logits(features: Tensor, etf: Tensor, temperature: Tensor | float) -> Tensor:
    """``τ · normalize(z) Mᵀ``: cosine logits against the ``(C, d)`` ETF rows, scaled by the temperature."""
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return temperature * F.linear(unit, etf.to(unit.dtype))


class FedETFClient(FederatedClient):
    """FedETF-style client (Li et al., ICCV 2023): a fixed dense simplex-ETF classifier on normalized features.

    * ``backbone`` (body) and ``projection`` (``nn.Linear(d, d_p)``, FedETF's ``linear_proto``) — *shared*, FedAvg.
    * ``etf`` — ``(C, d_p)`` :func:`~lit_fed.methods.fedloge.etf.simplex_etf` rows (unit norm, pairwise cosine
      ``−1/(C−1)``), a *non-persistent buffer*: never trained, never communicated, identical on every client by
      construction from ``etf_seed``.
    * ``temperature`` τ — a shared learnable scalar when ``learn_temperature`` (FedETF's ``scaling_train``,
      aggregated with the model), else a fixed constant.
    * The backbone's own classifier is unused and is removed with ``reset_classifier(0)`` when the backbone
      supports it (so it is neither trained nor communicated). [design]
    * Loss ``CE(τ · normalize(projection(f)) Mᵀ, y)``. Personalized and global predictions are the same model
      (FedETF's local fine-tuning stage is not implemented here). [design]

    Args:
        backbone: A model with timm's feature/head contract (its classifier gives ``C``).
        projection_dim: ``d_p``; default the backbone's embedding size. 0 disables the projection (the ETF then
            lives in the embedding space). Must be ``>= C``.
        temperature: Initial (or fixed) τ. [code] 10.0 for FedETF's CNNs (1.0 for its ResNets).
        learn_temperature: Learn τ (shared, FedAvg) or keep it fixed.
        etf_seed: Seed of the ETF.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule); no
            personal selectors by default, and the optimizer defaults to SGD lr 0.005 (the library default).
    """

    etf: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        projection_dim: int | None = None,
        temperature: float = 10.0,
        learn_temperature: bool = True,
        etf_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        head = backbone.get_classifier()
        num_classes = self.num_classes
        feature_dim = int(getattr(head, "in_features", getattr(backbone, "num_features", 0)))
        if not feature_dim:
            raise TypeError("FedETFClient: cannot infer the embedding size from the backbone's classifier")
        if callable(getattr(backbone, "reset_classifier", None)):
            backbone.reset_classifier(0)
        dim = feature_dim if projection_dim is None else int(projection_dim)
        self.projection: nn.Module = nn.Linear(feature_dim, dim) if dim else nn.Identity()
        dim = dim or feature_dim
        etf = simplex_etf(dim, num_classes, seed=etf_seed).T.float().contiguous()
        self.register_buffer("etf", etf, persistent=False)
        if learn_temperature:
            self.temperature: Tensor = nn.Parameter(torch.tensor(float(temperature)))
        else:
            self.register_buffer("temperature", torch.tensor(float(temperature)), persistent=False)

    @override
    def classify(self, embedding: Tensor) -> Tensor:
        """``τ · normalize(projection(f)) Mᵀ``."""
        return etf_logits(self.projection(embedding), self.etf, self.temperature)
