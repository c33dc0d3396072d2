"""The PFLlib Fashion-MNIST recipe end to end, on the synthetic data and the tiny CNN (seconds, not hours)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pfllib_fmnist"
SMALL = ["--data-config", "configs/data/synthetic.yaml", "--model-config", "configs/model/tinycnn.yaml"]


def load(name: str):
    module_name = f"pfllib_fmnist_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, RECIPE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="module")
def run_module():
    return load("run")


def table_rows(markdown: str, section: str) -> dict[str, list[str]]:
    """``{method label: cells}`` of the table under ``## <section>``."""
    body = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return {c[0]: c[1:] for c in cells}


def test_runs_two_methods_writes_table_plot_and_skips_finished_runs(run_module, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--methods", "fedavg", "fedprox", "--partitions", "dir01", "--rounds", "1", "--out", str(out), *SMALL]
    assert run_module.main(argv) == 0

    results = {m: json.loads((out / "dir01" / m / "result.json").read_text()) for m in ("fedavg", "fedprox")}
    for method, result in results.items():
        assert result["method"] == method and result["partition"] == "dir01"
        assert result["rounds_run"] == 1 and result["seed"] == 0
        assert result["configs"]["method"] == f"configs/method/{method}.yaml"
        assert {"personal_acc", "global_acc"} <= set(result["summary"])
        assert result["lit_fed_command"].startswith("lit-fed fit --config configs/data/synthetic.yaml")
    assert (out / "accuracy.png").stat().st_size > 0

    markdown = (out / "results.md").read_text()
    assert "**Rounds:** 1 (CPU-sized; PFLlib's leaderboard runs 2000 rounds" in markdown
    assert f"python recipes/pfllib_fmnist/run.py {' '.join(argv)}" in markdown
    rows = table_rows(markdown, "Dirichlet(0.1)")
    assert set(rows) == {"FedAvg", "FedProx"}
    for method, label, reference in (("fedavg", "FedAvg", "85.85"), ("fedprox", "FedProx", "85.63")):
        summary, history = results[method]["summary"], results[method]["history"]
        personal_last, personal_best, spread, global_last, global_best, seconds, rounds, pfllib = rows[label]
        assert personal_last == f"{100 * summary['personal_acc']['last']:.2f}"
        assert personal_best == f"{100 * summary['personal_acc']['best']:.2f}"
        assert global_last == f"{100 * summary['global_acc']['last']:.2f}"
        assert global_best == f"{100 * summary['global_acc']['best']:.2f}"
        best = history[summary["personal_acc"]["best_round"] - 1]  # rounds are numbered from 1
        assert spread == f"{100 * best['personal_acc_mean']:.2f} ± {100 * best['personal_acc_std']:.2f}"
        assert seconds == f"{history[0]['round_seconds']:.1f}"
        assert rounds == "1" and pfllib == reference

    # A re-run skips the finished runs (their JSONs stay as they were) and rebuilds the same table.
    before = {m: (out / "dir01" / m / "result.json").stat().st_mtime_ns for m in results}
    capsys.readouterr()
    assert run_module.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped (") == 2 and "done in" not in printed
    assert {m: (out / "dir01" / m / "result.json").stat().st_mtime_ns for m in results} == before
    assert table_rows((out / "results.md").read_text(), "Dirichlet(0.1)") == rows

    # --report-only rebuilds table and plot from the JSONs alone.
    (out / "results.md").unlink()
    (out / "accuracy.png").unlink()
    assert run_module.main(["--report-only", "--out", str(out)]) == 0
    assert table_rows((out / "results.md").read_text(), "Dirichlet(0.1)") == rows
    assert (out / "accuracy.png").exists()


def test_missing_method_config_is_skipped_with_a_message(run_module, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_module.main(["--methods", "no_such_method", "--rounds", "1", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"dir01/no_such_method: skipped — method config configs/method/no_such_method\.yaml not", printed)
    assert not (out / "dir01" / "no_such_method").exists()
    assert "No finished run yet." in (out / "results.md").read_text()


def test_fedbn_uses_the_batchnorm_model_and_extra_passes_through(run_module, tmp_path):
    configs, _ = run_module.configs_for("pathological", "fedbn")
    assert configs is None or configs["model"] == "configs/model/fedavgcnn_bn.yaml"
    assert run_module.configs_for("dir01", "fedavg")[0]["model"] == "configs/model/fedavgcnn.yaml"
    args = run_module.cli_args(
        {"data": "d.yaml", "model": "m.yaml", "method": "x.yaml", "federation": "f.yaml"},
        rounds=7,
        run_dir=tmp_path,
        seed=3,
        extra=run_module.split_extra(["--trainer.accelerator gpu --trainer.precision bf16-mixed"]),
    )
    assert args[0] == "fit"
    assert args[-6:] == ["--seed_everything", "3", "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed"]
    parsed = run_module.build_parser().parse_args(["--rounds", "2", "--extra", "--trainer.accelerator", "gpu"])
    assert parsed.extra == ["--trainer.accelerator", "gpu"] and parsed.rounds == 2


def test_byzantine_table_compares_clean_and_attacked_runs(tmp_path):
    byzantine = load("byzantine")
    out = tmp_path / "byz"
    argv = ["--methods", "fedavg", "--aggregators", "median", "--rounds", "1", "--fraction", "0.25"]
    assert byzantine.main([*argv, "--out", str(out), *SMALL]) == 0

    attacked = json.loads((out / "dir01" / "fedavg" / "median" / "attack" / "result.json").read_text())
    assert attacked["attack"]["init_args"]["fraction"] == 0.25
    assert attacked["aggregator_spec"] == byzantine.AGGREGATORS["median"]
    assert "--trainer.round_callbacks" in attacked["lit_fed_command"]
    clean = json.loads((out / "dir01" / "fedavg" / "median" / "clean" / "result.json").read_text())
    assert "--trainer.round_callbacks" not in clean["lit_fed_command"]

    markdown = (out / "byzantine.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| F")]
    assert [row[:2] for row in rows] == [["FedAvg", "coordinate median"]]
    last_clean, last_attacked = clean["history"][-1], attacked["history"][-1]
    assert rows[0][2:] == [
        f"{100 * last_clean['personal_acc']:.2f}",
        f"{100 * last_attacked['personal_acc_honest']:.2f}",
        f"{100 * last_clean['global_acc']:.2f}",
        f"{100 * last_attacked['global_acc']:.2f}",
    ]
