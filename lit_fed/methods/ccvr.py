"""CCVR: classifier calibration with virtual representations, post hoc, after any method.

Luo, Chen, Hu, Zhang, Liang and Feng, "No Fear of Heterogeneity: Classifier Calibration for Federated Learning with
Non-IID Data" (NeurIPS 2021, arXiv:2106.05001), §4 "Classifier calibration with virtual representations" (its
pooled-mean and pooled-covariance equations, restated below) and Alg. 1 [paper].

After federated training (or every N rounds), with the global model's feature extractor ``f``:

1. every client ``k`` sends, per class ``c``, the mean ``μ_{c,k}``, the unbiased covariance ``Σ_{c,k}`` (divisor
   ``N_{c,k} − 1``) and the count ``N_{c,k}`` of its features (:func:`feature_statistics`; the answer to a
   :class:`FeatureStatisticsTask`, whose bytes are counted as uploaded);
2. the server pools them into the statistics of the union of the clients' features
   (:func:`pool_feature_statistics`): ``N_c = Σ_k N_{c,k}``, ``μ_c = Σ_k (N_{c,k}/N_c) μ_{c,k}``,
   ``Σ_c = Σ_k ((N_{c,k}−1)/(N_c−1)) Σ_{c,k} + Σ_k (N_{c,k}/(N_c−1)) μ_{c,k} μ_{c,k}ᵀ − (N_c/(N_c−1)) μ_c μ_cᵀ``;
3. samples ``M_c`` virtual features per class from ``N(μ_c, Σ_c)`` (:func:`sample_virtual_features`);
4. retrains only the classifier with cross-entropy on them (:func:`calibrate_classifier`); the feature extractor is
   untouched.

How it plugs in [design]: :class:`CCVR` is a :class:`~lit_fed.server.strategy.ServerStep` (``trainer.server_steps``,
``configs/method/ccvr.yaml``), so it composes with *any* method's client, strategy and other steps. When due (after
the last round with ``every=0``, or every ``every`` rounds) it asks every client for its statistics with a client task
(:class:`FeatureStatisticsTask`, answered where the client lives — in this process or on its Flower node — with the
model evaluation gives that client: its stored personal state and the aggregated global state), calibrates the
global classifier and returns the calibrated global state (checkpointed with the round, and what clients receive
next). It reports the global and personalized accuracy before and after (``ccvr_before_*`` / ``ccvr_after_*``; the
round's own ``global_acc`` is then the calibrated model's). :meth:`CCVR.calibrate` also works on a loop restored from
a finished run's checkpoint. A method whose classifier is personal (FedPer, FedRep, ...) has no global classifier to
calibrate and is refused.

This module is the whole method: the task and its answer (:class:`FeatureStatisticsTask`,
:class:`~lit_fed.metrics.features.FeatureStatistics`), the pooling and sampling, and the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.client.tasks import ClientTask
from lit_fed.metrics.features import FeatureStatistics, embed_dataset, feature_statistics
from lit_fed.server.strategy import ServerContext, ServerStep
from lit_fed.utils.seeding import torch_generator

if TYPE_CHECKING:
    from lit_fed.client.worker import ClientWorker
    from lit_fed.loop.federated_loop import FederatedLoop

__all__ = [
    "CCVR",
    "FeatureStatistics",
    "FeatureStatisticsTask",
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


def _covariance_factor(cov: Tensor) -> Tensor:
    """``V diag(√λ)`` with ``Σ = V diag(λ) Vᵀ``, made independent of how the eigensolver rounds.

    Eigenvalues below ``d · eps · λ_max`` (zero up to rounding: the null space of a singular covariance) are set to
    0, so the arbitrary basis the solver picks for that space contributes nothing; features of zero variance get
    exactly zero loadings; each remaining eigenvector's sign is fixed (its largest-magnitude entry positive).
    Without these, the same ``Σ`` up to 1e-17 (another CPU's BLAS kernels) drew different virtual features from
    the same noise.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    tolerance = cov.shape[-1] * torch.finfo(cov.dtype).eps * eigenvalues.abs().max()
    eigenvalues = torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))
    # a feature with zero variance is constant: no eigenvector of a nonzero eigenvalue moves it (exactly, not 1e-17)
    eigenvectors = eigenvectors * (cov.diagonal() > 0).unsqueeze(1)
    pivot = eigenvectors.abs().argmax(dim=0, keepdim=True)
    signs = eigenvectors.gather(0, pivot).sign()
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return eigenvectors * signs * eigenvalues.sqrt()


