"""The command line under bad input and interruptions: one-line errors, nothing lost, resumable runs."""

import io
import json
import os
import pickle
import shlex
import socket

import pytest
import torch
from helpers import ROOT, logged_rounds

from lit_fed.cli import main
from lit_fed.loop.checkpoint import CheckpointError, load_checkpoint
from lit_fed.loop.run_lock import LOCK_NAME, run_directory_lock

BASE = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/tinycnn.yaml")]
QUIET = ["--trainer.progress", "false"]


def fit_args(run_dir, *extra, rounds=3):
    return ["fit", *BASE, *QUIET, "--trainer.run_dir", str(run_dir), "--trainer.rounds", str(rounds), *extra]


def run_main(argv, capsys, stdout=None):
    """``main(argv)``: (exit code, stderr lines); the printed output is appended to ``stdout`` if given."""
    code = 0
    try:
        main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    if stdout is not None:
        stdout.append(captured.out)
    return code, [line for line in captured.err.splitlines() if line.strip()]


def accuracies(run_dir):
    history = load_checkpoint(run_dir / "checkpoints/last.ckpt")["history"]
    return [(h["round"], h["global_acc"], h["personal_acc"], h["train_loss"]) for h in history]


def test_ctrl_c_names_the_last_round_its_checkpoint_and_the_resume_command(tmp_path, capsys):
    interrupt = json.dumps({"class_path": "helpers.InterruptAt", "init_args": {"at_round": 2}})
    argv = fit_args(tmp_path / "cut", f"--trainer.round_callbacks+={interrupt}")
    code, err = run_main(argv, capsys)
    assert code == 130 and len(err) == 1, err
    checkpoint = tmp_path / "cut/checkpoints/last.ckpt"
    assert f"interrupted during round 2; round 1 is complete, its checkpoint is {checkpoint}" in err[0]
    assert load_checkpoint(checkpoint)["round"] == 0  # round 1 (index 0) is the last complete one
    command = shlex.split(err[0].split("Resume with: ", 1)[1])
    assert command[0] == "lit-fed" and command[-2:] == ["--ckpt_path", str(checkpoint)]
    assert run_main(command[1:], capsys)[0] == 0
    assert run_main(fit_args(tmp_path / "whole"), capsys)[0] == 0
    assert accuracies(tmp_path / "cut") == accuracies(tmp_path / "whole")
    assert logged_rounds(tmp_path / "cut") == [1, 2, 3]  # the resumed run appended to the same metrics.csv
    assert (tmp_path / "cut/config.yaml").is_file() and (tmp_path / "cut/config.resumed_at_round_2.yaml").is_file()


def test_a_second_run_into_a_directory_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with run_directory_lock(run_dir):
        code, err = run_main(fit_args(run_dir, rounds=1), capsys)
        assert code == 1 and f"in use by another lit-fed run (pid {os.getpid()} on {socket.gethostname()}" in err[0]
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()  # nothing written
    assert not (run_dir / LOCK_NAME).exists()  # released
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # dead owner
    assert run_main(fit_args(run_dir, rounds=1), capsys)[0] == 0
    assert (run_dir / "config.yaml").is_file() and not (run_dir / LOCK_NAME).exists()


@pytest.fixture
def finished_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_main(fit_args(run_dir, rounds=2), capsys)[0] == 0
    return run_dir


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (["--data.init_args.partitioner.init_args.alpha", "100"], "data: checkpoint"),
        (["--config", str(ROOT / "configs/method/ditto.yaml")], "model: checkpoint"),
        (["--model.init_args.backbone.init_args.width", "16"], "model: checkpoint"),
        (["--seed_everything", "7"], "seed: checkpoint 0 / this run 7"),
        (["--trainer.client_fraction", "0.5"], "client_fraction: checkpoint 1.0 / this run 0.5"),
    ],
)
def test_resuming_with_another_partition_method_or_model_is_refused_naming_the_keys(finished_run, change, key, capsys):
    code, err = run_main([*fit_args(finished_run, *change, rounds=4), "--ckpt_path", str(finished_run)], capsys)
    assert code == 1
    text = "\n".join(err)
    assert "was written by a run with other settings" in text and key in text
    assert "--trainer.allow_config_change true" in text
    assert load_checkpoint(finished_run / "checkpoints/last.ckpt")["round"] == 1  # untouched


def test_allow_config_change_resumes_anyway_and_more_rounds_need_no_override(finished_run, capsys):
    assert run_main([*fit_args(finished_run, rounds=3), "--ckpt_path", str(finished_run)], capsys)[0] == 0
    assert load_checkpoint(finished_run / "checkpoints/last.ckpt")["round"] == 2
    changed = ["--data.init_args.partitioner.init_args.alpha", "100", "--trainer.allow_config_change", "true"]
    assert run_main([*fit_args(finished_run, *changed, rounds=4), "--ckpt_path", str(finished_run)], capsys)[0] == 0
    assert logged_rounds(finished_run) == [1, 2, 3, 4]


def test_rounds_at_or_below_the_checkpoint_say_so(finished_run, capsys):
    code, err = run_main([*fit_args(finished_run, rounds=2), "--ckpt_path", str(finished_run)], capsys)
    assert code == 1 and "has completed 2 rounds; rounds=2 leaves nothing to run" in err[0]
    assert "--trainer.rounds 3" in err[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"\x8f\x13random bytes that are not a checkpoint" * 10, "truncated or corrupt"),
        ("torch-list", "a list, not a lit_fed round checkpoint"),
        (pickle.dumps([1, 2, 3]), "truncated or corrupt"),
        ("truncate", "truncated or corrupt"),
    ],
    ids=["empty", "random", "torch-saved-list", "pickled-list", "truncated"],
)
def test_a_corrupt_or_foreign_checkpoint_is_one_clear_error_naming_the_file(finished_run, content, problem, capsys):
    bad = finished_run / "bad.ckpt"
    if content == "truncate":
        whole = (finished_run / "checkpoints/last.ckpt").read_bytes()
        content = whole[: len(whole) // 2]
    elif content == "torch-list":
        buffer = io.BytesIO()
        torch.save([1, 2, 3], buffer)
        content = buffer.getvalue()
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)
    code, err = run_main([*fit_args(finished_run, rounds=3), "--ckpt_path", str(bad)], capsys)
    assert code == 1 and len(err) == 2 and str(bad) in err[0] and problem in err[0], err


