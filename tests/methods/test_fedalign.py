"""FedAlign (Mendieta et al., CVPR 2022): slice of the last stage, power-iteration spectral norm, μ·CE scaling, CLI."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_fed.cli import build_cli
from lit_fed.losses import spectral_norm_power_iteration, transmitting_matrix
from lit_fed.methods import FedAlignClient
from lit_fed.methods.fedalign import last_stage, slim_channels, slim_forward
from lit_fed.models import FedAvgCNN, TinyCNN, resnet8

ROOT = Path(__file__).resolve().parents[2]
DATASET = "--data.init_args.dataset.init_args"
SMALL_DATA = [f"{DATASET}.num_train", "160", f"{DATASET}.num_test", "80"]


def resnet_client(**kwargs) -> FedAlignClient:
    torch.manual_seed(0)
    return FedAlignClient(resnet8(num_classes=10), optimizer=lambda p: torch.optim.SGD(p, lr=0.05), **kwargs)


def images(n: int = 8, channels: int = 3, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_slim_channels_follow_the_authors_make_divisible():
    assert [slim_channels(c, 0.25, 8) for c in (16, 32, 64, 512)] == [8, 8, 16, 128]
    assert [slim_channels(c, 0.25, 1) for c in (1, 8, 16, 64)] == [1, 2, 4, 16]


def test_default_last_stages():
    assert last_stage(resnet8()) == ("layer3",)
    assert last_stage(FedAvgCNN()) == ("conv2",)
    assert last_stage(TinyCNN()) == ("conv", "bn", "act")
    with pytest.raises(ValueError, match="stage="):
        last_stage(torch.nn.Linear(2, 2))


def test_full_width_slice_equals_the_stage_in_training_mode_and_leaves_running_stats_alone():
    model = resnet8()
    stage = model.layer3
    x = torch.rand(4, 32, 16, 16)
    reference = copy.deepcopy(stage).train()(x)
    running = stage[0].bn1.running_mean.clone()
    torch.testing.assert_close(slim_forward(stage, x, width=1.0), reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(stage[0].bn1.running_mean, running)
    out = slim_forward(stage, x[:, :8], width=0.25)
    assert out.shape == (4, 16, 8, 8)


def test_power_iteration_spectral_norm_matches_linalg_on_the_stage_transmitting_matrix():
    client = resnet_client()
    x, y = images()
    client.compute_step((x, y))
    stage_input, stage_output = client._stage_io
    matrix = transmitting_matrix(stage_input, stage_output)
    assert matrix.shape == (8, 32, 64)
    expected = torch.linalg.matrix_norm(matrix, 2)
    torch.testing.assert_close(spectral_norm_power_iteration(matrix, 10), expected, rtol=1e-4, atol=1e-6)
    sliced_in, sliced_out = client.slice_forward(stage_input)
    assert sliced_in.shape[1] == 8 and sliced_out.shape[1] == 16
    small = transmitting_matrix(sliced_in, sliced_out)
    torch.testing.assert_close(
        spectral_norm_power_iteration(small, 10), torch.linalg.matrix_norm(small, 2), rtol=1e-4, atol=1e-6
    )


def test_lipschitz_term_is_scaled_to_mu_times_ce_and_reaches_only_the_sliced_last_stage():
    client = resnet_client(mu=0.45)
    x, y = images()
    output = client.compute_step((x, y))
    ce = output.loss.item()
    term = client.extra_losses((x, y), output)["lipschitz"]
    assert term.item() == pytest.approx(0.45 * ce, rel=1e-5)
    term.backward()
    for name, param in client.named_parameters():
        if not name.startswith("backbone.layer3."):
            assert param.grad is None, name
    conv = client.backbone.layer3[0].conv1.weight.grad
    assert conv.abs().sum() > 0
    assert torch.count_nonzero(conv[16:]) == 0 and torch.count_nonzero(conv[:, 8:]) == 0  # only the ω-slice


def test_training_step_adds_the_term_and_matches_ce_times_one_plus_mu():
    client = resnet_client(mu=0.45)
    x, y = images()
    loss = client.training_step((x, y), 0)
    with torch.no_grad():
        ce = F.cross_entropy(client(x), y).item()  # train-mode BN: the same batch statistics
    assert loss.item() == pytest.approx(1.45 * ce, rel=1e-5)
    assert math.isfinite(loss.item())


@pytest.mark.parametrize(
    ("backbone", "shape"),
    [(lambda: FedAvgCNN(in_channels=1, num_classes=4, input_size=28), (4, 1, 28, 28)), (TinyCNN, (4, 1, 8, 8))],
)
def test_small_cnns_have_a_last_stage_too(backbone, shape):
    torch.manual_seed(0)
    client = FedAlignClient(backbone())
    x, y = torch.randn(*shape), torch.randint(0, 4, (shape[0],))
    output = client.compute_step((x, y))
    term = client.extra_losses((x, y), output)["lipschitz"]
    assert term.item() == pytest.approx(0.45 * output.loss.item(), rel=1e-5)


def test_eval_forward_captures_nothing_and_bad_arguments_raise():
    client = resnet_client()
    client.eval()
    with torch.no_grad():
        client.compute_step(images(2))
    assert client._stage_io is None
    with pytest.raises(ValueError, match="width"):
        resnet_client(width=1.0)
    with pytest.raises(ValueError, match="no module"):
        resnet_client(stage="layer9")


def test_plain_trainer_fit_with_resnet8_on_tiny_cifar_like_data(tmp_path):
    x, y = images(32, seed=4)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    client = resnet_client()
    before = client.backbone.layer3[0].conv1.weight.detach().clone()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=1
    )
    trainer.fit(client, train_dataloaders=loader)
    assert math.isfinite(float(trainer.callback_metrics["train_lipschitz"]))
    assert not torch.equal(before, client.backbone.layer3[0].conv1.weight)


def run_cli(run_dir: Path, *extra: str) -> Any:
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/fedalign.yaml")]
    args += [*SMALL_DATA, "--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    cli = build_cli(args=[*args, *extra])
    assert isinstance(cli.model, FedAlignClient) and cli.model.stage == ("conv", "bn", "act")
    assert cli.trainer.settings.trainer_kwargs["gradient_clip_val"] == 10.0
    return cli


def test_config_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)  # `lit-fed fit` with the method config: 2 rounds
    full = cli.trainer.federated_result
    assert len(full.history) == 2
    # Resume from the round-0 checkpoint with a fresh model and datamodule instantiated from the same parsed config
    # (`lit-fed fit --ckpt_path ...` without paying for a second parse).
    fresh = cli.parser.instantiate_classes(cli.config)["fit"]
    assert fresh.model is not cli.model
    cli.trainer.fit(fresh.model, datamodule=fresh.data, ckpt_path=str(tmp_path / "checkpoints/round_00001.ckpt"))
    resumed = cli.trainer.federated_result
    assert [h["round"] for h in resumed.history] == [1, 2]
    a, b = full.history[-1], resumed.history[-1]
    assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
        k: v for k, v in b.items() if not k.endswith("_seconds")
    }
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)
