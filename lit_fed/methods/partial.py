"""Partially personalized FL: FFGG, FedAlt and FedSim schedules with one server rule (seed paper).

Mishchenko, Islamov, Gorbunov & Horváth 2023, "Partially Personalized Federated Learning: Breaking the Curse of
Data Heterogeneity" (ICML 2023), Alg. 1 (FFGG).

The model splits into a shared part ``x`` (aggregated) and a personal part ``y_k`` per client (kept in the
client-state store across rounds); the split is the client module's ``personal=[...]`` selectors (default: the
classifier head, ``personal: [Head]``). The objective is ``min_x (1/n) Σ_k min_{y_k} f_k(x, y_k)``.

One method, three local schedules (the client's ``schedule=``), one server rule (:class:`PartialPFL`):

* **FFGG** (the paper's algorithm): each round a client first fine-tunes its private ``y_k`` for ``K_y`` steps
  (warm-started from its previous ``y_k``), then takes ``H`` steps on ``x`` (``H = 1``: one gradient
  ``g_k = ∇_x f_k(x, y_k)``) — :func:`ffgg_schedule`.
* **FedAlt** (Pillutla et al. 2022, "Federated Learning with Partial Model Personalization"): a pass on the
  personal part with the shared part frozen, then a pass on the shared part — :func:`fedalt_schedule`.
* **FedSim** (Pillutla et al. 2022): one joint pass over both parts — :func:`fedsim_schedule`.

Server rule (:class:`PartialPFL`): ``x ← x + γ · agg({x_k − x})`` over the shared keys, ``agg`` the mean or a robust
rule (:mod:`lit_fed.server.robust`) in Byzantine mode. With plain local SGD at rate η and ``H = 1``,
``x_k − x = −η g_k``, so for the mean (and for the positively homogeneous robust rules: median, trimmed mean,
Krum) the step is ``x − γ·η·agg({g_k})``: the paper's server step size is ``γ_paper = γ·η``, i.e. choose
``γ = γ_paper / η``. ``γ = 1`` (the default) is FedAvg-like averaging of the clients' models. Centered clipping is not
homogeneous: a radius τ on deltas is a radius τ/η on gradients.

In asynchronous mode (:mod:`lit_fed.loop.asynchronous`) each update is applied alone as it arrives,
``x ← x + γ · s(τ) · (x_k − x_start)`` with the staleness discount ``s(τ) = 1/(1+τ)`` [design; the polynomial
discount of FedAsync, Xie et al. 2019] — :meth:`PartialPFL.staleness_update`.

Example (YAML, FFGG with K_y = 5, H = 1)::

    model:
      init_args:
        personal: [{class_path: lit_fed.Head}]
        schedule:
          class_path: lit_fed.LocalSchedule
          init_args:
            phases:
              - {class_path: lit_fed.Phase, init_args: {train: personal, steps: 5}}
              - {class_path: lit_fed.Phase, init_args: {train: shared, steps: 1}}
    trainer:
      server: {class_path: lit_fed.methods.PartialPFL, init_args: {server_lr: 1.0}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, StateDict
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.server.aggregation import Aggregator, staleness_step
from lit_fed.server.fedavg import FedAvg


def ffgg_schedule(personal_steps: int = 5, shared_steps: int = 1) -> LocalSchedule:
    """FFGG (Mishchenko et al. 2023): ``K_y`` optimizer steps on the personal part, then ``H`` on the shared part.

    Args:
        personal_steps: ``K_y``, fine-tuning steps of the private ``y_k`` (warm start from the stored ``y_k``).
        shared_steps: ``H``, steps on the shared ``x`` (1: a single stochastic gradient, the paper's setting).
    """
    return LocalSchedule([Phase("personal", steps=personal_steps), Phase("shared", steps=shared_steps)])


def fedalt_schedule(personal_epochs: int | None = None, shared_epochs: int | None = None) -> LocalSchedule:
    """FedAlt (Pillutla et al. 2022): a personal-only pass, then a shared-only pass (epochs).

    Args:
        personal_epochs: Epochs of the personal pass (``None``: the loop's ``local_epochs``).
        shared_epochs: Epochs of the shared pass (``None``: the loop's ``local_epochs``).
    """
    return LocalSchedule([Phase("personal", epochs=personal_epochs), Phase("shared", epochs=shared_epochs)])


def fedsim_schedule(epochs: int | None = None) -> LocalSchedule:
    """FedSim (Pillutla et al. 2022): one joint pass over the personal and shared parts (epochs).

    Args:
        epochs: Epochs of the joint pass (``None``: the loop's ``local_epochs``).
    """
    return LocalSchedule([Phase("all", epochs=epochs)])


PARTIAL_SCHEDULES = {"ffgg": ffgg_schedule, "fedalt": fedalt_schedule, "fedsim": fedsim_schedule}
"""The three local schedules of partial personalization, by name."""


def partial_schedule(variant: str, **kwargs: Any) -> LocalSchedule:
    """The local schedule of a partial-PFL ``variant`` (``"ffgg"``, ``"fedalt"`` or ``"fedsim"``).

    Raises:
        ValueError: unknown variant.
    """
    try:
        factory = PARTIAL_SCHEDULES[variant.lower()]
    except KeyError:
        choices = sorted(PARTIAL_SCHEDULES)
        raise ValueError(f"unknown partial-PFL variant {variant!r}; choose one of {choices}") from None
    return factory(**kwargs)


class PartialPFL(FedAvg):
    """Server of partially personalized FL: ``x ← x + γ · agg({x_k − x})`` on the shared part.

    Aggregation goes through ``aggregator`` on the clients' states with ``reference = x``; every rule in lit_fed is
    translation-equivariant, so this equals aggregating the deltas ``x_k − x``. The personal parts never reach
    the server. See the module docstring for the relation to the paper's ``x ← x − γ_paper · agg(g_k)``.

    Args:
        server_lr: γ > 0, the server step on the aggregated delta (1: FedAvg-like averaging of models).
        aggregator: The rule ``agg``: the mean by default, or a robust rule (``CenteredClipping``,
            ``CoordinateMedian``, ``TrimmedMean``, ``Krum``) in Byzantine mode.
        weighted: Weight the mean by sample counts. Default false: the paper's objective weighs clients equally,
            ``(1/n) Σ_k f_k`` [paper]. Robust rules ignore weights either way.

    Raises:
        ValueError: ``server_lr ≤ 0``.
    """

    supports_asynchronous: ClassVar[bool] = True

    def __init__(self, server_lr: float = 1.0, aggregator: Aggregator | None = None, weighted: bool = False) -> None:
        super().__init__(aggregator=aggregator, weighted=weighted)
        if not server_lr > 0:
            raise ValueError(f"PartialPFL: server_lr (gamma) must be > 0, got {server_lr}")
        self.server_lr = server_lr

    @override
    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        """``x + γ · (agg({x_k}) − x)`` on floating-point keys; integer keys take the aggregate's value."""
        merged = self.aggregator([u.state for u in updates], self.weights(updates), reference=global_state)
        return staleness_step(global_state, merged, global_state, self.server_lr)

    @override
    def staleness_update(
        self,
        global_state: StateDict,
        update: ClientUpdate,
        start_state: StateDict,
        staleness_weight: float,
    ) -> StateDict:
        """Asynchronous step for one (possibly stale) update: ``x + γ · s(τ) · (x_k − x_start)``.

        Args:
            global_state: The current ``x``.
            update: The arriving client's update (``x_k``).
            start_state: ``x_start``, the global state the client started from.
            staleness_weight: ``s(τ)``, e.g. ``1/(1+τ)``.
        """
        return staleness_step(global_state, update.state, start_state, self.server_lr * staleness_weight)

    def __repr__(self) -> str:
        return f"PartialPFL(server_lr={self.server_lr}, aggregator={self.aggregator!r}, weighted={self.weighted})"
