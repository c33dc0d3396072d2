"""The ``lit-fed`` LightningCLI: parser classes, imported by :mod:`lit_fed.cli` only when a command needs them.

Kept apart from :mod:`lit_fed.cli` so that the entry point starts without Lightning (a cached ``--help`` is
printed without importing it, :mod:`lit_fed.cli_help`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lit_fed.client.module import FederatedClient
from lit_fed.data.datamodule import FederatedDataModule
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.trainer import FederatedTrainer

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop


class SaveConfig(LoopCallback):
    """Writes the run's resolved config once the run has started training (after the run-directory lock).

    A fresh run writes ``config.yaml``; a resumed run keeps the original and writes its own next to it
    (``config.resumed_at_round_<r>.yaml``, ``r`` the first round it runs, 1-based).
    """

    def __init__(self, cli: FederatedCLI) -> None:
        self.cli = cli

    @override
    def on_run_start(self, loop: FederatedLoop, start_round: int) -> None:
        name = "config.yaml" if start_round == 0 else f"config.resumed_at_round_{start_round + 1}.yaml"
        parser = self.cli._parser(self.cli.subcommand)
        parser.save(self.cli.config[self.cli.subcommand], loop.run_dir / name, skip_none=False, overwrite=True)


class FederatedCLI(LightningCLI):
    """LightningCLI with one seed for partitions, sampling and local training; ``fit``, ``validate``, ``test``."""

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``test`` (a round checkpoint holds many personalized models: no ``predict``)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "trainer.seed")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    @override
    def _parse_ckpt_path(self) -> None:
        """Checks ``--ckpt_path`` is a readable round checkpoint (a round checkpoint holds no module hparams)."""
        ckpt_path = self.config.get(str(self.config.get("subcommand")), {}).get("ckpt_path")
        if ckpt_path:
            from lit_fed.loop.checkpoint import load_checkpoint

            load_checkpoint(ckpt_path)  # one clear CheckpointError for an empty, corrupt or foreign file

    def before_fit(self) -> None:
        """The run writes its resolved config when it starts training (:class:`SaveConfig`)."""
        self.trainer.report_callbacks = [SaveConfig(self)]


def build_cli(args: Any = None, run: bool = True, exit_on_error: bool = True) -> FederatedCLI:
    """Builds (and by default runs) the federated LightningCLI; ``args`` as for ``LightningCLI``.

    ``exit_on_error=False`` raises a parse error as ``argparse.ArgumentError`` instead of printing the usage and
    exiting (the ``lit-fed`` command prints it as one line).
    """
    return FederatedCLI(
        FederatedClient,
        FederatedDataModule,
        trainer_class=FederatedTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_callback=None,
        parser_kwargs={"exit_on_error": exit_on_error},
        args=args,
        run=run,
    )
