"""The ``flower-simulation`` backend: a configured loop run on Flower's Ray-based simulation engine.

The server side (:func:`~lit_fed.flower.server_app.make_server_app`) runs the loop itself in this process — the
same strategy, screening, aggregation, server-side training, global evaluation, loggers and round checkpoints as
the in-process backend. Each client is a Flower SuperNode of the simulation (``partition-id`` = client id), whose
ClientApp (:func:`~lit_fed.flower.client_app.make_client_app`) runs in a Ray actor: the node's
:class:`~lit_fed.client.worker.ClientWorker` (client module, data, settings, callbacks) is put in Ray's object store
once and built once per actor.
How many clients train at once follows from Ray's resources: ``ray_init_args["num_cpus"]`` (all cores by default)
divided by ``client_resources["num_cpus"]``, likewise for GPUs.

Personal state (and the loop callbacks' client-side state, such as error-feedback residuals) stays on the nodes, in
a client-state directory (``<run_dir>/node_states`` by default) versioned by round, so a run resumed from a round
checkpoint continues exactly as under the sequential backend (each node forgets, when the run begins, the versions
of its client written at or after the run's first round: all of them for a fresh run).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from typing_extensions import override

from lit_fed.client.worker import ClientWorker
from lit_fed.flower.client_app import CALLBACK_PREFIX, make_client_app
from lit_fed.flower.node_state import DirectoryState
from lit_fed.flower.server_app import make_server_app
from lit_fed.loop.backend import Backend
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.federated_loop import FederatedLoop, FederatedResult
from lit_fed.loop.runner import SequentialRunner

log = logging.getLogger("lit_fed")


def worker_spec(loop: FederatedLoop) -> dict[str, Any]:
    """What a node needs to build ``loop``'s client side: module, data, settings and the loop callbacks."""
    return {"module": loop.client, "data": loop.datamodule, "settings": loop.settings, "callbacks": loop.callbacks}


def build_worker(spec: dict[str, Any]) -> ClientWorker:
    """A node's worker from :func:`worker_spec`."""
    return ClientWorker(spec["module"], spec["data"], spec["settings"], callbacks=spec["callbacks"])


@dataclass
class _ObjectStoreWorker:
    """Builds the node's worker from its spec in Ray's object store (small to pickle with every message)."""

    ref: Any

    def __call__(self, context: Context) -> ClientWorker:
        import ray

        return build_worker(ray.get(self.ref))


def _stateful_client_callbacks(callbacks: list[LoopCallback]) -> list[str]:
    """Callbacks with client-side hooks and checkpointed state that do not expose it per client (``client_state``)."""
    names = []
    for callback in callbacks:
        cls = type(callback)
        client_side = (
            cls.client_update is not LoopCallback.client_update
            or cls.client_dataloader is not LoopCallback.client_dataloader
        )
        per_client = cls.client_state is not LoopCallback.client_state
        if client_side and cls.state_dict is not LoopCallback.state_dict and not per_client:
            names.append(cls.__name__)
    return names


class FlowerSimulation(Backend):
    """Runs the loop on Flower's simulation engine (Ray): one SuperNode per client, clients trained in parallel.

    Args:
        client_resources: Ray resources per ClientApp, e.g. ``{"num_cpus": 1, "num_gpus": 0.25}`` (four clients
            share a GPU); with ``num_cpus: 1`` on a 2-core machine two clients train at once.
        ray_init_args: Arguments of ``ray.init`` (``num_cpus``, ``num_gpus``, ``object_store_memory``, ...);
            ``num_cpus`` defaults to the machine's cores, the dashboard is off and Ray logs only errors.
        state_dir: The nodes' client-state directory (``<run_dir>/node_states`` by default); ``""``: Flower's
            context state (lost when the run ends, so a resumed run would restart personal state).
        timeout: Seconds to wait for a round's replies (``None``: no limit).
        verbose: Flower's and Ray's debug logs.
    """

    def __init__(
        self,
        client_resources: dict[str, float] | None = None,
        ray_init_args: dict[str, Any] | None = None,
        state_dir: str | None = None,
        timeout: float | None = None,
        verbose: bool = False,
    ) -> None:
        self.client_resources = dict(client_resources) if client_resources else {"num_cpus": 1, "num_gpus": 0.0}
        for key, value in self.client_resources.items():
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"FlowerSimulation: client_resources['{key}'] must be a number >= 0, got {value!r}")
        self.ray_init_args = dict(ray_init_args or {})
        self.state_dir = state_dir
        self.timeout = timeout
        self.verbose = verbose

    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        args = {"include_dashboard": False, "num_cpus": os.cpu_count() or 1, **self.ray_init_args}
        if not self.verbose:
            args.setdefault("logging_level", logging.ERROR)
            args.setdefault("log_to_driver", False)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)

    def state_dir_of(self, loop: FederatedLoop) -> Path | None:
        """The nodes' client-state directory for ``loop`` (``None``: Flower's context state)."""
        if self.state_dir is None:
            return loop.run_dir / "node_states"
        return Path(self.state_dir) if self.state_dir else None

    @override
    def load_client_states(self, loop: FederatedLoop, before_round: int) -> None:
        directory = self.state_dir_of(loop)
        if directory is None:
            raise ValueError(
                "FlowerSimulation(state_dir='') kept personal state in Flower's context state, which ends with the "
                "run; evaluating a checkpoint needs the client-state directory"
            )
        if not isinstance(loop.runner, SequentialRunner):
            raise TypeError("evaluating a Flower run's checkpoint needs the loop's in-process runner")
        store = DirectoryState(directory)
        for client_id in range(loop.num_clients):
            saved = store.load(client_id, before_round) or {}
            personal = {k: v for k, v in saved.items() if not k.startswith(CALLBACK_PREFIX)}
            if personal:
                loop.runner.worker.store.put(client_id, personal, before_round - 1)

    @override
    def run(self, loop: FederatedLoop, resume_from: str | Path | None = None) -> FederatedResult:
        import ray
        from flwr.simulation import run_simulation

        stateful = _stateful_client_callbacks(loop.callbacks)
        if stateful:
            log.warning(
                "flower-simulation: loop callbacks %s keep client-side state without exposing it per client "
                "(LoopCallback.client_state); on Flower nodes that state is neither shared between Ray actors nor "
                "checkpointed",
                stateful,
            )
        num_clients = int(loop.datamodule.num_clients)
        state_dir = self.state_dir_of(loop)
        results: list[FederatedResult] = []
        flwr_logger = logging.getLogger("flwr")
        flwr_level = flwr_logger.level
        if not self.verbose:
            flwr_logger.setLevel(logging.ERROR)  # Flower's per-round INFO lines and the run_simulation deprecation note
        self._init_ray()
        try:
            client_app = make_client_app(_ObjectStoreWorker(ray.put(worker_spec(loop))), state_dir=state_dir)
            server_app = make_server_app(
                lambda context: loop, resume_from=resume_from, timeout=self.timeout, on_result=results.append
            )
            backend_config = {
                "client_resources": self.client_resources,
                "init_args": {k: v for k, v in self.ray_init_args.items() if k != "runtime_env"},
            }
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*run_simulation.*deprecated.*")
                run_simulation(
                    server_app=server_app,
                    client_app=client_app,
                    num_supernodes=num_clients,
                    backend_config=backend_config,  # type: ignore[arg-type]
                    verbose_logging=self.verbose,
                )
        finally:
            if ray.is_initialized():
                ray.shutdown()
            flwr_logger.setLevel(flwr_level)
        if not results:
            raise RuntimeError("the Flower simulation ended without a result; see the errors logged above")
        return results[0]
