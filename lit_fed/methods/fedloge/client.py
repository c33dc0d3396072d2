"""FedLoGe's client: SSE-C-trained shared backbone, auxiliary global head, local head; GLA-FR at evaluation.

Xiao, Chen, Liu, Feng, Wu, Liu, Zhou, Yang and Liu, "FedLoGe: Joint Local and Generic Federated Learning under
Long-tailed Data" (ICLR 2024). Official code: github.com/ZackZikaiXiao/FedLoGe (``fedloge.py``,
``util/update_baseline.py::update_weights_gaux``). The paper's SSE-C representation learning and GLA-FR
realignment are implemented as that code does them ([code]), except where a choice below is tagged [design].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, OptimizerFactory, StepOutput
from lit_fed.client.split import Modules, ParameterSelector
from lit_fed.methods.fedloge.etf import cached_sse_classifier, check_sse_arguments
from lit_fed.methods.fedloge.realignment import GLOBAL_SCALE, global_realign, mask_absent_classes, norm_transfer

__all__ = ["FedLoGeClient", "LabelCounts", "dataloader_label_counts", "fedloge_sgd"]

GLOBAL_CLASSIFIERS = ("aux", "sse")


def fedloge_sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """FedLoGe's local optimizer: SGD, lr 0.03, momentum 0.5 ([code] ``options.py``)."""
    return torch.optim.SGD(params, lr=0.03, momentum=0.5)