def test_configuration_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    argv = fit_args(tmp_path, "--trainer.keep_checkpoints", "-1")
    code, err = run_main(argv, capsys)
    assert code == 1 and len(err) == 2, err
    assert err[0] == "lit-fed: error: keep_checkpoints must be >= 0, got -1"
    assert "--debug" in err[1]
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 0"):
        main([*argv, "--debug"])


@pytest.mark.parametrize(("text", "problem"), [("", "empty"), ("- a\n- b\n", "not a mapping")])
def test_an_empty_or_non_mapping_yaml_names_the_file(tmp_path, text, problem, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    code, err = run_main([*fit_args(tmp_path / "run"), "--config", str(config)], capsys)
    assert code != 0 and str(config) in "\n".join(err) and problem in "\n".join(err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (["--model.init_args.backbone.init_args.num_classes", "3"], "outputs 3 class scores but the data"),
        (["--model.init_args.backbone.init_args.in_channels", "3"], "does not accept the data's inputs of shape"),
    ],
)
def test_model_and_data_mismatches_are_caught_before_training(tmp_path, override, needle, capsys):
    code, err = run_main(fit_args(tmp_path / "run", *override), capsys)
    assert code == 1 and needle in err[0], err
    assert "TinyCNN" in err[0] and "Synthetic" in err[0] or "FederatedDataModule" in err[0]
    assert not (tmp_path / "run/checkpoints").exists()


def test_several_devices_per_client_are_refused_pointing_to_parallel_clients(tmp_path, capsys):
    code, err = run_main(fit_args(tmp_path, "--trainer.devices", "2"), capsys)
    assert code == 1 and "devices" in err[0] and "Flower" in err[0], err


def test_predict_is_not_a_subcommand(capsys):
    code, err = run_main(["predict", *BASE], capsys)
    assert code == 1 and "invalid choice: 'predict' (choose from 'fit', 'validate', 'test')" in err[0], err


def test_a_parse_error_is_one_line_naming_the_key_and_the_problem(tmp_path, capsys):
    code, err = run_main(fit_args(tmp_path, "--trainer.server", "lit_fed.FedUnknown"), capsys)
    assert code == 1 and len(err) == 2, err
    assert 'Parser key "trainer.server"' in err[0] and "module 'lit_fed' has no attribute 'FedUnknown'" in err[0]


def test_validate_prints_the_fit_table_with_the_loaded_round(finished_run, capsys):
    printed = []
    assert run_main(["validate", *BASE, "--ckpt_path", str(finished_run)], capsys, printed)[0] == 0
    out = printed[0]
    assert "lit_fed results" in out and "round 2 of" in out and "best round" in out
    personal = load_checkpoint(finished_run / "checkpoints/last.ckpt")["history"][-1]["personal_acc"]
    assert f"{100 * personal:.2f}" in out
    # settings that only change training do not matter to an evaluation; the data does
    assert (
        run_main(["validate", *BASE, "--trainer.client_fraction", "0.5", "--ckpt_path", str(finished_run)], capsys)[0]
        == 0
    )
    changed = ["--data.init_args.partitioner.init_args.alpha", "100", "--ckpt_path", str(finished_run)]
    code, err = run_main(["validate", *BASE, *changed], capsys)
    assert code == 1 and "data: checkpoint" in "\n".join(err)


def test_fedbn_on_a_model_without_batchnorm_warns(tmp_path):
    from lit_fed.client.split import BatchNorm, ParameterSplit

    with pytest.warns(UserWarning, match="has no BatchNorm layer"):
        assert ParameterSplit([BatchNorm()]).personal_keys(torch.nn.Linear(2, 2)) == []


def test_an_exploded_but_finite_update_is_rejected_and_counted(tmp_path, capsys):
    scale = {"class_path": "lit_fed.loop.attacks.Scale", "init_args": {"factor": 1e6}}
    attack = json.dumps({"class_path": "lit_fed.loop.ByzantineAttack", "init_args": {"fraction": 0.25, "kind": scale}})
    printed = []
    argv = [
        *fit_args(tmp_path / "screened", f"--trainer.round_callbacks+={attack}", rounds=2),
        *["--trainer.progress", "true"],
    ]
    assert run_main(argv, capsys, printed)[0] == 0
    screened = load_checkpoint(tmp_path / "screened")
    assert [h["rejected_exploded"] for h in screened["history"]] == [1, 1]  # one of 4 clients attacks each round
    (total,) = [line for line in printed[0].splitlines() if "rejected updates (total)" in line]
    assert "2.00" in total
    unscreened_argv = [*fit_args(tmp_path / "open", f"--trainer.round_callbacks+={attack}", rounds=2)]
    assert run_main([*unscreened_argv, "--trainer.max_update_ratio", "null"], capsys)[0] == 0
    unscreened = load_checkpoint(tmp_path / "open")

    def largest(state):
        return max(float(v.abs().max()) for v in state.values() if v.is_floating_point())

    assert largest(unscreened["global_state"]) > 1e3 > 10 > largest(screened["global_state"])
