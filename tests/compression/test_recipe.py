import importlib.util
import sys
from pathlib import Path

import pytest

from lit_fed.cli import build_cli
from lit_fed.compression import SVD, CompressUpload, TopK

ROOT = Path(__file__).resolve().parents[2]


def load_recipe():
    name = "communication_recipe_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "recipes/communication/run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize(("scheme", "expected"), [("dense", None), ("topk999_res", (TopK, 0.999, True)), ("svd", SVD)])
def test_recipe_schemes_parse_to_the_intended_callbacks(scheme, expected, tmp_path):
    recipe = load_recipe()
    args = recipe.cli_args(scheme, 3, tmp_path / scheme, 0, [], None)[1:]  # without the "fit" subcommand
    cli = build_cli(args=args, run=False)
    callbacks = cli.trainer.round_callbacks
    assert cli.trainer.settings.rounds == 3 and cli.datamodule.num_clients == 20
    if expected is None:
        assert callbacks == []
        return
    (callback,) = callbacks
    assert isinstance(callback, CompressUpload)
    if isinstance(expected, tuple):
        cls, sparsity, residual = expected
        assert isinstance(callback.compressor, cls) and callback.compressor.target_sparsity == sparsity
        assert callback.residual is residual
    else:
        assert isinstance(callback.compressor, expected)


def test_recipe_report_without_runs(tmp_path):
    table, plot = load_recipe().write_report(tmp_path)
    assert plot is None and "| scheme |" in table.read_text()
