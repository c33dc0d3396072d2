"""FedLSD (Lee et al. 2021):

(1 − β)·CE + β·KL(global ‖ local) over all classes with the frozen received global model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ServerMessage
from lit_fed.methods import FedLSDClient
from lit_fed.metrics.fidelity import AGREEMENT_KEY, KL_KEY
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[2]
DATASET = "--data.init_args.dataset.init_args"
SMALL_DATA = [f"{DATASET}.num_train", "160", f"{DATASET}.num_test", "80"]


def make_client(seed: int = 0, **kwargs) -> FedLSDClient:
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.1))
    return FedLSDClient(TinyCNN(in_channels=1, num_classes=4), **kwargs)


def batch(seed: int = 1, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def shifted_state(client: FedLSDClient, seed: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: (v + 0.3 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v.clone()
        for k, v in client.shared_state().items()
    }


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p = [math.exp(v / tau) / sum(math.exp(u / tau) for u in t_row) for v in t_row]
        q = [math.exp(v / tau) / sum(math.exp(u / tau) for u in s_row) for v in s_row]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total / student.shape[0]


@pytest.mark.parametrize(("tau", "beta"), [(1.0, 0.3), (3.0, 0.8)])
def test_training_loss_equals_weighted_ce_plus_weighted_kl(tau, beta):
    client = make_client(tau=tau, beta=beta)
    client.receive_global(ServerMessage(round=0, client_id=0, state=shifted_state(client)))
    with torch.no_grad():
        for param in client.parameters():
            param.mul_(1.1)
    x, y = batch()
    loss = client.training_step((x, y), 0)
    with torch.no_grad():
        student, teacher = client(x), client.teacher(x)
    expected = (1 - beta) * float(F.cross_entropy(student, y)) + beta * hand_kl(student, teacher, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_beta_zero_is_plain_cross_entropy_and_bounds_are_checked():
    client = make_client(beta=0.0)
    x, y = batch()
    expected = float(F.cross_entropy(client(x).detach(), y))
    assert client.training_step((x, y), 0).item() == pytest.approx(expected, rel=1e-6)
    for beta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            make_client(beta=beta)


def test_plain_trainer_with_a_teacher_set_by_hand_keeps_it_bit_identical(datamodule_factory, tmp_path):
    client = make_client()
    client.set_teacher(shifted_state(client))
    before = {k: v.clone() for k, v in client.teacher.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=5
    )
    trainer.fit(client, datamodule=datamodule_factory())
    assert all(torch.equal(v, before[k]) for k, v in client.teacher.state_dict().items())
    assert all(p.grad is None for p in client.teacher.parameters())
    assert math.isfinite(float(trainer.callback_metrics["train_lsd"]))
    metrics = client.build_update(num_samples=1).metrics
    assert 0.0 <= metrics[AGREEMENT_KEY] <= 1.0 and metrics[KL_KEY] >= 0.0


def run_cli(run_dir: Path, *extra: str) -> Any:
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/fedlsd.yaml")]
    args += [*SMALL_DATA, "--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    cli = build_cli(args=[*args, *extra])
    assert isinstance(cli.model, FedLSDClient) and cli.model.beta == 0.3
    return cli


def test_config_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)  # `lit-fed fit` with the method config: 2 rounds
    full = cli.trainer.federated_result
    assert len(full.history) == 2 and KL_KEY in full.history[-1]
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
