"""The round's evaluation: the global model on the global test set, every client's model on its own test split.

Global accuracy runs on the server's copy of the client module (the shared global state with the initial personal
state). Personalized accuracy is the runner's: each client's model as the strategy's ``configure_evaluate``
describes it, evaluated where the client lives; the clients' metric states are pooled exactly (merged
torchmetrics states), with mean, std and 10th percentile across clients, and per shot group on long-tailed data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_fed.client.payloads import StateDict
from lit_fed.metrics.evaluation import (
    PersonalizedAccuracy,
    accumulate_accuracy,
    group_accuracy,
    new_accuracy,
    new_class_stats,
    pool_client_metrics,
)

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop


class RoundEvaluation:
    """Evaluates a global state for a loop; within a round, remembers its last result for the same state.

    A server step that evaluates a candidate state (before/after calibration) and the round's own evaluation of the
    same state then cost one evaluation, not two. Results are remembered only between the loop's :meth:`open_round`
    and :meth:`forget` (a round's server steps and its evaluation), so an evaluation outside a round always computes.

    Attributes:
        last_personalized: The pooled personalized accuracy of the last evaluation (per-client values included).
    """

    def __init__(self, loop: FederatedLoop) -> None:
        self.loop = loop
        self.last_personalized: PersonalizedAccuracy | None = None
        self._memo: tuple[int, StateDict, dict[str, float]] | None = None
        self._remembering = False

    def __call__(self, global_state: StateDict) -> dict[str, float]:
        """Global and personalized accuracy of ``global_state`` after the loop's current round."""
        loop = self.loop
        if self._memo is not None and self._memo[0] == loop.round and self._memo[1] is global_state:
            return dict(self._memo[2])
        metrics = self._global(global_state)
        if loop.settings.personalized_eval:
            metrics.update(self._personalized(global_state))
        if self._remembering:
            self._memo = (loop.round, global_state, metrics)
        return dict(metrics)

    def open_round(self) -> None:
        """From now until :meth:`forget`, a repeated evaluation of the same state reuses the result."""
        self._memo, self._remembering = None, True

    def forget(self) -> None:
        """Drops the remembered result and stops remembering (the round is over: client state may change)."""
        self._memo, self._remembering = None, False

    @property
    def _grouped(self) -> bool:
        groups = self.loop.shot_groups
        return groups is not None and len(groups) > 1

    def _global(self, global_state: StateDict) -> dict[str, float]:
        loop = self.loop
        module, device = loop.client, loop.eval_device
        num_classes = int(loop.datamodule.num_classes)
        was_training = module.training
        module.to(device)
        module.eval()
        try:
            module.load_personal_state(loop.initial_personal)
            module.load_state(global_state, what="global state")
            stats = new_class_stats(num_classes)
            accuracy = accumulate_accuracy(
                new_accuracy(num_classes),
                module.global_logits,
                loop.datamodule.global_test_dataloader(),
                device,
                also=[stats],
            )
        finally:
            module.to("cpu")
            module.train(was_training)
        metrics = {"global_acc": float(accuracy.compute())}
        if self._grouped:
            metrics.update(group_accuracy(stats, loop.shot_groups, "global"))  # type: ignore[arg-type]
        return metrics

    def _personalized(self, global_state: StateDict) -> dict[str, float]:
        loop = self.loop
        num_classes = int(loop.datamodule.num_classes)
        messages = loop.strategy.configure_evaluate(loop.round, range(loop.num_clients), global_state)
        evaluations = loop.runner.evaluate(loop, messages)
        self.last_personalized = pool_client_metrics({e.client_id: e.accuracy for e in evaluations}, num_classes)
        metrics = self.last_personalized.as_metrics()
        if self._grouped:
            stats = new_class_stats(num_classes)
            for evaluation in evaluations:
                stats.merge_state(evaluation.class_stats)
            metrics.update(group_accuracy(stats, loop.shot_groups, "personal"))  # type: ignore[arg-type]
        return metrics
