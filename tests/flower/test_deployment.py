"""The deployment recipe on loopback: a SuperLink, two SuperNodes and `flwr run`, checked against the sequential run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from helpers import logged_rounds  # noqa: E402

from lit_fed.cli import build_cli  # noqa: E402
from lit_fed.loop.checkpoint import load_checkpoint  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "flower_deployment"
OVERRIDES = ["--trainer.eval_every=2"]  # evaluate after the last round only: fewer ClientApp processes to start


def launch(run_dir, logs, *extra):
    command = [
        sys.executable,
        str(RECIPE / "launch.py"),
        "--run-dir",
        str(run_dir),
        f"--overrides={' '.join(OVERRIDES)}",
        "--timeout",
        "540",
        "--logs",
        str(logs),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLI entry points are not installed")
def test_loopback_deployment_trains_the_sequential_model_resumes_and_cleans_up(tmp_path):
    run_dir = tmp_path / "deployment"
    launch(run_dir, tmp_path / "logs")

    # every SuperLink/SuperNode/ClientApp process the launcher started is gone
    leftovers = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout.splitlines()
    running = [line for line in leftovers if str(tmp_path) in line and not line.lstrip().startswith("Z")]
    assert running == [], running

    deployed = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    args = ["--config", str(RECIPE / "fedper_synthetic.yaml"), "--trainer.run_dir", str(tmp_path / "seq"), *OVERRIDES]
    cli = build_cli(args=args, run=False)
    initial = cli.model.shared_state()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    expected = cli.trainer.federated_result

    assert deployed["round"] == 1
    assert any(not torch.equal(deployed["global_state"][k], initial[k]) for k in initial)  # it trained
    for key, value in expected.global_state.items():
        torch.testing.assert_close(deployed["global_state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    last, want = deployed["history"][-1], expected.history[-1]
    for key in ("global_acc", "personal_acc", "train_loss", "mb_up", "mb_down"):
        assert last[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    # each node kept its own client's personal head, one version per round it trained
    for node in (0, 1):
        files = sorted(p.name for p in (run_dir / "node_states" / f"node_{node}" / f"client_{node}").iterdir())
        assert files == ["r0.pt", "r1.pt"]
    assert os.path.exists(run_dir / "logs" / "metrics.csv")

    # resumed after round 1 (the nodes forget their round-1 heads and train round 1 again): the same model
    launch(run_dir, tmp_path / "logs_resumed", "--resume-from", str(run_dir / "checkpoints" / "round_00001.ckpt"))
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["round"] == 1 and logged_rounds(run_dir) == [1, 2]  # appended to the same metrics.csv
    for key, value in expected.global_state.items():
        torch.testing.assert_close(resumed["global_state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert resumed["history"][-1]["personal_acc"] == pytest.approx(want["personal_acc"], rel=1e-5, abs=1e-6)
