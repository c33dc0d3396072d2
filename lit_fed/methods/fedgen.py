"""FedGen: data-free knowledge distillation for heterogeneous federated learning.

Zhu, Hong and Zhou, "Data-Free Knowledge Distillation for Heterogeneous Federated Learning" (ICML 2021), Alg. 1,
Eq. 4–5; the authors' code ``zhuangdizhu/FedGen`` (``serverpFedGen.py``, ``userpFedGen.py``, ``generator.py``)
[code].

**Server** (:class:`FedGen`). Besides FedAvg of the client models, the server trains a conditional generator
``G(y, ε)`` of *latent features* — the input of the clients' classifier head ``h`` — so that the clients' heads
classify ``G(y)`` as ``y``: ``ε ~ U[0,1)^{32} ⊕ onehot(y) → Linear → BatchNorm → ReLU → Linear → z`` (hidden 256,
:class:`Generator`). Each round, after the clients trained, for 50 iterations of batch 32 (labels drawn uniformly
among the labels some client holds):

    ``L_G = α·Σ_k mean_b( CE(h_k(G(y_b)), y_b) · w_{y_b,k} ) + η·exp(−mean_{i,j} ‖ε_i − ε_j‖²_mean · |z_i − z_j|_mean)``

with ``h_k`` client ``k``'s trained head (from its update), ``w_{y,k} = n_{y,k} / Σ_j n_{y,j}`` its share of the
label's count (:func:`label_weights`; the counts start at 1 in the code, ``count_smoothing``), α 1, η 1
(:func:`teacher_loss`, :func:`diversity_loss`, exactly the code's ``DiversityLoss('l1')``); Adam lr 3e-4,
weight decay 1e-2, the learning rate decayed ×0.98 per round [code].

**Client** (:class:`FedGenClient`), from round 1 (when the server sends a trained generator):

    ``L = CE(f(x), y) + α_t·CE(h(G(ŷ)), ŷ) + β_t·KL(softmax(h(G(y))) ‖ softmax(f(x)))``

``ŷ`` uniform over the labels the federation holds, ``α_t = max(1e-4, α_0·0.98^t)``, ``β_t`` likewise
(:func:`fedgen_schedule`), α_0 10, β_0 10 (1 for harder data). The generator is frozen on the client (eval mode,
no gradient); the KL target is detached. Clients upload their label counts (``ClientUpdate.extras`` under
:data:`LABEL_COUNTS_KEY`); the generator travels in ``ServerMessage.extras`` (counted as downloaded bytes); the
generator, its optimizer and its learning-rate schedule are checkpointed in the strategy state. The generator's
training is the strategy's own server step (:meth:`FedGen.server_steps`), before any step a run adds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.client.teacher import FrozenModule
from lit_fed.server.aggregation import Aggregator
from lit_fed.server.fedavg import FedAvg
from lit_fed.server.strategy import ServerContext, ServerStep
from lit_fed.utils.seeding import derive_seed, torch_generator

__all__ = [
    "GENERATOR_PREFIX",
    "LABELS_KEY",
    "LABEL_COUNTS_KEY",
    "FedGen",
    "FedGenClient",
    "Generator",
    "diversity_loss",
    "fedgen_schedule",
    "label_weights",
    "teacher_loss",
]

GENERATOR_PREFIX = "fedgen.generator."
"""Prefix of the generator's state-dict entries in ``ServerMessage.extras``."""
LABELS_KEY = "fedgen.labels"
"""``ServerMessage.extras`` entry: the labels held by some client (``ŷ`` is drawn among them)."""
LABEL_COUNTS_KEY = "fedgen.label_counts"
"""``ClientUpdate.extras`` entry: the ``(C,)`` training labels a client counted in its round."""


