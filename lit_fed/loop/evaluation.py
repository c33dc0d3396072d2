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
from lit_fed.metrics.logged import evaluation_mode, evaluation_trainer_kwargs, pool_logged, validate_logged
from lit_fed.utils.lightning import cached_callback_discovery, quiet_lightning

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop


class RoundEvaluation:
    """Evaluates a global state for a loop; within a round, remembers its last result for the same state.

    A server step that evaluates a candidate state (before/after calibration) and the round's own evaluation of the
    same state then cost one evaluation, not two. Results are remembered only between the loop's :meth:`open_round`
    and :meth:`forget` (a round's server steps and its evaluation), so an evaluation outside a round always computes.

    A federated user module with its own ``validation_step`` is evaluated by it instead
    (:mod:`lit_fed.metrics.logged`): its logged metrics pooled over the clients' validation splits, under their own
    names, and those of the global model on the global validation batches as ``global_<name>``.

    Attributes:
        last_personalized: The pooled personalized accuracy of the last evaluation (per-client values included).
        logged_names: The names of the pooled metrics a user module logged so far.
    """

    def __init__(self, loop: FederatedLoop) -> None:
        self.loop = loop
        self.last_personalized: PersonalizedAccuracy | None = None
        self.logged_names: list[str] = []
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

    @property
    def mode(self) -> str:
        """How the loop's module is evaluated (:func:`~lit_fed.metrics.logged.evaluation_mode`)."""
        return evaluation_mode(self.loop.client, self.loop.datamodule)

    @property
    def summary_keys(self) -> list[str]:
        """The metrics a user module logged in evaluation (pooled over clients, and of the global model)."""
        return list(self.logged_names)

    def _global_logged(self, global_state: StateDict) -> dict[str, float]:
        """The global model's own ``validation_step`` metrics on the global validation batches, as ``global_*``."""
        loop = self.loop
        dataloader = loop.datamodule.global_test_dataloader()
        if dataloader is None:
            return {}
        module = loop.client
        settings = loop.settings
        kwargs = evaluation_trainer_kwargs(settings.trainer_kwargs, settings.client_trainer_kwargs())
        was_training = module.training
        module.to(loop.eval_device)
        try:
            module.load_personal_state(loop.initial_personal)
            module.load_state(global_state, what="global state")
            with quiet_lightning(), cached_callback_discovery():
                logged = validate_logged(module, dataloader, kwargs)
        finally:
            module.to("cpu")
            module.train(was_training)
        pooled = pool_logged([logged], module)
        metrics = {f"global_{k}": v for k, v in pooled.items() if not k.endswith(("_mean", "_std"))}
        self._remember_names(metrics)
        return metrics

    def _remember_names(self, metrics: dict[str, float]) -> None:
        self.logged_names += [k for k in metrics if not k.endswith(("_mean", "_std")) and k not in self.logged_names]

    def _global(self, global_state: StateDict) -> dict[str, float]:
        mode = self.mode
        if mode == "logged":
            return self._global_logged(global_state)
        if mode == "none":
            return {}
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
        mode = self.mode
        if mode == "none":
            return {}
        messages = loop.strategy.configure_evaluate(loop.round, range(loop.num_clients), global_state)
        evaluations = loop.runner.evaluate(loop, messages)
        if mode == "logged":
            logged = [e.logged for e in evaluations if e.logged is not None]
            pooled = pool_logged(logged, loop.client)
            self._remember_names(pooled)
            return pooled
        num_classes = int(loop.datamodule.num_classes)
        self.last_personalized = pool_client_metrics({e.client_id: e.accuracy for e in evaluations}, num_classes)
        metrics = self.last_personalized.as_metrics()
        if self._grouped:
            stats = new_class_stats(num_classes)
            for evaluation in evaluations:
                stats.merge_state(evaluation.class_stats)
            metrics.update(group_accuracy(stats, loop.shot_groups, "personal"))  # type: ignore[arg-type]
        return metrics
