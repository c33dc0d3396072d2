"""The seed-methods recipe end to end, on long-tailed synthetic data and the tiny CNN (seconds, not hours)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--data-config", "configs/data/synthetic.yaml", "--model-config", "configs/model/tinycnn.yaml"]
# Synthetic's 100 samples per class, imbalance 10: 100/46/21/10 per class, ~75% of it client-train, so the
# thresholds (10, 50) put class 0 in many-shot, 1-2 in medium and 3 in few-shot.
LONG_TAIL = ["--data.init_args.imbalance_ratio", "10", "--trainer.shot_thresholds", "[10,50]"]
SMALL_FEDLOGE = ["--trainer.local_epochs", "1", "--model.init_args.sse_steps", "20"]


@pytest.fixture(scope="module")
def recipe():
    name = "seed_methods_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / "seed_methods" / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def rows(markdown: str, experiment: str) -> dict[str, list[str]]:
    body = markdown.split(f"## `{experiment}`", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {c[0]: c[1:] for c in cells}


def test_long_tail_experiment_reports_shot_groups_and_resumes(recipe, tmp_path):
    out = tmp_path / "out"
    argv = ["--experiments", "lt", "--methods", "fedloge", "fedloge_no_glafr", "--rounds", "1", "--out", str(out)]
    argv += [*SMALL, "--extra", *LONG_TAIL, *SMALL_FEDLOGE]
    assert recipe.main(argv) == 0
    table = rows((out / "results.md").read_text(), "lt")
    assert set(table) == {"FedLoGe", "FedLoGe without GLA-FR"}
    for method, label in (("fedloge", "FedLoGe"), ("fedloge_no_glafr", "FedLoGe without GLA-FR")):
        result = json.loads((out / "lt" / method / "result.json").read_text())
        assert result["configs"]["method"] == f"configs/method/{method}.yaml"
        assert result["configs"]["federation"] == "configs/federation/fedloge.yaml"
        last = result["history"][-1]
        cells = table[label]
        assert cells[0] == recipe.pct(last["global_acc"]) and cells[1] == recipe.pct(last["personal_acc"])
        # the six shot-group columns are the logged many/medium/few accuracies, none missing
        expected = [recipe.pct(last[f"{m}_acc_{g}"]) for m in ("global", "personal") for g in ("many", "medium", "few")]
        assert cells[3:9] == expected and "—" not in expected
    assert (out / "accuracy.png").stat().st_size > 0
    # a second call with the same request skips both finished runs; more rounds extend them from the checkpoint
    assert recipe.main(argv) == 0
    argv[argv.index("--rounds") + 1] = "2"
    assert recipe.main(argv) == 0
    result = json.loads((out / "lt" / "fedloge" / "result.json").read_text())
    assert result["rounds_run"] == 2 and result["resumed_from_round"] == 1


def test_label_skew_experiment_runs_pse_and_its_ablation(recipe, tmp_path):
    out = tmp_path / "out"
    argv = ["--experiments", "pse", "--methods", "pse", "pse_no_attention", "--rounds", "1", "--out", str(out)]
    argv += [*SMALL, "--extra", "--trainer.local_steps", "2"]
    assert recipe.main(argv) == 0
    table = rows((out / "results.md").read_text(), "pse")
    assert set(table) == {"PSE", "PSE without attention"}
    assert "seed_methods/run.py --experiments pse" in (out / "results.md").read_text()


def test_unknown_method_is_refused(recipe, tmp_path):
    with pytest.raises(SystemExit, match="unknown method"):
        recipe.main(["--methods", "fedsomething", "--out", str(tmp_path)])