# ----------------------------------------------------------------------------------------------------------------
# The generator and the loss functions
# ----------------------------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """FedGen's conditional generator of latent features (the code's ``Generator``, ``embedding=False``).

    ``ε ~ U[0, 1)^{noise_dim}``, ``onehot(y)`` → ``Linear(noise_dim + C, hidden) → BatchNorm1d → ReLU →
    Linear(hidden, latent)``.

    Args:
        num_classes: Number of classes ``C``.
        latent_dim: Output size: the input size of the clients' classifier head.
        noise_dim: Size of ``ε`` (32).
        hidden_dim: Hidden width (256, the code's MNIST setting).
    """

    def __init__(self, num_classes: int, latent_dim: int, noise_dim: int = 32, hidden_dim: int = 256) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("latent_dim", latent_dim),
            ("noise_dim", noise_dim),
            ("hidden_dim", hidden_dim),
        ):
            if value < 1:
                raise ValueError(f"Generator: {name} must be >= 1, got {value}")
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.latent_dim = latent_dim
        self.fc = nn.Linear(noise_dim + num_classes, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.act = nn.ReLU()
        self.out = nn.Linear(hidden_dim, latent_dim)

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], num_classes: int) -> Generator:
        """A generator shaped after a state dict of one (its sizes are read from ``fc.weight`` / ``out.weight``)."""
        hidden, inputs = state["fc.weight"].shape
        latent = state["out.weight"].shape[0]
        if inputs <= num_classes:
            raise ValueError(f"Generator.from_state: input width {inputs} leaves no noise for {num_classes} classes")
        generator = cls(num_classes, int(latent), int(inputs - num_classes), int(hidden))
        generator.load_state_dict(dict(state), strict=True)
        return generator

    def sample_noise(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """``ε ~ U[0, 1)^{noise_dim}`` (drawn on the CPU from ``generator`` when one is given)."""
        if generator is not None:
            return torch.rand(batch, self.noise_dim, generator=generator).to(device)
        return torch.rand(batch, self.noise_dim, device=device)

    @override
    def forward(
        self, labels: Tensor, eps: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(z, ε)``: latent features ``(B, latent_dim)`` for ``labels`` ``(B,)``, and the noise used."""
        if eps is None:
            eps = self.sample_noise(labels.shape[0], self.fc.weight.device, generator)
        onehot = F.one_hot(labels.long(), self.num_classes).to(eps.dtype)
        z = self.out(self.act(self.bn(self.fc(torch.cat([eps, onehot], dim=1)))))
        return z, eps


def _pairwise_mean_distance(x: Tensor, how: str) -> Tensor:
    diff = x.unsqueeze(0) - x.unsqueeze(1)
    return diff.abs().mean(dim=2) if how == "l1" else diff.pow(2).mean(dim=2)


def diversity_loss(eps: Tensor, z: Tensor) -> Tensor:
    """``exp(−mean_{i,j}( mean_d(ε_i − ε_j)² · mean_d|z_i − z_j| ))`` over all pairs (the code's ``DiversityLoss``).

    Args:
        eps: ``(B, noise_dim)`` noise.
        z: ``(B, ...)`` generated features (flattened per sample).
    """
    z = z.reshape(z.shape[0], -1)
    return torch.exp(-(_pairwise_mean_distance(eps, "l2") * _pairwise_mean_distance(z, "l1")).mean())


def label_weights(counts: Tensor, smoothing: float = 1.0) -> Tensor:
    """``w_{y,k} = (n_{y,k} + s) / Σ_j (n_{y,j} + s)``: each client's share of each label's count.

    Args:
        counts: ``(K, C)`` label counts of the ``K`` clients.
        smoothing: ``s``, added to every count (1 in the code: ``clean_up_counts`` starts every count at 1).

    Returns:
        ``(C, K)`` weights; each row sums to 1 (a label nobody holds gets uniform weights when ``s = 0``).
    """
    counts = counts.double().T + smoothing
    totals = counts.sum(dim=1, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / counts.shape[1])
    return torch.where(totals > 0, counts / totals.clamp_min(1e-300), uniform)


def teacher_loss(logits: Sequence[Tensor], labels: Tensor, weights: Tensor) -> Tensor:
    """``Σ_k mean_b( CE(logits_k[b], y_b) · w_{y_b,k} )``: the generator's weighted teacher loss.

    Args:
        logits: ``K`` tensors ``(B, C)``: each client head's logits on the generated features.
        labels: ``(B,)`` the labels the features were generated for.
        weights: ``(C, K)`` label-count shares (:func:`label_weights`).
    """
    if len(logits) != weights.shape[1]:
        raise ValueError(f"teacher_loss: {len(logits)} clients' logits for {weights.shape[1]} weight columns")
    total = logits[0].new_zeros((), dtype=torch.float32)
    for k, client_logits in enumerate(logits):
        ce = F.cross_entropy(client_logits.float(), labels, reduction="none")
        total = total + (ce * weights[labels, k].to(ce)).mean()
    return total


def fedgen_schedule(round: int, initial: float, decay: float = 0.98, floor: float = 1e-4) -> float:
    """``max(floor, initial · decay^t)``: the clients' ``α_t`` and ``β_t`` (the code's ``exp_lr_scheduler``)."""
    return max(floor, initial * decay**round)


def _head_prefix(template: nn.Module, head: nn.Module) -> str:
    for name, module in template.named_modules():
        if module is head:
            return name
    raise ValueError(f"FedGen: the classifier {type(head).__name__} is not a sub-module of {type(template).__name__}")


def classifier_head(template: nn.Module) -> tuple[nn.Module, str]:
    """``(head, prefix)``: the classifier ``h`` on the latent features and its state-dict prefix in ``template``."""
    head = template.head() if callable(getattr(template, "head", None)) else template.backbone.get_classifier()
    return head, _head_prefix(template, head)


def _head_input_size(head: nn.Module) -> int:
    size = getattr(head, "in_features", None)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"FedGen: cannot tell the input size of the classifier {type(head).__name__}")
    return size


