from pathlib import Path

import pytest
import torch

from lit_fed.cli import build_cli
from lit_fed.client.regularizers import ProximalTerm
from lit_fed.data import FederatedDataModule
from lit_fed.server import FedAdam, FedAvg
from lit_fed.trainer import FederatedTrainer

ROOT = Path(__file__).resolve().parents[2]
BASE = [
    "--config",
    str(ROOT / "configs/data/synthetic.yaml"),
    "--config",
    str(ROOT / "configs/model/tinycnn.yaml"),
]
CONCERN_CONFIGS = sorted(
    p for sub in ("data", "model", "method", "trainer", "federation") for p in (ROOT / "configs" / sub).glob("*.yaml")
)
FULL_CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "recipes").rglob("*.yaml"))


def parse(*extra: str, base=BASE):
    return build_cli(args=[*base, *extra], run=False)


@pytest.mark.parametrize("config", CONCERN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_concern_config_stacks_and_instantiates(config):
    cli = parse("--config", str(config))
    assert isinstance(cli.trainer, FederatedTrainer)
    assert isinstance(cli.datamodule, FederatedDataModule)


@pytest.mark.parametrize("config", FULL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_full_config_instantiates(config):
    cli = build_cli(args=["--config", str(config)], run=False)
    assert isinstance(cli.trainer, FederatedTrainer)


def test_method_config_sets_client_and_server():
    cli = parse("--config", str(ROOT / "configs/method/fedprox.yaml"))
    (term,) = cli.model.regularizers
    assert isinstance(term, ProximalTerm) and term.mu == 0.01
    assert isinstance(cli.trainer.server, FedAvg)
    cli = parse("--config", str(ROOT / "configs/method/fedadam.yaml"), "--trainer.server.init_args.tau", "0.01")
    assert isinstance(cli.trainer.server, FedAdam)
    assert cli.trainer.server.tau == 0.01


def test_trainer_settings_pass_through_to_client_trainers():
    cli = parse(
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.gradient_clip_val",
        "1.0",
        "--trainer.accumulate_grad_batches",
        "2",
        "--trainer.rounds",
        "7",
    )
    kwargs = cli.trainer.settings.trainer_kwargs
    assert kwargs["precision"] == "bf16-mixed"
    assert kwargs["gradient_clip_val"] == 1.0
    assert kwargs["accumulate_grad_batches"] == 2
    assert cli.trainer.settings.rounds == 7
    loop_kwargs = cli.trainer.build_loop(cli.model, cli.datamodule).settings.client_trainer_kwargs()
    assert loop_kwargs["max_epochs"] == 1 and loop_kwargs["precision"] == "bf16-mixed"


def test_seed_is_linked_to_data_and_trainer():
    cli = parse("--seed_everything", "5")
    assert cli.trainer.settings.seed == 5 and cli.datamodule.seed == 5


def test_print_config_shows_federation_and_trainer_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(args=["fit", *BASE, "--config", str(ROOT / "configs/method/fedavgm.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for needle in ("rounds:", "client_fraction:", "lit_fed.FedAvgM", "precision:", "TinyCNN"):
        assert needle in out


def test_fit_then_validate_a_saved_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "fit",
        *BASE,
        "--trainer.rounds",
        "2",
        "--trainer.run_dir",
        str(run_dir),
        "--trainer.progress",
        "false",
    ]
    cli = build_cli(args=args)
    result = cli.trainer.federated_result
    assert len(result.history) == 2
    assert (run_dir / "checkpoints/last.ckpt").exists()
    assert (run_dir / "logs/metrics.csv").exists()
    assert (run_dir / "config.yaml").exists()
    cli = build_cli(
        args=[
            "validate",
            *BASE,
            "--trainer.run_dir",
            str(run_dir),
            "--ckpt_path",
            str(run_dir / "checkpoints/last.ckpt"),
        ]
    )
    assert cli.trainer.validate_result if hasattr(cli.trainer, "validate_result") else True
    expected = result.history[-1]
    metrics = cli.trainer.build_loop(cli.model, cli.datamodule)
    metrics.setup()
    metrics.restore(run_dir / "checkpoints/last.ckpt")
    evaluated = metrics.evaluate()
    assert evaluated["global_acc"] == pytest.approx(expected["global_acc"])
    assert evaluated["personal_acc"] == pytest.approx(expected["personal_acc"])


def test_resume_through_ckpt_path(tmp_path):
    run_dir = tmp_path / "run"
    common = [*BASE, "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    build_cli(args=["fit", *common, "--trainer.rounds", "1"])
    cli = build_cli(args=["fit", *common, "--trainer.rounds", "2", "--ckpt_path", str(run_dir / "checkpoints")])
    assert [h["round"] for h in cli.trainer.federated_result.history] == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer.server", "lit_fed.FedUnknown"], "FedUnknown"),
        (["--trainer.client_fraction", "1.5"], "client_fraction must be in"),
        (["--trainer.client_fraction", "0"], "client_fraction must be in"),
        (["--data.init_args.partitioner.init_args.alpha", "0"], "alpha"),
        (["--data.init_args.partitioner.init_args.alpha", "-1"], "alpha"),
        (["--data.init_args.num_clients", "500"], "500"),
        (["--trainer.max_epochs", "3"], "local_epochs"),
    ],
)
def test_bad_config_values_fail_with_a_clear_message(args, message, tmp_path, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        cli = build_cli(args=["fit", *BASE, *args, "--trainer.run_dir", str(tmp_path), "--trainer.progress", "false"])
        torch.manual_seed(0)
        assert cli is None
    text = str(info.value) + capsys.readouterr().err
    assert message in text
