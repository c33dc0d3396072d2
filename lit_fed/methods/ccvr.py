"""CCVR: classifier calibration with virtual representations, post hoc, after any method.

Luo, Chen, Hu, Zhang, Liang and Feng, "No Fear of Heterogeneity: Classifier Calibration for Federated Learning with
Non-IID Data" (NeurIPS 2021, arXiv:2106.05001), §4 "Classifier calibration with virtual representations" (its
pooled-mean and pooled-covariance equations, restated below) and Alg. 1. METHODS §3 [paper].

After federated training (or every N rounds), with the global model's feature extractor ``f``:

1. every client ``k`` sends, per class ``c``, the mean ``μ_{c,k}``, the unbiased covariance ``Σ_{c,k}`` (divisor
   ``N_{c,k} − 1``) and the count ``N_{c,k}`` of its features (:func:`feature_statistics`; the payload is
   ``ClientUpdate.feature_stats``, whose bytes are counted as uploaded);
2. the server pools them into the statistics of the union of the clients' features
   (:func:`pool_feature_statistics`): ``N_c = Σ_k N_{c,k}``, ``μ_c = Σ_k (N_{c,k}/N_c) μ_{c,k}``,
   ``Σ_c = Σ_k ((N_{c,k}−1)/(N_c−1)) Σ_{c,k} + Σ_k (N_{c,k}/(N_c−1)) μ_{c,k} μ_{c,k}ᵀ − (N_c/(N_c−1)) μ_c μ_cᵀ``;
3. samples ``M_c`` virtual features per class from ``N(μ_c, Σ_c)`` (:func:`sample_virtual_features`);
4. retrains only the classifier with cross-entropy on them (:func:`calibrate_classifier`); the feature extractor is
   untouched.

How it plugs in [design]: :class:`CCVR` is a :class:`~lit_fed.loop.callbacks.LoopCallback` (``trainer.round_callbacks``,
``configs/method/ccvr.yaml``), so it composes with *any* method's client and strategy: at the end of the last round
(``every=0``), or every ``every`` rounds, it gathers the statistics of every client with that client's model
(restored from the loop's client-state store like the evaluator does), calibrates the global classifier, writes it
into the global state (checkpointed with the round), and reports the global and personalized accuracy before and
after (``ccvr_before_*`` / ``ccvr_after_*`` in the round metrics). :meth:`CCVR.calibrate` also works on a loop
restored from a finished run's checkpoint. A method whose classifier is personal (FedPer, FedRep, ...) has no global
classifier to calibrate and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.payloads import FeatureStatistics, StateDict
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.metrics.features import feature_statistics
from lit_fed.utils.seeding import torch_generator

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop

__all__ = [
    "CCVR",
    "calibrate_classifier",
    "classifier_parameters",
    "feature_statistics",
    "pool_feature_statistics",
    "sample_virtual_features",
]


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------


def pool_feature_statistics(stats: Sequence[FeatureStatistics]) -> FeatureStatistics:
    """The statistics of the union of the clients' features from theirs alone (Luo et al. 2021, §4).

    ``N_c = Σ_k N_{c,k}``, ``μ_c = Σ_k (N_{c,k}/N_c) μ_{c,k}`` and
    ``Σ_c = Σ_k ((N_{c,k}−1)/(N_c−1)) Σ_{c,k} + Σ_k (N_{c,k}/(N_c−1)) μ_{c,k} μ_{c,kᵀ} − (N_c/(N_c−1)) μ_c μ_cᵀ``,
    computed in float64. Classes with ``N_c = 0`` get zeros; with ``N_c = 1`` a zero covariance.

    Raises:
        ValueError: no statistics, or clients disagreeing on the number of classes or the feature size.
    """
    if not stats:
        raise ValueError("pool_feature_statistics: no client statistics")
    shape = tuple(stats[0].means.shape)
    for s in stats:
        if tuple(s.means.shape) != shape or tuple(s.covariances.shape) != (*shape, shape[1]):
            raise ValueError(f"pool_feature_statistics: statistics of shapes {tuple(s.means.shape)} and {shape} differ")
    counts = torch.stack([s.counts.double() for s in stats])  # (K, C)
    means = torch.stack([s.means.double() for s in stats])  # (K, C, d)
    covs = torch.stack([s.covariances.double() for s in stats])  # (K, C, d, d)
    total = counts.sum(dim=0)  # (C,)
    safe = total.clamp_min(1.0)
    pooled_mean = (counts[..., None] * means).sum(dim=0) / safe[:, None]
    denom = (total - 1.0).clamp_min(1.0)[:, None, None]
    within = ((counts - 1.0).clamp_min(0.0)[..., None, None] * covs).sum(dim=0)
    outer = (counts[..., None, None] * means[..., :, None] * means[..., None, :]).sum(dim=0)
    pooled_outer = total[:, None, None] * pooled_mean[:, :, None] * pooled_mean[:, None, :]
    pooled_cov = (within + outer - pooled_outer) / denom
    pooled_cov = torch.where((total > 1)[:, None, None], pooled_cov, torch.zeros_like(pooled_cov))
    pooled_cov = 0.5 * (pooled_cov + pooled_cov.transpose(1, 2))  # exact symmetry against rounding
    return FeatureStatistics(pooled_mean, pooled_cov, total.round().long())


def sample_virtual_features(
    stats: FeatureStatistics, samples_per_class: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``M_c`` virtual features per class from ``N(μ_c, Σ_c)``, for every class with ``N_c > 0``.

    Draws ``μ_c + V diag(√λ) ε`` with ``Σ_c = V diag(λ) Vᵀ`` (negative eigenvalues from rounding clipped to 0), which
    handles the singular covariances of classes with fewer samples than feature dimensions.

    Args:
        stats: Pooled statistics.
        samples_per_class: ``M_c``.
        generator: Source of the normal draws (CPU).

    Returns:
        ``(features (M, d) float32, labels (M,) int64)``, classes in order.
    """
    if samples_per_class < 1:
        raise ValueError(f"sample_virtual_features: samples_per_class must be >= 1, got {samples_per_class}")
    features: list[Tensor] = []
    labels: list[Tensor] = []
    for c in (stats.counts > 0).nonzero().flatten().tolist():
        mean, cov = stats.means[c].double().cpu(), stats.covariances[c].double().cpu()
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        scale = eigenvectors * eigenvalues.clamp_min(0.0).sqrt()
        noise = torch.randn(samples_per_class, mean.numel(), generator=generator, dtype=torch.float64)
        features.append((mean + noise @ scale.T).float())
        labels.append(torch.full((samples_per_class,), c, dtype=torch.long))
    if not features:
        raise ValueError("sample_virtual_features: no class has any sample")
    return torch.cat(features), torch.cat(labels)