# ----------------------------------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------------------------------


class FedGenClient(FederatedClient):
    r"""FedGen client (Zhu et al. 2021, Eq. 5) [code]: CE plus the generator's two regularizers.

    ``L = CE(f(x), y) + α_t·CE(h(G(ŷ)), ŷ) + β_t·KL(softmax(h(G(y))) ‖ softmax(f(x)))`` with ``h`` this client's
    classifier (``backbone.get_classifier()``, the head on :meth:`embed`'s output), ``G`` the frozen generator
    received in ``ServerMessage.extras`` (eval mode, no gradient), ``ŷ`` drawn uniformly among the labels the
    federation holds (sent with the generator; all labels if absent), ``α_t = max(1e-4, α_0·0.98^t)`` and ``β_t``
    likewise, ``t`` the round. The terms are logged as ``train_fedgen_teacher`` / ``train_fedgen_latent``. Without a
    generator (round 0, or plain Lightning use without :meth:`set_generator`) the loss is plain CE.

    The labels of every trained batch are counted (reset at each fit start) and uploaded as
    ``ClientUpdate.extras[LABEL_COUNTS_KEY]`` (what the code's ``update_label_counts`` counts).

    ``gen_batch_size`` ``None`` draws as many ``ŷ`` as the batch has samples (the paper's Eq. 5, one ``ŷ`` per
    sample). With a fixed ``gen_batch_size`` the α term is scaled by ``gen_batch_size / batch size`` as in the code's
    ``gen_ratio``.

    Args:
        backbone: A model with timm's feature/head contract whose classifier takes the embedding.
        alpha: ``α_0`` (10).
        beta: ``β_0`` (10; 1 for harder data).
        decay: Per-round decay of α and β (0.98).
        floor: Lower bound of α and β (1e-4).
        gen_batch_size: Number of ``ŷ`` per step (``None``: the batch size).
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule).

    Raises:
        ValueError: negative weights or a bad decay/batch size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        alpha: float = 10.0,
        beta: float = 10.0,
        decay: float = 0.98,
        floor: float = 1e-4,
        gen_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"FedGenClient: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if not 0 < decay <= 1:
            raise ValueError(f"FedGenClient: decay must be in (0, 1], got {decay}")
        if gen_batch_size is not None and gen_batch_size < 1:
            raise ValueError(f"FedGenClient: gen_batch_size must be >= 1 or None, got {gen_batch_size}")
        super().__init__(backbone, **kwargs)
        if self.num_classes < 2:
            raise ValueError(f"FedGenClient: needs a classifier with >= 2 classes, got {self.num_classes}")
        self.alpha = alpha
        self.beta = beta
        self.decay = decay
        self.floor = floor
        self.gen_batch_size = gen_batch_size
        self._generator: FrozenModule | None = None
        self._labels: Tensor | None = None
        self._label_counts: Tensor | None = None

    # -- the generator -------------------------------------------------------------------------------------
    def head(self) -> nn.Module:
        """The classifier ``h`` on the latent features (the backbone's classifier)."""
        return self.backbone.get_classifier()

    @property
    def generator(self) -> nn.Module | None:
        """The frozen generator, or ``None``."""
        return None if self._generator is None else self._generator.module

    def set_generator(self, state: Mapping[str, Tensor] | None, labels: Tensor | None = None) -> None:
        """Sets (from a :class:`Generator` state dict) or with ``None`` clears the frozen generator.

        Args:
            state: The generator's state dict.
            labels: The labels ``ŷ`` is drawn among (``None``: every class).
        """
        if state is None:
            self._generator, self._labels = None, None
            return
        if self._generator is None or not _same_shapes(self._generator.module.state_dict(), state):
            self._generator = FrozenModule(Generator.from_state(state, self.num_classes))
        else:
            self._generator.load_from(state)
        latent = self._generator.module.latent_dim
        expected = _head_input_size(self.head())
        if latent != expected:
            raise ValueError(f"FedGenClient: the generator makes {latent}-d features, the head takes {expected}")
        self._labels = None if labels is None else labels.detach().to("cpu", torch.long)

    @override
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the global state and the generator sent in ``message.extras`` (none in round 0)."""
        super().receive_global(message)
        state = {k[len(GENERATOR_PREFIX) :]: v for k, v in message.extras.items() if k.startswith(GENERATOR_PREFIX)}
        self.set_generator(state or None, message.extras.get(LABELS_KEY))

    def loss_weights(self) -> tuple[float, float]:
        """``(α_t, β_t)`` at the current round."""
        return (
            fedgen_schedule(self.current_round, self.alpha, self.decay, self.floor),
            fedgen_schedule(self.current_round, self.beta, self.decay, self.floor),
        )

    # -- the loss ------------------------------------------------------------------------------------------
    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self._label_counts = None

    def _count(self, target: Tensor) -> None:
        counts = torch.bincount(target.detach().long(), minlength=self.num_classes)
        self._label_counts = counts if self._label_counts is None else self._label_counts + counts

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """The regularizers plus ``fedgen_teacher`` (α_t term) and ``fedgen_latent`` (β_t term) once a generator is set.

        Also counts the batch's labels for the upload.
        """
        losses = super().extra_losses(batch, output)
        if output is None:
            output = self.compute_step(batch)
        self._count(output.target)
        if self._generator is None:
            return losses
        alpha, beta = self.loss_weights()
        generator = self._generator.match(output.logits)
        target = output.target
        device = output.logits.device
        with torch.no_grad():
            z_y, _ = generator(target)
            target_probs = F.softmax(self.classify(z_y.to(output.logits.dtype)).float(), dim=1)
        latent = F.kl_div(F.log_softmax(output.logits.float(), dim=1), target_probs, reduction="batchmean")
        num = self.gen_batch_size or target.shape[0]
        pool = self._labels if self._labels is not None and self._labels.numel() else torch.arange(self.num_classes)
        sampled = pool.to(device)[torch.randint(len(pool), (num,), device=device)]
        with torch.no_grad():
            z_hat, _ = generator(sampled)
        teacher = F.cross_entropy(self.classify(z_hat.to(output.logits.dtype)).float(), sampled)
        ratio = num / target.shape[0] if self.gen_batch_size is not None else 1.0
        losses["fedgen_teacher"] = ratio * alpha * teacher
        losses["fedgen_latent"] = beta * latent
        return losses

    @override
    def on_train_end(self) -> None:
        super().on_train_end()
        if self._generator is not None:
            self._generator.cpu()

    @override
    def build_update(self, num_samples: int) -> ClientUpdate:
        """The shared state plus the ``(C,)`` labels counted over the round's batches (:data:`LABEL_COUNTS_KEY`)."""
        update = super().build_update(num_samples)
        counts = self._label_counts
        update.extras[LABEL_COUNTS_KEY] = (
            torch.zeros(self.num_classes, dtype=torch.long) if counts is None else counts.detach().to("cpu").long()
        )
        return update


def _same_shapes(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].shape == b[k].shape for k in a)


