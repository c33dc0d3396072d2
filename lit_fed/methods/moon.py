"""MOON: model-contrastive federated learning.

Li, He and Song, "Model-Contrastive Federated Learning" (CVPR 2021). The network is an encoder, a projection head
and a classifier on the projection (Sec. 3.2; the authors' ``ModelFedCon``: ``l1 = Linear(d, d)``, ReLU,
``l2 = Linear(d, 256)``, ``l3 = Linear(256, C)``). Locally each client minimizes ``CE + μ ℓ_con`` (Eq. 3–4), where
``ℓ_con`` pulls the projection ``z`` towards the received global model's ``z_glob`` and away from the client's own
previous model's ``z_prev``. The server is FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.payloads import ServerMessage, StateDict
from lit_fed.client.teacher import FrozenModule, load_client_keys
from lit_fed.losses.contrastive import moon_contrastive

__all__ = ["MOONClient", "ProjectedEncoder"]

PREVIOUS_PREFIX = "moon_prev/"
"""Namespace of the previous local model's tensors in the client's personal state."""


class ProjectedEncoder(nn.Module):
    """``x ↦ projection(backbone's pre-logits embedding)``: MOON's representation ``z`` (the authors' ``pro1``).

    Holds references to a client's ``backbone`` and ``projection`` (not copies), so its state-dict keys are the
    client's own (``backbone.*``, ``projection.*``).
    """

    def __init__(self, backbone: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True))


class MOONClient(FederatedClient):
    r"""MOON client (Li et al. 2021, Eq. 3–4) [code]: ``L = CE + μ ℓ_con``.

    **Model.** The backbone's own classifier is removed (``reset_classifier(0)``: it would never train yet be
    uploaded every round) and replaced by MOON's head: ``projection = Linear(d, d) → ReLU → Linear(d, 256)`` on the
    backbone's ``d``-dimensional embedding, and ``classifier = Linear(256, C)`` on the projection ``z``. So
    :meth:`embed` returns ``z`` and the personalized *and* global predictions are ``classifier(z)`` — the authors'
    model, whose classifier also sits on the projection. Every part is shared (FedAvg) by default; to keep MOON's
    classifier personal use ``Modules(["classifier"])`` (``Head()`` selects the backbone's removed classifier).

    **Loss.** ``ℓ_con = −log(e^{cos(z, z_glob)/τ} / (e^{cos(z, z_glob)/τ} + e^{cos(z, z_prev)/τ}))`` averaged over the
    batch (:func:`lit_fed.losses.moon_contrastive`), logged as ``train_moon_con`` (already multiplied by μ):

    * ``z_glob`` — a frozen copy (no gradient, eval mode) of the global encoder + projection received this round
      (:meth:`receive_global`), or set by hand with :meth:`set_global_model`; if none is set when a fit starts,
      the model's own weights at that moment [design, = the received model in federation];
    * ``z_prev`` — a frozen copy of *this client's own* encoder + projection as it was after its previous round of
      local training. It is per-client persistent state: :meth:`personal_state` adds it under the namespace
      ``moon_prev/`` (CPU tensors, in the loop's client-state store, so it survives checkpoints and resumes), and
      :meth:`load_personal_state` restores it. In a client's first round there is none and ``ℓ_con = 0`` (the
      authors' code starts with an empty model pool: a one-column cross-entropy). By hand:
      :meth:`set_previous_model`.

    Defaults: μ 1 (the paper's tuned μ: 5 for CIFAR-10, 1 otherwise), τ 0.5, projection 256 (the authors'
    ``out_dim``), one previous model (``model_buffer_size`` 1).

    Args:
        backbone: A model with timm's feature/head contract and ``reset_classifier``; its classifier is removed.
        mu: Weight μ ≥ 0 of ``ℓ_con``.
        tau: Temperature τ > 0.
        projection_dim: Output size of the projection head (the classifier's input).
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule).

    Raises:
        ValueError: bad ``mu``/``tau``/``projection_dim`` or a backbone without a usable embedding size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mu: float = 1.0,
        tau: float = 0.5,
        projection_dim: int = 256,
        **kwargs: Any,
    ) -> None:
        if mu < 0:
            raise ValueError(f"MOONClient: mu must be >= 0, got {mu}")
        if tau <= 0:
            raise ValueError(f"MOONClient: tau must be > 0, got {tau}")
        if projection_dim < 1:
            raise ValueError(f"MOONClient: projection_dim must be >= 1, got {projection_dim}")
        super().__init__(backbone, **kwargs)
        width = getattr(backbone, "num_features", None) or getattr(backbone.get_classifier(), "in_features", None)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"MOONClient: cannot tell the embedding size of {type(backbone).__name__}")
        if self.num_classes < 1:
            raise ValueError("MOONClient: the backbone must have a classifier (num_classes >= 1) to size MOON's")
        if not callable(getattr(backbone, "reset_classifier", None)):
            raise TypeError(f"MOONClient: {type(backbone).__name__} lacks reset_classifier()")
        backbone.reset_classifier(0)
        self.mu = mu
        self.tau = tau
        self.projection_dim = projection_dim
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection_dim))
        self.classifier = nn.Linear(projection_dim, self.num_classes)
        self._global: FrozenModule | None = None
        self._previous: FrozenModule | None = None
        self._previous_state: StateDict | None = None
        self._previous_loaded = False
        self._trained = False

    # -- model -------------------------------------------------------------------------------------------
    def encoder(self) -> ProjectedEncoder:
        """A view ``x ↦ z`` over this client's backbone and projection (shares their tensors)."""
        return ProjectedEncoder(self.backbone, self.projection)

    @override
    def embed(self, x: Tensor) -> Tensor:
        """The projection ``z`` (MOON's representation), ``(B, projection_dim)``."""
        return self.encoder()(x)

    @override
    def classify(self, embedding: Tensor) -> Tensor:
        """MOON's classifier on the projection."""
        return self.classifier(embedding)

    def encoder_state(self) -> StateDict:
        """Detached CPU copies of the encoder + projection tensors, keyed like the client's state dict."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.encoder().state_dict().items()}

    # -- the frozen global and previous models -----------------------------------------------------------
    def _frozen_from(self, holder: FrozenModule | None, source: nn.Module | Mapping[str, Tensor]) -> FrozenModule:
        if isinstance(source, MOONClient):
            source = source.encoder()
        if isinstance(source, ProjectedEncoder) or isinstance(source, Mapping):
            if holder is None:
                holder = FrozenModule(self.encoder())
            if isinstance(source, Mapping):
                holder.load_from(self.encoder())  # keys the mapping lacks keep this client's values
                load_client_keys(holder.module, source, ["backbone", "projection"])
            else:
                holder.load_from(source)
            return holder
        return FrozenModule(source)  # any module mapping inputs to (B, projection_dim)

    def set_global_model(self, source: nn.Module | Mapping[str, Tensor] | None = None) -> None:
        """Sets the frozen global model that gives ``z_glob``.

        Args:
            source: ``None`` — this client's current encoder + projection; a ``MOONClient`` or
                :class:`ProjectedEncoder` — its weights; a mapping — a state dict with this client's keys
                (``backbone.*``, ``projection.*``; others ignored); any other module — a frozen copy of it, called
                as ``z_glob = module(x)``.
        """
        self._global = self._frozen_from(self._global, self.encoder() if source is None else source)

    def set_previous_model(self, source: nn.Module | Mapping[str, Tensor] | None) -> None:
        """Sets (or with ``None`` clears) the frozen previous local model that gives ``z_prev``.

        Args:
            source: As for :meth:`set_global_model`; ``None`` clears it (``ℓ_con = 0``).
        """
        if source is None:
            self._previous, self._previous_state, self._previous_loaded = None, None, False
            return
        self._previous = self._frozen_from(self._previous, source)
        self._previous_state, self._previous_loaded = None, True

    @property
    def global_model(self) -> nn.Module | None:
        """The frozen global encoder + projection, or ``None``."""
        return None if self._global is None else self._global.module

    @property
    def previous_model(self) -> nn.Module | None:
        """The frozen previous local encoder + projection, or ``None`` (first round)."""
        self._materialize_previous()
        return None if self._previous is None or not self._previous_loaded else self._previous.module

    def _materialize_previous(self) -> None:
        """Loads the stored previous state into the frozen copy (lazily: evaluation never needs it)."""
        if self._previous_state is not None and not self._previous_loaded:
            if self._previous is None:
                self._previous = FrozenModule(self.encoder())
            try:
                self._previous.load_from(self._previous_state)
            except RuntimeError as err:
                raise ValueError(
                    f"client {self.client_id}, round {self.current_round}: the stored previous MOON model does not "
                    f"match the encoder: {err}"
                ) from err
            self._previous_loaded = True

    # -- round hooks -------------------------------------------------------------------------------------
    @override
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the global state and freezes a copy of the received encoder + projection for ``z_glob``."""
        super().receive_global(message)
        self.set_global_model()

    @override
    def personal_state(self) -> StateDict:
        """Personal parameters plus the previous local model under ``moon_prev/`` (after a fit: this fit's model)."""
        state = super().personal_state()
        previous: Mapping[str, Tensor] | None
        if self._trained:
            previous = self.encoder_state()
        elif self._previous_state is not None:
            previous = self._previous_state
        elif self._previous is not None and self._previous_loaded:
            previous = self._previous.state_dict()
        else:
            previous = None
        if previous is not None:
            state.update({f"{PREVIOUS_PREFIX}{k}": v.detach().to("cpu", copy=True) for k, v in previous.items()})
        return state

    @override
    def load_personal_state(self, state: StateDict) -> None:
        """Restores personal parameters and the previous local model (none if ``state`` has no ``moon_prev/``)."""
        previous = {k[len(PREVIOUS_PREFIX) :]: v for k, v in state.items() if k.startswith(PREVIOUS_PREFIX)}
        super().load_personal_state({k: v for k, v in state.items() if not k.startswith(PREVIOUS_PREFIX)})
        self._previous_state = previous or None
        self._previous_loaded = False
        self._trained = False

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self._global is None:
            self.set_global_model()
        self._materialize_previous()

    @override
    def on_train_end(self) -> None:
        super().on_train_end()
        self._trained = True  # this model is the client's "previous model" for its next round

    @override
    def on_fit_end(self) -> None:
        super().on_fit_end()
        for holder in (self._global, self._previous):
            if holder is not None:
                holder.cpu()

    # -- loss --------------------------------------------------------------------------------------------
    def contrastive_loss(self, x: Tensor, z: Tensor) -> Tensor:
        """``ℓ_con`` of the batch (0 without a previous model), not yet multiplied by μ."""
        previous = self.previous_model
        if previous is None:
            return moon_contrastive(z, z, None, self.tau)
        if self._global is None:
            self.set_global_model()
        reference = next(self.parameters())
        z_glob = self._global.match(reference)(x)  # type: ignore[union-attr]
        z_prev = self._previous.match(reference)(x)  # type: ignore[union-attr]
        return moon_contrastive(z, z_glob, z_prev, self.tau)

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """Regularizers plus ``moon_con = μ ℓ_con``."""
        extras = super().extra_losses(batch, output)
        if output is None or output.embedding is None:
            raise ValueError("MOONClient.extra_losses needs the step output with its embedding z")
        extras["moon_con"] = self.mu * self.contrastive_loss(batch[0], output.embedding)
        return extras
