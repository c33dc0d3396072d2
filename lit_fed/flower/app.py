"""Flower apps built from ``lit-fed`` YAML configs: any method the CLI runs, deployed on SuperLink + SuperNodes.

The Flower run config names the lit-fed configs and CLI overrides; the ServerApp and every ClientApp parse them
with the ``lit-fed`` CLI's own parser (same seed → same initial model, partition and per-client data), so a
deployment runs exactly what ``lit-fed fit --config ...`` runs in one process::

    [tool.flwr.app.config]               # the Flower App's pyproject.toml
    config = "configs/synthetic.yaml,configs/tinycnn.yaml"   # comma-separated; relative to the app directory
    overrides = "--trainer.rounds=2"                        # extra lit-fed CLI arguments (shell syntax)
    run-dir = "runs/flower"                                 # the server's run directory (logs, checkpoints)
    resume-from = ""                                        # a round checkpoint to resume from

Each SuperNode hosts client ``partition-id`` (node config) and keeps its personal state in its node config's
``state-dir`` (or in Flower's context state when unset).
"""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path
from typing import Any

from flwr.app import UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from lit_fed.client.worker import ClientWorker
from lit_fed.flower.client_app import make_client_app
from lit_fed.flower.server_app import make_server_app
from lit_fed.loop.federated_loop import FederatedLoop


def cli_args(run_config: UserConfig, base_dir: str | os.PathLike[str] = ".") -> list[str]:
    """The ``lit-fed`` CLI arguments a Flower run config describes (config paths resolved against ``base_dir``)."""
    args: list[str] = []
    for name in str(run_config.get("config", "")).split(","):
        if name.strip():
            path = Path(name.strip())
            args += ["--config", str(path if path.is_absolute() else Path(base_dir) / path)]
    args += shlex.split(str(run_config.get("overrides", "")))
    if run_config.get("run-dir"):
        args += ["--trainer.run_dir", str(run_config["run-dir"])]
    return args


def _cli(run_config: UserConfig, base_dir: str | os.PathLike[str]) -> Any:
    from lit_fed.cli import build_cli

    with warnings.catch_warnings():  # Flower's own process arguments are in sys.argv; ours are passed explicitly
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return build_cli(args=cli_args(run_config, base_dir), run=False)


def cli_loop(run_config: UserConfig, base_dir: str | os.PathLike[str] = ".") -> FederatedLoop:
    """The loop ``lit-fed fit`` would run for the configs and overrides in ``run_config`` (the server's side)."""
    cli = _cli(run_config, base_dir)
    return cli.trainer.build_loop(cli.model, cli.datamodule)


def cli_worker(run_config: UserConfig, base_dir: str | os.PathLike[str] = ".") -> ClientWorker:
    """The client worker of the configs and overrides in ``run_config`` (a node's side; no loop is built)."""
    cli = _cli(run_config, base_dir)
    return ClientWorker(cli.model, cli.datamodule, cli.trainer.settings, callbacks=cli.trainer.round_callbacks)


def config_server_app(base_dir: str | os.PathLike[str] = ".", *, timeout: float | None = None) -> ServerApp:
    """A ServerApp running the loop of the run config's lit-fed configs (see the module docstring)."""
    return make_server_app(lambda context: cli_loop(context.run_config, base_dir), timeout=timeout)


def config_client_app(base_dir: str | os.PathLike[str] = ".") -> ClientApp:
    """A ClientApp training the client of the run config's lit-fed configs (``partition-id`` = client id)."""
    return make_client_app(lambda context: cli_worker(context.run_config, base_dir))
