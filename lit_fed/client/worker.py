"""The client side of a federated run: one worker trains, evaluates and answers tasks for every client it hosts.

A :class:`ClientWorker` owns the client module (one instance, loaded with each client's state in turn), the clients'
data access, the per-client Trainer settings, the client-state store (personal state, off the device) and the
client-side hooks of the loop callbacks. It answers three kinds of instruction, each a typed payload:

* :meth:`ClientWorker.fit` — a :class:`~lit_fed.client.payloads.ServerMessage` to train on: restore the client's
  personal state, ``receive_global``, one Lightning ``Trainer.fit`` on its data, ``build_update``, the callbacks'
  ``client_update``, store its personal state; returns the :class:`~lit_fed.client.payloads.ClientUpdate`;
* :meth:`ClientWorker.evaluate` — messages describing each client's model (its personal state, the message's
  global state and extras, then its ``personalize``); returns mergeable metric states (a user module's own logged
  validation metrics, for a ``federate``-d module with a ``validation_step``);
* :meth:`ClientWorker.run` — a method's :class:`~lit_fed.client.tasks.ClientTask`.

The in-process runner drives one worker for all clients; a Flower node builds one from the same objects and drives
it for the client it hosts. Nothing here knows about rounds, strategies or backends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from lit_fed.client.module import FederationMixin
from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage, StateDict
from lit_fed.data.protocol import FederatedData
from lit_fed.loop.state_store import ClientStateStore, InMemoryStateStore
from lit_fed.metrics.evaluation import ClientEvaluation, accumulate_accuracy, new_accuracy, new_class_stats
from lit_fed.metrics.logged import LoggedMetrics, evaluation_mode, evaluation_trainer_kwargs, validate_logged
from lit_fed.utils.lightning import cached_callback_discovery, quiet_lightning, seed_torch
from lit_fed.utils.seeding import derive_seed

if TYPE_CHECKING:
    from lit_fed.client.tasks import ClientTask
    from lit_fed.loop.callbacks import LoopCallback
    from lit_fed.loop.settings import FederationSettings


def resolve_device(trainer_kwargs: dict[str, Any]) -> torch.device:
    """Where evaluation runs: CUDA when the Trainer settings allow it and a GPU exists, else the CPU."""
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(module: FederationMixin, personal: StateDict, message: ServerMessage | None = None) -> None:
    """Loads a model into ``module``: ``personal`` state, then the message's global state and extras.

    ``message=None`` loads only ``personal``. The module's :meth:`~FederationMixin.receive_evaluation` sees the
    message (e.g. to load personal tensors the server generated for the client).
    """
    module.load_personal_state(personal)
    if message is not None:
        module.load_state(message.state, what="global state")
        module.receive_evaluation(message)


class ClientWorker:
    """Trains, evaluates and answers tasks for the clients it hosts, with one client module.

    Args:
        module: The client module (a lit_fed client or a ``federate``-d LightningModule).
        data: The clients' data (:class:`~lit_fed.data.protocol.FederatedData`).
        settings: The run's settings (local epochs/steps, Trainer settings, seed, rounds).
        store: Where personal client state lives (in memory by default).
        callbacks: Loop callbacks whose client-side hooks (``client_dataloader``, ``client_update``) run here.

    Attributes:
        round: The server's round, as client-side hooks read it (set by :meth:`fit`).
        initial_personal: The module's personal state before any training (what a client without stored state
            starts from, and the personal part of the global model).

    Raises:
        TypeError: ``module`` is not a federated client, or ``data`` lacks the federated data API.
    """

    def __init__(
        self,
        module: L.LightningModule,
        data: FederatedData,
        settings: FederationSettings,
        *,
        store: ClientStateStore | None = None,
        callbacks: Sequence[LoopCallback] = (),
    ) -> None:
        if not isinstance(module, FederationMixin):
            raise TypeError(
                f"{type(module).__name__} is not a federated client; use a lit_fed client module or wrap your "
                "LightningModule with lit_fed.federate(module)"
            )
        if not isinstance(data, FederatedData):
            raise TypeError(
                f"{type(data).__name__} is not federated data: it needs num_clients, num_classes, setup(), "
                "client_train_dataloader(), client_test_dataloader(), client_num_train_samples() and "
                "global_test_dataloader() (see lit_fed.data.protocol.FederatedData)"
            )
        self.module = module
        self.data = data
        self.settings = settings
        self.store: ClientStateStore = store if store is not None else InMemoryStateStore()
        self.callbacks = list(callbacks)
        self.round = 0
        self.initial_personal: StateDict = {}
        self.eval_device = resolve_device(settings.trainer_kwargs)
        self._trainer_kwargs = settings.client_trainer_kwargs()
        self._ready = False
        self._personalized = False

    @property
    def seed(self) -> int:
        """The run seed."""
        return self.settings.seed

    @property
    def rounds(self) -> int:
        """The run's number of rounds."""
        return self.settings.rounds

    @property
    def num_clients(self) -> int:
        """Number of clients in the federation."""
        return int(self.data.num_clients)

    def setup(self) -> None:
        """Builds the data and captures the module's initial personal state (once; later calls do nothing)."""
        if self._ready:
            return
        self.data.setup("fit")
        self.initial_personal = self.module.personal_state()
        self._personalized = (
            bool(self.initial_personal) or type(self.module).personalize is not FederationMixin.personalize
        )
        self._ready = True

    def train_dataloader(self, client_id: int, round: int) -> Iterable[Any]:
        """``client_id``'s training batches in ``round``."""
        return self.data.client_train_dataloader(client_id, round)

    def personal_state_of(self, client_id: int) -> StateDict:
        """What ``client_id`` starts from: its stored personal state, else the initial one."""
        return self.store.get(client_id) or self.initial_personal

    # -- training ------------------------------------------------------------------------------------------
    def fit(self, message: ServerMessage, *, round: int | None = None) -> ClientUpdate:
        """Trains ``message.client_id`` on its data with a Lightning Trainer; returns its update.

        Args:
            message: What the server sent (its ``round`` keys the client's data order and fit seed).
            round: The server's round the client-side hooks read (``message.round`` by default; in asynchronous
                mode the round the client was dispatched in).
        """
        self.setup()
        cid, rnd = message.client_id, message.round
        self.round = rnd if round is None else round
        module = self.module
        module.load_personal_state(self.personal_state_of(cid))
        module.receive_global(message)
        seed_torch(derive_seed(self.seed, "fit", rnd, cid))
        dataloader = self.train_dataloader(cid, rnd)
        for callback in self.callbacks:
            dataloader = callback.client_dataloader(self, cid, rnd, dataloader)
        with quiet_lightning(), cached_callback_discovery():
            limits = module.fit_limits(self.settings.local_epochs, self.settings.local_steps)
            trainer = L.Trainer(**{**self._trainer_kwargs, **limits})
            trainer.fit(module, train_dataloaders=dataloader)
        update = module.build_update(num_samples=self.data.client_num_train_samples(cid))
        for callback in self.callbacks:
            update = callback.client_update(self, update, message)
        personal = module.personal_state()
        if personal:
            self.store.put(cid, personal, rnd)
        return update

    # -- a client's model --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _on_eval_device(self) -> Iterator[Any]:
        """The module on the evaluation device in eval mode; back on the CPU in its previous mode afterwards."""
        module = self.module
        was_training = module.training
        module.to(self.eval_device)
        module.eval()
        try:
            yield module
        finally:
            module.to("cpu")
            module.train(was_training)

    @contextlib.contextmanager
    def evaluation_model(self, message: ServerMessage) -> Iterator[Any]:
        """``message.client_id``'s model as evaluation sees it (before ``personalize``), on the evaluation device.

        That is its stored personal state (else the initial one), the message's global state, and whatever the
        module's ``receive_evaluation`` takes from the message.
        """
        self.setup()
        with self._on_eval_device() as module:
            load_model(module, self.personal_state_of(message.client_id), message)
            module.eval()
            yield module

    def evaluate(self, messages: Sequence[ServerMessage]) -> list[ClientEvaluation]:
        """Each message's client model (then its ``personalize``) on the client's own test split.

        Without personal state, local adaptation or per-client extras every client evaluates the global model,
        which is then loaded once. A federated user module with its own ``validation_step`` is evaluated by it,
        through ``Trainer.validate`` on each client's validation batches (:mod:`lit_fed.metrics.logged`).
        """
        self.setup()
        if self.evaluates_logged:
            return self._evaluate_logged(messages)
        num_classes = int(self.data.num_classes)
        results = []
        loaded: StateDict | None = None  # the global model, loaded once for the clients that all evaluate it
        with self._on_eval_device() as module:
            for message in messages:
                cid = message.client_id
                per_client = self._personalized or bool(message.extras)
                if per_client:
                    load_model(module, self.personal_state_of(cid), message)
                    loaded = None
                elif loaded is not message.state:
                    load_model(module, self.initial_personal, message)
                    loaded = message.state
                if per_client:
                    module.personalize(self.train_dataloader(cid, message.round))
                    module.eval()
                stats = new_class_stats(num_classes)
                accuracy = accumulate_accuracy(
                    new_accuracy(num_classes),
                    module.predict_logits,
                    self.data.client_test_dataloader(cid),
                    self.eval_device,
                    also=[stats],
                )
                results.append(ClientEvaluation(client_id=cid, accuracy=accuracy, class_stats=stats))
        return results

    @property
    def evaluates_logged(self) -> bool:
        """Whether clients are evaluated by the module's own ``validation_step`` (a federated user module's)."""
        return evaluation_mode(self.module, self.data) == "logged"

    def _evaluate_logged(self, messages: Sequence[ServerMessage]) -> list[ClientEvaluation]:
        """Each message's client model through ``Trainer.validate`` on the client's validation batches."""
        kwargs = evaluation_trainer_kwargs(self.settings.trainer_kwargs, self._trainer_kwargs)
        results = []
        with quiet_lightning(), cached_callback_discovery(), self._on_eval_device() as module:
            for message in messages:
                cid = message.client_id
                dataloader = self.data.client_test_dataloader(cid)
                if dataloader is None:  # a client without validation data
                    results.append(ClientEvaluation(client_id=cid, logged=LoggedMetrics(num_samples=0)))
                    continue
                load_model(module, self.personal_state_of(cid), message)
                logged = validate_logged(module, dataloader, kwargs)
                results.append(ClientEvaluation(client_id=cid, logged=logged))
        return results

    # -- method tasks ------------------------------------------------------------------------------------
    def run(self, task: ClientTask) -> Payload | None:
        """Answers a method's client task (:meth:`~lit_fed.client.tasks.ClientTask.run`)."""
        self.setup()
        return task.run(self)
