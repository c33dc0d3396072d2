r"""``lit-fed``: LightningCLI over a federated client module, datamodule and :class:`FederatedTrainer`.

Examples:
    lit-fed fit --config configs/quickstart.yaml
    lit-fed fit --config configs/data/fmnist_dir01.yaml --config configs/model/fedavgcnn.yaml \\
        --config configs/method/fedprox.yaml --config configs/federation/pfllib.yaml --trainer.rounds 5
    lit-fed fit --config configs/quickstart.yaml --print_config
    lit-fed validate --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lit_fed.client.module import FederatedClient
from lit_fed.data.datamodule import FederatedDataModule
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.trainer import FederatedTrainer, RunInterrupted

if TYPE_CHECKING:
    from lit_fed.loop.federated_loop import FederatedLoop

DEBUG_ENV = "LIT_FED_DEBUG"
"""Set to ``1`` (or pass ``--debug``) for full tracebacks instead of one-line errors."""


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

    def before_fit(self) -> None:
        """The run writes its resolved config when it starts training (:class:`SaveConfig`)."""
        self.trainer.report_callbacks = [SaveConfig(self)]


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


def _resume_command(argv: list[str], checkpoint: Path) -> str:
    """``lit-fed <argv> --ckpt_path <checkpoint>``, with any ``--ckpt_path`` of ``argv`` replaced."""
    import shlex

    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["lit-fed", *kept, "--ckpt_path", str(checkpoint)])


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lit-fed`` command: one-line errors (``--debug`` or ``LIT_FED_DEBUG=1`` for tracebacks).

    Ctrl-C during a run stops it with the last complete round, its checkpoint and the command that resumes it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        build_cli(args=args)
    except RunInterrupted as stop:
        if stop.checkpoint is None:
            print(
                f"lit-fed: interrupted during round {stop.round + 1}; no round checkpoint was written yet",
                file=sys.stderr,
            )
        else:
            print(
                f"lit-fed: interrupted during round {stop.round + 1}; round {stop.completed} is complete, its "
                f"checkpoint is {stop.checkpoint}. Resume with: {_resume_command(args, stop.checkpoint)}",
                file=sys.stderr,
            )
        sys.exit(130)
    except KeyboardInterrupt:
        print("lit-fed: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if debug:
            raise
        message = str(error).strip() or type(error).__name__
        print(f"lit-fed: error: {message}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