# ----------------------------------------------------------------------------------------------------------------
# The server strategy
# ----------------------------------------------------------------------------------------------------------------


class FedGen(FedAvg):
    """FedGen's server (Zhu et al. 2021, Alg. 1) [code]: FedAvg of the models plus a generator trained on their heads.

    Round protocol: :meth:`configure_train` sends the generator's state (and the labels ``ŷ`` is drawn among) in
    every message's ``extras`` once it has been trained (from round 1); :meth:`aggregate_train` checks that every
    update carries its label counts and averages the models (FedAvg); the strategy's server step
    (:meth:`train_on_updates`) trains the generator for ``iterations`` Adam steps on the round's updates (their heads
    and label counts, see the module docstring), then decays its learning rate. The global state is unchanged by
    the generator.

    The generator is built at the first training step for the client's head input size and number of classes
    (initialization stream ``derive_seed(seed, "fedgen", "generator")``, ``seed`` the datamodule's); its state, the
    Adam state, the schedule and the label pool round-trip through :meth:`state_dict` / :meth:`load_state_dict`.
    Label sampling and noise in round ``t`` draw from ``torch_generator(seed, "fedgen", t)``.

    Args:
        noise_dim: Size of ``ε`` (32).
        hidden_dim: Generator hidden width (256).
        lr: Adam learning rate (3e-4).
        weight_decay: Adam weight decay (1e-2 [code]).
        lr_decay: Per-round multiplicative learning-rate decay (0.98 [code], ``ExponentialLR``).
        iterations: Generator steps per round (50).
        batch_size: Generated samples per step (32).
        teacher_weight: α of the teacher loss (1).
        diversity_weight: η of the diversity loss (1).
        count_smoothing: Added to every client's label counts before the shares (1 [code]).
        weighted: Weight FedAvg by sample count.
        aggregator: The FedAvg rule (a robust rule may replace the mean).
        device: Where the generator trains.
        steps: Server steps after the generator's training.
    """

    supports_asynchronous: ClassVar[bool] = False  # the generator trains on a round's updates together

    def __init__(
        self,
        noise_dim: int = 32,
        hidden_dim: int = 256,
        lr: float = 3e-4,
        weight_decay: float = 1e-2,
        lr_decay: float = 0.98,
        iterations: int = 50,
        batch_size: int = 32,
        teacher_weight: float = 1.0,
        diversity_weight: float = 1.0,
        count_smoothing: float = 1.0,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
        device: str = "cpu",
        steps: Sequence[ServerStep] = (),
    ) -> None:
        super().__init__(aggregator=aggregator, weighted=weighted, steps=steps)
        if not lr > 0:
            raise ValueError(f"FedGen: lr must be > 0, got {lr}")
        if iterations < 1 or batch_size < 2:
            raise ValueError(f"FedGen: iterations must be >= 1 and batch_size >= 2, got {iterations}, {batch_size}")
        if count_smoothing < 0:
            raise ValueError(f"FedGen: count_smoothing must be >= 0, got {count_smoothing}")
        self.noise_dim = noise_dim
        self.hidden_dim = hidden_dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_decay = lr_decay
        self.iterations = iterations
        self.batch_size = batch_size
        self.teacher_weight = teacher_weight
        self.diversity_weight = diversity_weight
        self.count_smoothing = count_smoothing
        self.device = torch.device(device)
        self.generator: Generator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.labels: Tensor | None = None
        self.trained_rounds = 0
        self.last_metrics: dict[str, float] = {}
        self._training = _GeneratorTraining(self)

    # -- building --------------------------------------------------------------------------------------
    def setup(self, num_classes: int, latent_dim: int, seed: int = 0) -> Generator:
        """Builds the generator, its Adam optimizer and its schedule (once); returns the generator."""
        if self.generator is not None:
            if self.generator.num_classes != num_classes or self.generator.latent_dim != latent_dim:
                raise ValueError(
                    f"FedGen: the generator makes {self.generator.latent_dim}-d features for "
                    f"{self.generator.num_classes} classes, the client needs {latent_dim}-d for {num_classes}"
                )
            return self.generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "fedgen", "generator"))
            generator = Generator(num_classes, latent_dim, self.noise_dim, self.hidden_dim)
        self._attach(generator)
        return generator

    def _attach(self, generator: Generator) -> None:
        self.generator = generator.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=self.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=self.lr_decay)

    # -- the round -------------------------------------------------------------------------------------
    def generator_extras(self) -> dict[str, Tensor]:
        """What every client receives: the generator's state (prefixed) and the label pool; ``{}`` before training."""
        if self.generator is None or self.trained_rounds == 0:
            return {}
        extras = {
            f"{GENERATOR_PREFIX}{k}": v.detach().to("cpu", copy=True) for k, v in self.generator.state_dict().items()
        }
        if self.labels is not None:
            extras[LABELS_KEY] = self.labels.clone()
        return extras

    @override
    def configure_train(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        """Every client receives the global state and, once trained, the generator (``extras``)."""
        extras = self.generator_extras()
        return [
            ServerMessage(round=round, client_id=cid, state=global_state, extras=dict(extras)) for cid in client_ids
        ]

    @override
    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """FedAvg, after checking that every update carries its label counts.

        Raises:
            ValueError: an update without label counts (use :class:`FedGenClient`).
        """
        for update in updates:
            if LABEL_COUNTS_KEY not in update.extras:
                raise ValueError(
                    f"FedGen: client {update.client_id} (round {update.round}) uploaded no label counts "
                    f"(extras['{LABEL_COUNTS_KEY}']); FedGen needs lit_fed.methods.FedGenClient"
                )
        return super().aggregate_train(round, updates, global_state)

    @override
    def server_steps(self) -> list[ServerStep]:
        """The generator's training, then the steps given."""
        return [self._training, *self.steps]

    def _heads(self, template: nn.Module, updates: Sequence[ClientUpdate]) -> tuple[nn.Module, list[StateDict]]:
        head, prefix = classifier_head(template)
        own = {k: v for k, v in head.state_dict().items()}
        params: list[StateDict] = []
        for update in updates:
            state = {k[len(prefix) + 1 :]: v for k, v in update.state.items() if k.startswith(f"{prefix}.")}
            missing = set(own) - set(state)
            if missing:
                raise KeyError(
                    f"FedGen: client {update.client_id}'s update lacks its classifier tensors {sorted(missing)} "
                    f"('{prefix}.*'); the head must be shared"
                )
            params.append({k: v.to(self.device) for k, v in state.items()})
        return copy.deepcopy(head).to(self.device).eval(), params

    def train_generator(
        self, head: nn.Module, head_states: Sequence[StateDict], label_counts: Tensor, round: int, seed: int = 0
    ) -> dict[str, float]:
        """Trains the generator for ``iterations`` steps on the clients' heads; returns the mean losses.

        Args:
            head: A module of the heads' architecture (evaluated with each state by ``functional_call``).
            head_states: One state dict of ``head`` per client.
            label_counts: ``(K, C)`` the clients' label counts.
            round: The round (selects the random stream).
            seed: The run seed.
        """
        assert self.generator is not None and self.optimizer is not None and self.scheduler is not None
        counts = label_counts.to(torch.float64)
        weights = label_weights(counts, self.count_smoothing).to(self.device)
        held = (counts.sum(dim=0) > 0).nonzero().flatten()
        self.labels = held if held.numel() else torch.arange(counts.shape[1])
        generator_rng = torch_generator(seed, "fedgen", round)
        self.generator.train()
        sums = {"fedgen_teacher_loss": 0.0, "fedgen_diversity_loss": 0.0}
        for _ in range(self.iterations):
            labels = self.labels[torch.randint(len(self.labels), (self.batch_size,), generator=generator_rng)]
            labels = labels.to(self.device)
            z, eps = self.generator(labels, generator=generator_rng)
            logits = [functional_call(head, state, (z,)) for state in head_states]
            teacher = teacher_loss(logits, labels, weights)
            diversity = diversity_loss(eps, z)
            loss = self.teacher_weight * teacher + self.diversity_weight * diversity
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums["fedgen_teacher_loss"] += float(teacher.detach())
            sums["fedgen_diversity_loss"] += float(diversity.detach())
        self.scheduler.step()
        self.generator.eval()
        self.trained_rounds += 1
        metrics = {k: v / self.iterations for k, v in sums.items()}
        metrics["fedgen_generator_lr"] = float(self.optimizer.param_groups[0]["lr"])
        return metrics

    def train_on_updates(self, updates: Sequence[ClientUpdate], context: ServerContext) -> None:
        """Trains the generator on the round's updates (their heads and label counts).

        Raises:
            ValueError: no client template in ``context`` (the head's architecture comes from it).
        """
        if not updates:
            return
        template = context.client_template
        if template is None:
            raise ValueError("FedGen needs ServerContext.client_template (the head's architecture)")
        seed = int(getattr(context.datamodule, "seed", 0))
        head, states = self._heads(template, updates)
        counts_of = [u.extras[LABEL_COUNTS_KEY] for u in updates]
        num_classes = int(getattr(template, "num_classes", 0)) or int(counts_of[0].numel())
        self.setup(num_classes, _head_input_size(head), seed)
        counts = torch.stack(counts_of).to(torch.float64)
        with torch.random.fork_rng(devices=[]):
            self.last_metrics = self.train_generator(head, states, counts, context.round, seed)
        context.log(self.last_metrics)

    # -- checkpoints -----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        if self.generator is None:
            return {"trained_rounds": self.trained_rounds}
        assert self.optimizer is not None and self.scheduler is not None
        return {
            "generator": {k: v.detach().to("cpu", copy=True) for k, v in self.generator.state_dict().items()},
            "num_classes": self.generator.num_classes,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "labels": None if self.labels is None else self.labels.clone(),
            "trained_rounds": self.trained_rounds,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained_rounds = int(state.get("trained_rounds", 0))
        if "generator" not in state:
            self.generator = self.optimizer = self.scheduler = None
            self.labels = None
            return
        self._attach(Generator.from_state(state["generator"], int(state["num_classes"])))
        assert self.optimizer is not None and self.scheduler is not None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.labels = None if state["labels"] is None else state["labels"].clone()

    def __repr__(self) -> str:
        return (
            f"FedGen(noise_dim={self.noise_dim}, hidden_dim={self.hidden_dim}, lr={self.lr}, "
            f"iterations={self.iterations}, batch_size={self.batch_size})"
        )


class _GeneratorTraining(ServerStep):
    """FedGen's server step: trains the strategy's generator on the round's updates; the global state is unchanged."""

    def __init__(self, strategy: FedGen) -> None:
        self.strategy = strategy

    @property
    def state_key(self) -> str:
        return "FedGen.generator_training"  # its state is the strategy's (checkpointed with it)

    @override
    def run(self, global_state: StateDict, updates: Sequence[ClientUpdate], context: ServerContext) -> StateDict:
        self.strategy.train_on_updates(updates, context)
        return global_state

    def __repr__(self) -> str:
        return "FedGen.generator_training"
