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

from lit_fed import cli_help

if TYPE_CHECKING:
    from lit_fed.cli_parser import FederatedCLI

DEBUG_ENV = "LIT_FED_DEBUG"
"""Set to ``1`` (or pass ``--debug``) for full tracebacks instead of one-line errors."""


def __getattr__(name: str) -> Any:
    """``FederatedCLI`` and ``SaveConfig`` live in :mod:`lit_fed.cli_parser` (imported on first use)."""
    if name in ("FederatedCLI", "SaveConfig"):
        from lit_fed import cli_parser

        return getattr(cli_parser, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_cli(args: Any = None, run: bool = True) -> FederatedCLI:
    """Builds (and by default runs) the federated LightningCLI; ``args`` as for ``LightningCLI``."""
    from lit_fed.cli_parser import build_cli as build

    return build(args=args, run=run)


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
    if cli_help.is_help_request(args):
        cli_help.print_help(args, lambda request: build_cli(args=request))
    from lit_fed.trainer import RunInterrupted

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
