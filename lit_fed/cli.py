r"""``lit-fed``: LightningCLI over a federated client module, datamodule and :class:`FederatedTrainer`.

Examples:
    lit-fed fit --config configs/quickstart.yaml
    lit-fed fit --config configs/data/fmnist_dir01.yaml --config configs/model/fedavgcnn.yaml \\
        --config configs/method/fedprox.yaml --config configs/federation/pfllib.yaml --trainer.rounds 5
    lit-fed fit --config configs/quickstart.yaml --print_config
    lit-fed validate --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
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


def build_cli(args: Any = None, run: bool = True, exit_on_error: bool = True) -> FederatedCLI:
    """Builds (and by default runs) the federated LightningCLI; ``args`` as for ``LightningCLI``.

    ``exit_on_error=False``: a parse error raises ``argparse.ArgumentError`` instead of printing usage and exiting.
    """
    from lit_fed.cli_parser import build_cli as build

    return build(args=args, run=run, exit_on_error=exit_on_error)


_PARSE_NOISE = ("Subtypes:", "Errors:", "Given value type:", "Does not validate against any of the Union subtypes")


def parse_error_line(error: BaseException) -> str:
    """Jsonargparse's (multi-line) parse error as one line: what was wrong with which key, without the type dump."""
    lines = [line.strip(" -") for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith(_PARSE_NOISE) and "<class 'NoneType'>" not in line]
    return " ".join(kept)


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


def check_config_files(argv: list[str]) -> None:
    """Refuses a ``--config`` file that is missing, not YAML, empty or not a mapping, naming the file.

    (jsonargparse reports those as ``Unexpected config`` without the file.)

    Raises:
        ValueError: one of the files is not a usable config.
    """
    import yaml

    paths = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in paths:
        path = Path(name)
        if not path.is_file():
            continue  # jsonargparse also accepts inline YAML/JSON here
        try:
            content = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if content is None:
            raise ValueError(f"config {path}: the file is empty (a config is a mapping such as 'trainer: ...')")
        if not isinstance(content, dict):
            raise ValueError(
                f"config {path}: not a mapping but a {type(content).__name__} (a config maps keys such as "
                "'trainer:', 'model:', 'data:' to values)"
            )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lit-fed`` command: one-line errors (``--debug`` or ``LIT_FED_DEBUG=1`` for tracebacks).

    Ctrl-C during a run stops it with the last complete round, its checkpoint and the command that resumes it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if cli_help.is_help_request(args):
        cli_help.print_help(args, lambda request: build_cli(args=request))
    import warnings

    from lit_fed.trainer import RunInterrupted

    # main passes argv itself (without --debug); LightningCLI would warn that sys.argv is set as well
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        check_config_files(args)
        build_cli(args=args, exit_on_error=False)
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
        if isinstance(error, argparse.ArgumentError):
            message = parse_error_line(error) + " (see lit-fed <subcommand> --help)"
        else:
            message = str(error).strip() or type(error).__name__
        print(f"lit-fed: error: {message}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