# ----------------------------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------------------------


def classifier_parameters(module: nn.Module, embedding_dim: int) -> dict[str, nn.Parameter]:
    """The parameters of ``module.classify`` (the head on the embedding), found by autograd, by state-dict name.

    Every parameter reachable from ``module.classify(z)`` is the classifier's — whatever module holds it (a timm
    ``get_classifier()``, MOON's classifier on the projection, ...).

    Raises:
        ValueError: ``classify`` reaches no parameter.
    """
    named = list(module.named_parameters())
    flags = [p.requires_grad for _, p in named]
    device = named[0][1].device if named else torch.device("cpu")
    try:
        for _, p in named:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = module.classify(torch.randn(2, embedding_dim, device=device))  # type: ignore[operator]
            grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        for (_, p), flag in zip(named, flags, strict=True):
            p.requires_grad_(flag)
    found = {name: p for (name, p), g in zip(named, grads, strict=True) if g is not None}
    if not found:
        raise ValueError(f"CCVR: {type(module).__name__}.classify reaches no parameter")
    return found


def calibrate_classifier(
    module: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    epochs: int = 10,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Retrains only the classifier (``module.classify``) with cross-entropy on ``(features, labels)``, in place.

    SGD over the parameters :func:`classifier_parameters` finds; the rest of ``module`` is neither in the optimizer
    nor run (so it stays bit-identical, buffers included). Batches are drawn in a fresh permutation from
    ``generator`` every epoch.

    Returns:
        ``ccvr_loss_first_epoch`` and ``ccvr_loss_last_epoch``: mean training loss of the first and last epoch.
    """
    device = next(module.parameters()).device
    params = classifier_parameters(module, features.shape[1])
    flags = {name: p.requires_grad for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(list(params.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    features, labels = features.to(device), labels.to(device)
    losses: list[float] = []
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(features.shape[0], generator=generator).to(device)
                total, count = 0.0, 0
                for start in range(0, features.shape[0], batch_size):
                    index = order[start : start + batch_size]
                    loss = F.cross_entropy(module.classify(features[index]).float(), labels[index])  # type: ignore[operator]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * index.numel()
                    count += index.numel()
                losses.append(total / max(count, 1))
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
            p.grad = None
    return {"ccvr_loss_first_epoch": losses[0], "ccvr_loss_last_epoch": losses[-1]} if losses else {}


# ----------------------------------------------------------------------------------------------------------------
# The loop callback
# ----------------------------------------------------------------------------------------------------------------


class CCVR(LoopCallback):
    """Classifier calibration with virtual representations (Luo et al. 2021) as a loop callback, after any method.

    At the end of round ``r`` when due (``every=0``: the last round only; ``every=N``: every N rounds and the last),
    :meth:`calibrate` gathers every client's per-class feature statistics — the features are those of the model the
    client holds (its personal state and the global state, as the evaluator restores it; the global model for
    methods without personal state, as in the paper) on its local training split — pools them, samples
    ``samples_per_class`` virtual features per class, retrains the global model's classifier on them (SGD, the rest
    of the model untouched) and, with ``keep``, writes the calibrated classifier into the global state (it is then
    in the round's checkpoint and, with ``every``, in what clients receive next). The round metrics gain:

    * ``ccvr_before_global_acc`` / ``ccvr_after_global_acc`` (and ``personal_acc``, ``personal_acc_mean`` ...),
    * ``ccvr_classes`` (classes with statistics), ``ccvr_virtual_samples``, ``ccvr_mb_up`` (the statistics' upload,
      also added to the run's communication totals), ``ccvr_loss_first_epoch`` / ``ccvr_loss_last_epoch``.

    Classifier training [design: the paper does not fix it]: SGD lr 0.01, momentum 0.9, 10 epochs, batch 64.
    Virtual features and batches draw from ``torch_generator(seed, "ccvr", round)``, so resumed runs calibrate
    identically. Statistics are computed in float64 and sent as float32 [design].

    Args:
        every: Calibrate every this many rounds (0: only after the last round).
        samples_per_class: ``M_c`` (the paper uses a few hundred to 2000).
        epochs: Classifier training epochs over the virtual features.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Classifier training batch size.
        keep: Write the calibrated classifier into the global state (else only report its accuracy).

    Raises:
        ValueError: Arguments out of range; at calibration, a client module whose classifier is not shared.
    """

    def __init__(
        self,
        every: int = 0,
        samples_per_class: int = 1000,
        epochs: int = 10,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 64,
        keep: bool = True,
    ) -> None:
        if every < 0:
            raise ValueError(f"CCVR: every must be >= 0 (0: after the last round), got {every}")
        if samples_per_class < 1 or epochs < 1 or batch_size < 1:
            raise ValueError(
                f"CCVR: samples_per_class, epochs and batch_size must be >= 1, got {samples_per_class}, {epochs}, "
                f"{batch_size}"
            )
        if not lr > 0:
            raise ValueError(f"CCVR: lr must be > 0, got {lr}")
        self.every = every
        self.samples_per_class = samples_per_class
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.keep = keep
        self.last_statistics: list[FeatureStatistics] = []
        """Every client's statistics from the last calibration (as sent, float32), in client order."""
        self.last_pooled: FeatureStatistics | None = None
        self._nbytes = 0

    def due(self, round: int, rounds: int) -> bool:
        """Whether ``round`` (0-based, of ``rounds``) calibrates."""
        return round == rounds - 1 or (self.every > 0 and (round + 1) % self.every == 0)

    @override
    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        if self.due(round, loop.rounds):
            metrics.update(self.calibrate(loop, round, metrics))

    # -- the steps ---------------------------------------------------------------------------------------
    def gather_statistics(self, loop: FederatedLoop, round: int) -> list[FeatureStatistics]:
        """Every client's per-class feature statistics on its local training split (counted as uploaded bytes).

        Computed where the client lives (:meth:`~lit_fed.loop.runner.ClientRunner.feature_statistics`: in this
        process, or on the client's Flower node), with the model the evaluator gives that client.
        """
        updates = loop.runner.feature_statistics(loop, range(loop.num_clients), round)
        self._nbytes = sum(loop.comm.upload(update) for update in updates)
        return [update.feature_stats for update in updates if update.feature_stats is not None]

    def _classifier_keys(self, loop: FederatedLoop, embedding_dim: int) -> list[str]:
        keys = list(classifier_parameters(loop.client, embedding_dim))
        missing = [k for k in keys if k not in loop.global_state]
        if missing:
            raise ValueError(
                f"CCVR calibrates the global classifier, but {type(loop.client).__name__} keeps its classifier "
                f"personal ({missing[:3]}); use CCVR with a method that shares the classifier"
            )
        return keys

    def calibrate(
        self, loop: FederatedLoop, round: int | None = None, metrics: dict[str, Any] | None = None
    ) -> dict[str, float]:
        """Runs CCVR on the loop's current global model; returns the metrics (see the class docstring).

        Args:
            loop: A set-up federated loop (inside a run, or ``loop.setup(); loop.restore(checkpoint)``).
            round: The round the statistics belong to (default: the loop's current round).
            metrics: The round's metrics, reused as the "before" accuracies when they hold them (else the loop
                evaluates first).

        Raises:
            TypeError: the client module has no ``embed``/``classify`` (e.g. a ``federate``-d user module).
            ValueError: no client has training samples, or the classifier is personal.
        """
        round = loop.round if round is None else round
        module, device = loop.client, loop.eval_device
        if not (callable(getattr(module, "embed", None)) and callable(getattr(module, "classify", None))):
            raise TypeError(
                f"CCVR needs the client's embedding and classifier (embed/classify, as lit_fed.FederatedClient "
                f"has); {type(module).__name__} lacks them"
            )
        was_training = module.training
        try:
            before = {k: v for k, v in (metrics or {}).items() if k.startswith(("global_acc", "personal_acc"))}
            if "global_acc" not in before:
                before = {k: v for k, v in loop.evaluate().items() if k.startswith(("global_acc", "personal_acc"))}
            module.to(device)
            loop.load_client(None)
            module.eval()
            probe, _ = next(iter(loop.datamodule.global_test_dataloader()))
            with torch.no_grad():
                embedding_dim = int(module.embed(probe[:2].to(device)).shape[1])
            keys = self._classifier_keys(loop, embedding_dim)  # refuse a personal classifier before any upload
            stats = self.gather_statistics(loop, round)
            if not stats:
                raise ValueError("CCVR: no client has training samples")
            self.last_statistics = stats
            pooled = pool_feature_statistics(stats)
            self.last_pooled = pooled
            generator = torch_generator(loop.seed, "ccvr", round)
            features, labels = sample_virtual_features(pooled, self.samples_per_class, generator)
            loop.load_client(None)
            module.to(device)
            module.eval()
            fit = calibrate_classifier(
                module,
                features,
                labels,
                epochs=self.epochs,
                lr=self.lr,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
                batch_size=self.batch_size,
                generator=generator,
            )
            tensors = module.state_dict()
            calibrated: StateDict = dict(loop.global_state)
            for key in keys:
                calibrated[key] = tensors[key].detach().to("cpu", loop.global_state[key].dtype, copy=True)
            previous = loop.global_state
            loop.global_state = calibrated
            module.to("cpu")
            try:
                after = {k: v for k, v in loop.evaluate().items() if k.startswith(("global_acc", "personal_acc"))}
            finally:
                if not self.keep:
                    loop.global_state = previous
        finally:
            module.to("cpu")
            module.train(was_training)
        out: dict[str, float] = {f"ccvr_before_{k}": float(v) for k, v in before.items()}
        out.update({f"ccvr_after_{k}": float(v) for k, v in after.items()})
        out.update(fit)
        out["ccvr_classes"] = float((pooled.counts > 0).sum())
        out["ccvr_virtual_samples"] = float(labels.numel())
        out["ccvr_mb_up"] = self._nbytes / 1e6
        return out

    def __repr__(self) -> str:
        return (
            f"CCVR(every={self.every}, samples_per_class={self.samples_per_class}, epochs={self.epochs}, lr={self.lr})"
        )