def dataloader_label_counts(dataloader: Any, num_classes: int) -> Tensor:
    """``(C,)`` int64 class counts of the samples a (training) data loader serves.

    Read from the dataset's label tensor when there is one (``labels`` of lit_fed's
    :class:`~lit_fed.data.batching.TensorBatchDataset`, or torchvision's ``targets``) — this consumes no random
    numbers, so the training order is unchanged. Otherwise the loader is iterated once ([design] fallback for other
    datasets: it advances the loader's sampler RNG by one epoch).
    """
    dataset = getattr(dataloader, "dataset", None)
    for attr in ("labels", "targets"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long()
            return torch.bincount(labels.cpu(), minlength=num_classes)[:num_classes]
    counts = torch.zeros(num_classes, dtype=torch.long)
    for batch in dataloader:
        counts += torch.bincount(torch.as_tensor(batch[1]).reshape(-1).long().cpu(), minlength=num_classes)
    return counts


class LabelCounts(nn.Module):
    """A ``(C,)`` int64 buffer ``counts``: a client's training-sample count per class (kept as personal state)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))


class _StaticClassifier(nn.Module):
    """``logits = f Wᵀ + b`` with ``W`` and ``b`` *non-persistent* buffers: never trained, never in ``state_dict``."""

    weight: Tensor
    bias: Tensor

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    @override
    def forward(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight.to(features.dtype), self.bias.to(features.dtype))


class FedLoGeClient(FederatedClient):
    r"""FedLoGe client (Xiao et al., ICLR 2024): SSE-C representation learning + GLA-FR.

    **Modules.**

    * ``backbone`` — the feature extractor θ, *shared* (FedAvg, BatchNorm included).
    * ``sse`` — SSE-C (:func:`~lit_fed.methods.fedloge.etf.build_sse_classifier`): a static sparse ETF classifier.
      Its weight and bias are non-persistent buffers, so they are in no optimizer, no ``state_dict``, no upload and
      no personal state: every client builds the *same* tensors locally from ``sse_seed`` (a pure function of the
      arguments) and nothing about SSE-C is ever communicated. [design] (SSE-C is static — never trained — so
      building it from a shared seed gives every client the same classifier; the official code builds it once on the
      server and deep-copies it to every client.) It is
      built on first use, not in ``__init__`` (see :attr:`sse`).
    * ``aux_head`` ψ — the auxiliary global head: the backbone's own classifier (``backbone.get_classifier()``, a
      ``nn.Linear``), *shared* (FedAvg).
    * ``local_head`` φ_k — a ``nn.Linear(d, C)``, *personal*: kept in the client-state store, never sent. Every
      client starts from the same initial φ (the loop's initial personal state; [design] — the official code draws
      one ``nn.Linear`` per client).
    * ``label_stats`` — the client's training label counts (personal state), recorded at the start of every local
      fit; used only by ``mask_absent_classes``.

    **Training** (per batch, [code] ``update_weights_gaux``), with ``f`` the backbone's embedding:

    * task loss ``CE(SSE-C(f), y)`` — its gradient reaches only the backbone (SSE-C has no parameters);
    * ``aux_ce = CE(ψ(f.detach()), y)`` — steps ψ only;
    * ``local_ce = CE(φ_k(f.detach()), y)`` — steps φ_k only.

    The three terms are summed in the single ``training_step``; the ``detach`` guarantees that no gradient reaches
    the backbone from ψ or φ_k, and the three parameter sets are disjoint, so one step of a per-parameter optimizer
    (SGD with momentum, the default: lr 0.03, momentum 0.5) equals the official three separate optimizers with the
    same settings. (Gradient clipping by *global* norm would couple them; clipping by value does not.)

    **Evaluation** (GLA-FR, post-hoc; :mod:`~lit_fed.methods.fedloge.realignment`):

    * :meth:`global_logits` — ``ψ̂(f)`` with ``ψ̂_c = 1.7 ψ_c/‖ψ_c‖`` (ψ's bias kept, [code]);
    * :meth:`predict_logits` (personalized) — ``φ_k(f) + ψ_k(f)`` with ``ψ_{k,c} = ‖φ_{k,c}‖ · ψ_c`` (ψ's bias kept,
      [code]), optionally with the classes absent from the client's training data masked to ``−inf``.

    **Ablations.**

    * ``realign=False`` ("no GLA-FR"): global ``ψ(f)``; personalized ``φ_k(f) + ψ(f)`` — exactly the official
      training script's per-round evaluation before realignment ([code] ``localtest(model, g_aux, l_head)``).
    * ``use_sse=False`` ("no SSE-C"): the backbone is trained through the learnable ψ instead: task loss
      ``CE(ψ(f), y)`` on *non-detached* features (so ψ and θ are trained jointly, FedAvg-style), ``local_ce`` as
      above; SSE-C is not built.
    * ``global_classifier="sse"``: global accuracy through SSE-C itself (the official training script's default
      per-round global test, ``global_test_head = 'g_head'``); ``realign`` then affects only the personalized side.

    Args:
        backbone: A model with timm's feature/head contract whose classifier is a ``nn.Linear`` (it becomes ψ).
        use_sse: Train the backbone through SSE-C (FedLoGe) or through ψ ("no SSE-C" ablation).
        sparsity: SSE-C's fraction of zero entries (0.6).
        sse_steps: Adam steps refining SSE-C (10k in the official code; construction is memoized per process).
        sse_lr: Adam learning rate of the refinement (1e-4).
        sse_target_norm: SSE-C's class-vector norm target (0.1).
        sse_seed: Seed SSE-C is built from; identical on every client by construction.
        realign: Apply GLA-FR at evaluation (``False``: the "no GLA-FR" ablation above).
        global_scale: The realigned global class norm (1.7, [code]).
        normalize_transfer: Transfer ``‖φ_{k,c}‖`` onto ψ's unit directions, so the realigned class norms equal the
            local head's, ``‖ψ_{k,c}‖ = ‖φ_{k,c}‖`` (default ``True`` [design]: the "Euclidean norm transfer" the paper
            describes; ``False`` scales the raw ψ_c as the official ``update_weights_norm_init`` does, which
            multiplies in ψ's own head-biased class norms a second time — worse on a short Fashion-MNIST-LT run:
            71.2% vs 81.5% personalized accuracy).
        mask_absent_classes: Personalized logits of classes absent from the client's training data are set to
            ``−inf`` ([code] the official ``localtest`` masks them; here explicit and off by default). A client with
            no recorded counts (never trained) is not masked.
        global_classifier: ``"aux"`` (ψ / ψ̂, default) or ``"sse"`` (SSE-C) for :meth:`global_logits`.
        personal: Extra personal selectors (``local_head`` and ``label_stats`` are always personal; ψ must stay
            shared).
        optimizer: Optimizer factory; default :func:`fedloge_sgd` (SGD lr 0.03, momentum 0.5).
        **kwargs: FederatedClient's other arguments (regularizers, lr_scheduler, schedule); the regularizers are
            extra loss terms (e.g. a proximal term).

    Raises:
        TypeError: the backbone's classifier is not a ``nn.Linear``.
        ValueError: a bad option, or a personal selector that makes ψ personal.
    """

    def __init__(
        self,
        backbone: nn.Module,
        use_sse: bool = True,
        sparsity: float = 0.6,
        sse_steps: int = 10_000,
        sse_lr: float = 1e-4,
        sse_target_norm: float = 0.1,
        sse_seed: int = 0,
        realign: bool = True,
        global_scale: float = GLOBAL_SCALE,
        normalize_transfer: bool = True,
        mask_absent_classes: bool = False,
        global_classifier: str = "aux",
        personal: Sequence[ParameterSelector] = (),
        optimizer: OptimizerFactory | None = None,
        **kwargs: Any,
    ) -> None:
        if global_classifier not in GLOBAL_CLASSIFIERS:
            raise ValueError(f"FedLoGeClient: global_classifier must be one of {GLOBAL_CLASSIFIERS}")
        if global_classifier == "sse" and not use_sse:
            raise ValueError("FedLoGeClient: global_classifier='sse' needs use_sse=True")
        if global_scale <= 0:
            raise ValueError(f"FedLoGeClient: global_scale must be > 0, got {global_scale}")
        selectors = [*personal, Modules(["local_head", "label_stats"])]
        super().__init__(backbone, selectors, optimizer=optimizer or fedloge_sgd, **kwargs)
        aux = backbone.get_classifier()
        if not isinstance(aux, nn.Linear):
            raise TypeError(
                f"FedLoGeClient: the backbone's classifier must be a nn.Linear (it is the auxiliary global head ψ), "
                f"got {type(aux).__name__}"
            )
        feature_dim, num_classes = aux.in_features, aux.out_features
        self.feature_dim = feature_dim
        self.local_head = nn.Linear(feature_dim, num_classes, bias=aux.bias is not None)
        self.label_stats = LabelCounts(num_classes)
        self.use_sse = use_sse
        self.sse_arguments = {
            "feature_dim": feature_dim,
            "num_classes": num_classes,
            "sparsity": float(sparsity),
            "steps": int(sse_steps),
            "lr": float(sse_lr),
            "target_norm": float(sse_target_norm),
            "seed": int(sse_seed),
        }
        if use_sse:
            check_sse_arguments(feature_dim, num_classes, sparsity, sse_steps, sse_lr, sse_target_norm)
        self.sse_classifier: _StaticClassifier | None = None  # built on first use (see the ``sse`` property)
        self.realign = realign
        self.global_scale = float(global_scale)
        self.normalize_transfer = normalize_transfer
        self.mask_absent_classes = mask_absent_classes
        self.global_classifier = global_classifier
        self._check_split()

    def _check_split(self) -> None:
        personal = set(self.personal_keys())
        prefix = next(name for name, module in self.named_modules() if module is self.aux_head)
        aux_keys = {f"{prefix}.{key}" for key in self.aux_head.state_dict()}
        if aux_keys & personal:
            raise ValueError(f"FedLoGeClient: the auxiliary global head ψ must be shared, got personal {aux_keys}")

    @property
    def sse(self) -> _StaticClassifier | None:
        """SSE-C (``None`` when ``use_sse=False``), built on first access.

        Construction (``sse_steps`` Adam steps) is deferred to the first use — a training step or an evaluation —
        so that building or parsing a configuration is cheap; it is memoized per process and consumes no global
        random numbers, so *when* it happens changes nothing.
        """
        if not self.use_sse:
            return None
        if self.sse_classifier is None:
            built = cached_sse_classifier(**self.sse_arguments)
            device = self.aux_head.weight.device
            self.sse_classifier = _StaticClassifier(built.weight.to(device), built.bias.to(device))
        return self.sse_classifier

    @property
    def aux_head(self) -> nn.Linear:
        """The auxiliary global head ψ (the backbone's classifier)."""
        return self.backbone.get_classifier()  # type: ignore[return-value]

    # -- training ----------------------------------------------------------------------------------------
    @override
    def on_train_start(self) -> None:
        """Records the client's training label counts (personal state; used by ``mask_absent_classes``)."""
        super().on_train_start()
        counts = dataloader_label_counts(self.trainer.train_dataloader, self.label_stats.counts.numel())
        self.label_stats.counts.copy_(counts)

    @override
    def compute_step(self, batch: tuple[Tensor, Tensor]) -> StepOutput:
        """Task loss ``CE(SSE-C(f), y)`` (or ``CE(ψ(f), y)`` when ``use_sse=False``); ``f`` in ``embedding``."""
        x, y = batch
        embedding = self.embed(x)
        sse = self.sse
        logits = sse(embedding) if sse is not None else self.aux_head(embedding)
        return StepOutput(loss=F.cross_entropy(logits, y), logits=logits, target=y, embedding=embedding)

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """Regularizers + ``aux_ce = CE(ψ(f.detach()))`` (with SSE-C) + ``local_ce = CE(φ_k(f.detach()))``."""
        extras = super().extra_losses(batch, output)
        x, y = batch[0], batch[1]
        embedding = output.embedding if output is not None and output.embedding is not None else self.embed(x)
        detached = embedding.detach()
        if self.use_sse:
            extras["aux_ce"] = F.cross_entropy(self.aux_head(detached), y)
        extras["local_ce"] = F.cross_entropy(self.local_head(detached), y)
        return extras

    # -- GLA-FR ------------------------------------------------------------------------------------------
    def global_weight(self) -> Tensor:
        """The global head's weight at evaluation: ``ψ̂`` (realigned) or ``ψ``."""
        weight = self.aux_head.weight
        return global_realign(weight, self.global_scale) if self.realign else weight

    def transferred_weight(self) -> Tensor:
        """``ψ_k``: ψ with the local head's class norms transferred (``realign``), else ψ itself."""
        weight = self.aux_head.weight
        if not self.realign:
            return weight
        return norm_transfer(weight, self.local_head.weight, normalize=self.normalize_transfer)

    def global_logits_from(self, embedding: Tensor) -> Tensor:
        """Global class scores from an embedding (see :meth:`global_logits`)."""
        if self.global_classifier == "sse":
            return self.sse(embedding)  # type: ignore[misc]
        return F.linear(embedding, self.global_weight(), self.aux_head.bias)

    def personal_logits_from(self, embedding: Tensor) -> Tensor:
        """Personalized class scores from an embedding: ``φ_k(f) + ψ_k(f)`` (see :meth:`predict_logits`)."""
        logits = self.local_head(embedding) + F.linear(embedding, self.transferred_weight(), self.aux_head.bias)
        if self.mask_absent_classes:
            logits = mask_absent_classes(logits, self.label_stats.counts)
        return logits

    @override
    def global_logits(self, x: Tensor) -> Tensor:
        """Global model prediction: ``ψ̂(f)`` with GLA-FR, ``ψ(f)`` without, ``SSE-C(f)`` if chosen."""
        return self.global_logits_from(self.embed(x))

    @override
    def predict_logits(self, x: Tensor) -> Tensor:
        """Personalized prediction: ``φ_k(f) + ψ_k(f)`` (``ψ_k = ψ`` without GLA-FR), optionally masked."""
        return self.personal_logits_from(self.embed(x))

    @override
    def forward(self, x: Tensor) -> Tensor:
        """The personalized prediction (:meth:`predict_logits`)."""
        return self.predict_logits(x)
