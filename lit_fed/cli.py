r"""``lit-fed``: LightningCLI over a federated client module, datamodule and :class:`FederatedTrainer`.

Examples:
    lit-fed fit --config configs/quickstart.yaml
    lit-fed fit --config configs/data/fmnist_dir01.yaml --config configs/model/fedavgcnn.yaml \\
        --config configs/method/fedprox.yaml --config configs/federation/pfllib.yaml --trainer.rounds 5
    lit-fed fit --config configs/quickstart.yaml --print_config
    lit-fed validate --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lit_fed.client.module import FederatedClient
from lit_fed.data.datamodule import FederatedDataModule
from lit_fed.trainer import FederatedTrainer


class FederatedCLI(LightningCLI):
    """LightningCLI with one seed for partitions, sampling and local training."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "trainer.seed")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    def before_fit(self) -> None:
        """Saves the full resolved config as ``<run_dir>/config.yaml`` (the federated fit has no Lightning hooks)."""
        run_dir = Path(self.trainer.settings.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        parser = self._parser(self.subcommand)
        parser.save(self.config[self.subcommand], run_dir / "config.yaml", skip_none=False, overwrite=True)


def build_cli(args: Any = None, run: bool = True) -> FederatedCLI:
    """Builds (and by default runs) the federated LightningCLI; ``args`` as for ``LightningCLI``."""
    return FederatedCLI(
        FederatedClient,
        FederatedDataModule,
        trainer_class=FederatedTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_callback=None,
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point of the ``lit-fed`` command."""
    build_cli()


if __name__ == "__main__":
    main()
