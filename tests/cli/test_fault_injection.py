"""SIGKILL at points between and inside rounds: every checkpoint left behind loads and resumes to the numbers of
the uninterrupted run (the run directory's lock of the killed process is taken over as stale)."""

import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, logged_rounds

from lit_fed.cli import main
from lit_fed.loop.checkpoint import load_checkpoint

ROUNDS = 4
ARGS = [
    "fit",
    "--config",
    str(ROOT / "configs/data/synthetic.yaml"),
    "--config",
    str(ROOT / "configs/model/tinycnn.yaml"),
    "--trainer.progress",
    "false",
    "--trainer.rounds",
    str(ROUNDS),
    "--trainer.keep_checkpoints",
    "0",
]

# Each point kills the run process with SIGKILL (no cleanup, no exception handlers) at one place of the run.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)  # as the test process (tests/conftest.py): the same floating-point results
    import lightning.pytorch as pl
    import lit_fed.loop.checkpoint as checkpoint
    from lit_fed.cli import main
    from lit_fed.loop.callbacks import LoopCallback

    point, round_ = sys.argv[1], int(sys.argv[2])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class KillAt(LoopCallback):  # between rounds: at a round's start or at its end before its checkpoint
        def on_round_start(self, loop, index):
            if point == "round_start" and index + 1 == round_:
                die()

        def on_round_end(self, loop, index, metrics):
            if point == "round_end" and index + 1 == round_:
                die()

    class KillInFit(pl.Callback):  # inside a round: during the second client's local training
        fits = 0

        def on_train_start(self, trainer, module):
            KillInFit.fits += 1

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if point == "in_fit" and KillInFit.fits == 4 * (round_ - 1) + 2 and batch_idx == 1:
                die()

    replace = checkpoint.os.replace

    def replace_then_maybe_die(src, dst):  # while writing round round_'s checkpoint files
        if point == "in_checkpoint" and str(dst).endswith("last.ckpt") and f"round_{{round_:05d}}" in str(
            sorted(os.listdir(os.path.dirname(dst)))
        ):
            die()
        replace(src, dst)

    checkpoint.os.replace = replace_then_maybe_die
    import lit_fed.trainer as trainer_module

    original = trainer_module.FederatedTrainer.build_loop

    def build_loop(self, model, datamodule):
        loop = original(self, model, datamodule)
        loop.callbacks.insert(0, KillAt())
        return loop

    trainer_module.FederatedTrainer.build_loop = build_loop
    from lit_fed.loop.settings import FederationSettings

    client_kwargs = FederationSettings.client_trainer_kwargs

    def with_kill_in_fit(self):
        kwargs = client_kwargs(self)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), KillInFit()]
        return kwargs

    FederationSettings.client_trainer_kwargs = with_kill_in_fit
    main(sys.argv[3:])
    """
)

POINTS = [
    ("round_start", 1),  # before anything was checkpointed
    ("in_fit", 2),  # inside round 2's local training
    ("round_end", 2),  # round 2 done, its checkpoint not written
    ("in_checkpoint", 3),  # round 3's round file written, last.ckpt not replaced
    ("round_start", 4),  # between rounds 3 and 4
]


def history_numbers(run_dir):
    history = load_checkpoint(run_dir)["history"]
    return [(h["round"], h["global_acc"], h["personal_acc"], h["train_loss"], h["mb_up"]) for h in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    main([*ARGS, "--trainer.run_dir", str(run_dir)])
    return history_numbers(run_dir)


@pytest.mark.parametrize(("point", "round_"), POINTS, ids=[f"{p}-{r}" for p, r in POINTS])
def test_a_killed_run_resumes_to_the_uninterrupted_numbers(point, round_, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    script = KILLER.format(tests=str(ROOT / "tests"))
    argv = [*ARGS, "--trainer.run_dir", str(run_dir)]
    done = subprocess.run(
        [sys.executable, "-c", script, point, str(round_), *argv], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").exists() else []
    for path in left:  # every checkpoint left behind is whole
        assert load_checkpoint(path)["round"] < round_
    completed = round_ - 1  # every point is before round_'s checkpoint
    if completed == 0:
        assert left == []
        main(argv)  # nothing to resume: a fresh run, after the dead run's lock
    else:
        assert load_checkpoint(run_dir)["round"] + 1 == completed
        main([*argv, "--ckpt_path", str(run_dir)])
    assert history_numbers(run_dir) == uninterrupted
    assert logged_rounds(run_dir) == list(range(1, ROUNDS + 1))
    assert not any(run_dir.glob("checkpoints/*.tmp"))  # the resumed run's writes replaced any partial file