def sample_virtual_features(
    stats: FeatureStatistics, samples_per_class: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``M_c`` virtual features per class from ``N(μ_c, Σ_c)``, for every class with ``N_c > 0``.

    Draws ``μ_c + V diag(√λ) ε`` with ``Σ_c = V diag(λ) Vᵀ`` (eigenvalues that are zero up to rounding set to 0,
    eigenvector signs fixed: see :func:`_covariance_factor`), which handles the singular covariances of classes with
    fewer samples than feature dimensions.

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
        scale = _covariance_factor(cov)
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
# The client task
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureStatisticsTask(ClientTask):
    """CCVR's client step (Luo et al. 2021, §4): per-class statistics of the client's features on its training split.

    Attributes:
        model: The client's model as evaluation gives it (the strategy's ``configure_evaluate`` message).
    """

    model: ServerMessage

    @override
    def run(self, worker: ClientWorker) -> FeatureStatistics | None:
        """The statistics (float32, computed in float64) of ``embed`` features; ``None`` without training samples."""
        with worker.evaluation_model(self.model) as module, torch.no_grad():
            features, labels = embed_dataset(
                module, worker.train_dataloader(self.client_id, self.round), worker.eval_device
            )
        if features.numel() == 0:
            return None
        return feature_statistics(features, labels, int(worker.data.num_classes), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# The server step
# ----------------------------------------------------------------------------------------------------------------

_ACCURACY_PREFIXES = ("global_acc", "personal_acc")


class CCVR(ServerStep):
    """Classifier calibration with virtual representations (Luo et al. 2021) as a server step, after any method.

    In round ``r`` when due (``every=0``: the last round only; ``every=N``: every N rounds and the last), :meth:`run`
    evaluates the aggregated model, gathers every client's per-class feature statistics (a
    :class:`FeatureStatisticsTask` per client; the features are those of the model the client holds — its personal
    state and the global state, as evaluation restores it; the global model for methods without personal state, as
    in the paper — on its local training split), pools them, samples ``samples_per_class`` virtual features per
    class, retrains the global model's classifier on them (SGD, the rest of the model untouched) and evaluates the
    calibrated model. With ``keep`` the calibrated classifier becomes the global state's (checkpointed with the
    round and, with ``every``, what clients receive next); otherwise the step only reports. The round metrics gain:

    * ``ccvr_before_global_acc`` / ``ccvr_after_global_acc`` (and ``personal_acc``, ``personal_acc_mean`` ...),
    * ``ccvr_classes`` (classes with statistics), ``ccvr_virtual_samples``, ``ccvr_mb_up`` (the statistics' upload,
      also in the round's upload bytes), ``ccvr_loss_first_epoch`` / ``ccvr_loss_last_epoch``.

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

    def due(self, round: int, rounds: int) -> bool:
        """Whether ``round`` (0-based, of ``rounds``) calibrates."""
        return round == rounds - 1 or (self.every > 0 and (round + 1) % self.every == 0)

    @override
    def run(self, global_state: StateDict, updates: Sequence[ClientUpdate], context: ServerContext) -> StateDict:
        if not self.due(context.round, context.rounds):
            return global_state
        calibrated, metrics = self.calibrate_state(global_state, context)
        context.log(metrics)
        return calibrated if self.keep else global_state

    # -- the steps ---------------------------------------------------------------------------------------
    def gather_statistics(self, global_state: StateDict, context: ServerContext) -> tuple[list[FeatureStatistics], int]:
        """Every client's per-class feature statistics (computed where the client lives) and their bytes."""
        from lit_fed.client.codec import packed_nbytes

        messages = context.model_messages(range(context.num_clients), global_state)
        tasks = [FeatureStatisticsTask(client_id=m.client_id, round=context.round, model=m) for m in messages]
        answers = [a for a in context.run_tasks(tasks) if isinstance(a, FeatureStatistics)]
        return answers, sum(packed_nbytes(a) for a in answers)

    @staticmethod
    def _classifier_keys(module: nn.Module, global_state: StateDict, embedding_dim: int) -> list[str]:
        keys = list(classifier_parameters(module, embedding_dim))
        missing = [k for k in keys if k not in global_state]
        if missing:
            raise ValueError(
                f"CCVR calibrates the global classifier, but {type(module).__name__} keeps its classifier "
                f"personal ({missing[:3]}); use CCVR with a method that shares the classifier"
            )
        return keys

    def calibrate_state(self, global_state: StateDict, context: ServerContext) -> tuple[StateDict, dict[str, float]]:
        """The calibrated global state and the metrics (see the class docstring); ``global_state`` is unchanged.

        Raises:
            TypeError: the client module has no ``embed``/``classify`` (e.g. a ``federate``-d user module).
            ValueError: no client has training samples, or the classifier is personal.
        """
        module, device = context.client_template, context.eval_device
        if not (callable(getattr(module, "embed", None)) and callable(getattr(module, "classify", None))):
            raise TypeError(
                f"CCVR needs the client's embedding and classifier (embed/classify, as lit_fed.FederatedClient "
                f"has); {type(module).__name__} lacks them"
            )
        before = {k: v for k, v in context.evaluate(global_state).items() if k.startswith(_ACCURACY_PREFIXES)}
        was_training = module.training
        try:
            self._load_global(module, global_state, context)
            probe, _ = next(iter(context.datamodule.global_test_dataloader()))
            with torch.no_grad():
                embedding_dim = int(module.embed(probe[:2].to(device)).shape[1])
            keys = self._classifier_keys(module, global_state, embedding_dim)  # refuse before any upload
            stats, nbytes = self.gather_statistics(global_state, context)
            if not stats:
                raise ValueError("CCVR: no client has training samples")
            self.last_statistics = stats
            pooled = pool_feature_statistics(stats)
            self.last_pooled = pooled
            generator = torch_generator(context.seed, "ccvr", context.round)
            features, labels = sample_virtual_features(pooled, self.samples_per_class, generator)
            self._load_global(module, global_state, context)
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
            calibrated: StateDict = dict(global_state)
            for key in keys:
                calibrated[key] = tensors[key].detach().to("cpu", global_state[key].dtype, copy=True)
        finally:
            module.to("cpu")
            module.train(was_training)
        after = {k: v for k, v in context.evaluate(calibrated).items() if k.startswith(_ACCURACY_PREFIXES)}
        out: dict[str, float] = {f"ccvr_before_{k}": float(v) for k, v in before.items()}
        out.update({f"ccvr_after_{k}": float(v) for k, v in after.items()})
        out.update(fit)
        out["ccvr_classes"] = float((pooled.counts > 0).sum())
        out["ccvr_virtual_samples"] = float(labels.numel())
        out["ccvr_mb_up"] = nbytes / 1e6
        return calibrated, out

    @staticmethod
    def _load_global(module: nn.Module, global_state: StateDict, context: ServerContext) -> None:
        """The global model (initial personal state + ``global_state``) in ``module``, on the device, in eval mode."""
        module.to(context.eval_device)
        module.load_personal_state(context.initial_personal)  # type: ignore[operator]
        module.load_state(global_state, what="global state")  # type: ignore[operator]
        module.eval()

    def calibrate(self, loop: FederatedLoop) -> dict[str, float]:
        """Runs CCVR on a set-up loop's current global model (e.g. restored from a finished run's checkpoint).

        With ``keep`` the loop's global state becomes the calibrated one. Returns the metrics.
        """
        calibrated, metrics = self.calibrate_state(loop.global_state, loop.context)
        if self.keep:
            loop.global_state = calibrated
        return metrics

    def __repr__(self) -> str:
        return (
            f"CCVR(every={self.every}, samples_per_class={self.samples_per_class}, epochs={self.epochs}, lr={self.lr})"
        )
