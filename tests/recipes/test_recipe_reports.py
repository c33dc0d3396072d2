"""The transformer and distillation recipes rebuild their table and accuracy plot from saved result.json files."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, relative: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def history(*accuracies: float) -> list[dict]:
    return [
        {"round": r, "personal_acc": a, "personal_acc_mean": a, "personal_acc_std": 0.1, "global_acc": a / 2}
        for r, a in enumerate(accuracies)
    ]


def summary(hist: list[dict]) -> dict:
    best = max(range(len(hist)), key=lambda r: hist[r]["personal_acc"])
    return {
        "personal_acc": {"last": hist[-1]["personal_acc"], "best": hist[best]["personal_acc"], "best_round": best},
        "global_acc": {"last": hist[-1]["global_acc"], "best": max(h["global_acc"] for h in hist)},
    }


def write(path: Path, payload: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "result.json").write_text(json.dumps(payload))


def test_transformer_report_table_and_plot(tmp_path):
    recipe = load("transformer_personalization_run", "recipes/transformer_personalization/run.py")
    runs = {"fedavg": history(0.2, 0.4), "fedtp": history(0.3, 0.25)}
    for method, hist in runs.items():
        write(tmp_path / "fmnist" / method, {"history": hist, "summary": summary(hist), "rounds_run": len(hist)})
    md = recipe.write_report(tmp_path).read_text()
    assert "| FedAvg | 40.00 | 40.00 (1) | 40.00 ± 10.00 | 2 |" in md
    assert "| FedTP | 25.00 | 30.00 (0) | 25.00 ± 10.00 | 2 |" in md
    assert "| Personalized-T | not run |" in md
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_distillation_report_plots_the_rounds_and_keeps_ccvr_in_the_table(tmp_path):
    recipe = load("distillation_fmnist_run", "recipes/distillation_fmnist/run.py")
    hist = history(0.2, 0.4)
    write(tmp_path / "dir01" / "fedavg", {"history": hist, "summary": summary(hist), "rounds_run": 2})
    metrics = {
        f"ccvr_{when}_{kind}_acc": v for when, v in (("before", 0.2), ("after", 0.3)) for kind in ("global", "personal")
    }
    write(tmp_path / "dir01" / "fedavg_ccvr", {"metrics": metrics, "rounds_run": 2})
    md = recipe.write_report(tmp_path).read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["FedAvg"].startswith("| FedAvg | 40.00 | 40.00 | 20.00 | 20.00 |")
    assert "global 20.00 → 30.00" in rows["FedAvg + CCVR"]
    assert (tmp_path / "accuracy.png").stat().st_size > 0


@pytest.mark.parametrize("panels", [{}, {"a": {}}])
def test_shared_plot_handles_empty_panels(tmp_path, panels):
    plots = load("recipes_accuracy_plot", "recipes/accuracy_plot.py")
    assert plots.plot_accuracy(panels, tmp_path / "x.png").stat().st_size > 0
