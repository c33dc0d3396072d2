"""Start-up: lazy package exports and the cached ``--help`` pages of ``lit-fed``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_fed import cli, cli_help

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "lit_fed",
    "lit_fed.client",
    "lit_fed.compression",
    "lit_fed.data",
    "lit_fed.loop",
    "lit_fed.losses",
    "lit_fed.methods",
    "lit_fed.metrics",
    "lit_fed.models",
    "lit_fed.server",
]


def run_python(code: str, **env: str) -> str:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_every_lazy_export_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute"):
        module.NotAnExport  # noqa: B018


def test_lazy_export_is_the_defining_object():
    import lit_fed
    from lit_fed.server.fedavg import FedAvg

    assert lit_fed.FedAvg is FedAvg
    assert importlib.import_module("lit_fed.server").FedAvg is FedAvg


def test_importing_the_package_and_cli_loads_no_heavy_dependency():
    out = run_python(
        "import sys, lit_fed, lit_fed.cli, lit_fed.data, lit_fed.loop, lit_fed.methods\n"
        "print(sorted(m for m in ('torch', 'lightning', 'timm', 'flwr', 'ray', 'tensorboard', 'torchvision')"
        " if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_help_request_forms():
    assert cli_help.is_help_request(["--help"]) and cli_help.is_help_request(["-h"])
    assert cli_help.is_help_request(["fit", "--help"]) and cli_help.is_help_request(["test", "-h"])
    assert not cli_help.is_help_request([])
    assert not cli_help.is_help_request(["fit", "--config", "a.yaml", "--help"])
    assert not cli_help.is_help_request(["predict", "--help"])


def test_help_key_depends_on_the_request_and_the_sources(monkeypatch):
    before = cli_help.help_key(["--help"])
    assert before == cli_help.help_key(["--help"])
    assert before != cli_help.help_key(["fit", "--help"])
    stamp = cli_help._source_stamp()
    assert any(path == "cli.py" for path, _, _ in stamp)
    monkeypatch.setattr(cli_help, "_source_stamp", lambda: [*stamp, ("edited.py", 1, 1)])
    assert cli_help.help_key(["--help"]) != before


def test_second_help_is_printed_from_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cli_help.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(cli_help.CACHE_ENV, raising=False)
    with pytest.raises(SystemExit) as first:
        cli.main(["fit", "--help"])
    assert first.value.code == 0
    rendered = capsys.readouterr().out
    assert "usage:" in rendered and "--trainer.rounds" in rendered
    assert len(list(tmp_path.glob("help-*.txt"))) == 1

    def no_parser(*args, **kwargs):
        raise AssertionError("the cached page must not build the parser")

    monkeypatch.setattr(cli, "build_cli", no_parser)
    with pytest.raises(SystemExit) as second:
        cli.main(["fit", "--help"])
    assert second.value.code == 0
    assert capsys.readouterr().out == rendered


def test_cache_off_renders_every_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cli_help.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(cli_help.CACHE_ENV, "0")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "usage:" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_cached_help_starts_without_lightning(tmp_path):
    code = (
        "import sys\nfrom lit_fed.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LIGHTNING', 'lightning' in sys.modules)"
    )
    first = run_python(code, LIT_FED_CACHE_DIR=str(tmp_path))
    second = run_python(code, LIT_FED_CACHE_DIR=str(tmp_path))
    assert first.endswith("LIGHTNING True\n") and second.endswith("LIGHTNING False\n")
    assert first.split("LIGHTNING")[0] == second.split("LIGHTNING")[0]
    assert "usage:" in second
