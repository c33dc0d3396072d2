"""FedNTD (Lee et al., NeurIPS 2022):

Not-true distillation from the frozen received global model, fidelity metrics, CLI.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ServerMessage
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import FedNTDClient
from lit_fed.metrics.fidelity import AGREEMENT_KEY, KL_KEY
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[2]
DATASET = "--data.init_args.dataset.init_args"
SMALL_DATA = [f"{DATASET}.num_train", "160", f"{DATASET}.num_test", "80"]


def make_client(seed: int = 0, **kwargs) -> FedNTDClient:
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.1))
    return FedNTDClient(TinyCNN(in_channels=1, num_classes=4), **kwargs)


def batch(seed: int = 1, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def other_state(client: FedNTDClient, seed: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: (v + 0.3 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v.clone()
        for k, v in client.shared_state().items()
    }


def hand_ntd(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, tau: float) -> float:
    """Σ_i KL over the classes c ≠ y_i, written with explicit loops (batchmean)."""
    total = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), target.tolist(), strict=True):
        s_nt = [v / tau for c, v in enumerate(s_row) if c != y]
        t_nt = [v / tau for c, v in enumerate(t_row) if c != y]
        zs, zt = sum(math.exp(v) for v in s_nt), sum(math.exp(v) for v in t_nt)
        p = [math.exp(v) / zt for v in t_nt]
        q = [math.exp(v) / zs for v in s_nt]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total / len(target)


def test_training_loss_equals_ce_plus_beta_tau_squared_not_true_kl():
    client = make_client(tau=2.0, beta=0.7)
    client.receive_global(ServerMessage(round=0, client_id=0, state=other_state(client)))
    with torch.no_grad():  # the student drifts away from the received teacher
        for param in client.parameters():
            param.add_(0.2)
    x, y = batch()
    loss = client.training_step((x, y), 0)
    with torch.no_grad():
        student, teacher = client(x), client.teacher(x)
    ce = float(torch.nn.functional.cross_entropy(student, y))
    assert loss.item() == pytest.approx(ce + 0.7 * 4.0 * hand_ntd(student, teacher, y, 2.0), rel=1e-5)


def test_teacher_is_the_received_global_model_frozen_in_eval_mode():
    client = make_client()
    state = other_state(client)
    client.receive_global(ServerMessage(round=0, client_id=0, state=state))
    teacher = client.teacher
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, state[f"backbone.{key}"])
    assert not any(k.startswith("fidelity") or "teacher" in k for k in client.state_dict())  # never uploaded
    client.receive_global(ServerMessage(round=1, client_id=0, state=other_state(client, seed=9)))
    assert client.teacher is teacher  # refreshed in place every round


def test_teacher_gets_no_gradient_and_stays_bit_identical_under_a_plain_trainer(datamodule_factory, tmp_path):
    dm = datamodule_factory()
    client = make_client()
    hand_teacher = TinyCNN(in_channels=1, num_classes=4)
    client.set_teacher(hand_teacher)  # a teacher set by hand, no federated loop
    before = {k: v.clone() for k, v in client.teacher.state_dict().items()}
    weights_before = {k: v.clone() for k, v in client.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=5
    )
    trainer.fit(client, datamodule=dm)
    for key, value in client.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in client.teacher.parameters())
    assert any(not torch.equal(v, weights_before[k]) for k, v in client.state_dict().items())
    for name in ("train_loss", "train_ntd", "train_fidelity_agreement", "train_fidelity_kl"):
        assert math.isfinite(float(trainer.callback_metrics[name])), name
    assert "val_acc" in trainer.callback_metrics
    assert client.teacher.conv.weight.device.type == "cpu"


def test_teacher_from_a_state_dict_and_default_snapshot():
    client = make_client()
    state = other_state(client)
    client.set_teacher(state)
    assert torch.equal(client.teacher.conv.weight, state["backbone.conv.weight"])
    fresh = make_client()
    x, _ = batch()
    torch.testing.assert_close(fresh.teacher_logits(x), fresh.eval()(x))  # none set: a snapshot of itself


def test_update_metrics_report_hand_computed_fidelity():
    client = make_client()
    client.receive_global(ServerMessage(round=0, client_id=3, state=other_state(client)))
    agree = kl = 0.0
    count = 0
    for seed, n in ((1, 5), (2, 3)):
        x, y = batch(seed, n)
        output = client.compute_step((x, y))
        client.extra_losses((x, y), output)
        student, teacher = output.logits.detach(), client.teacher(x)
        agree += float((student.argmax(1) == teacher.argmax(1)).sum())
        for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
            p = [math.exp(v) / sum(math.exp(u) for u in t_row) for v in t_row]
            q = [math.exp(v) / sum(math.exp(u) for u in s_row) for v in s_row]
            kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        count += n
    metrics = client.build_update(num_samples=8).metrics
    assert metrics[AGREEMENT_KEY] == pytest.approx(agree / count)
    assert metrics[KL_KEY] == pytest.approx(kl / count, rel=1e-5)


def test_loop_round_metrics_average_the_clients_fidelity(datamodule_factory, tmp_path):
    reported = []

    class Record(LoopCallback):
        def client_update(self, loop, update, message):
            reported.append(dict(update.metrics))
            return update

    loop = FederatedLoop(
        make_client(),
        datamodule_factory(),
        rounds=1,
        trainer_kwargs={"accelerator": "cpu", "devices": 1},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        eval_every=0,
        checkpoint_every=0,
        callbacks=[Record()],
    )
    (metrics,) = loop.run().history
    assert len(reported) == 4
    for key in (AGREEMENT_KEY, KL_KEY):
        assert metrics[key] == pytest.approx(sum(r[key] for r in reported) / 4)


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="tau"):
        make_client(tau=0.0)
    with pytest.raises(ValueError, match="beta"):
        make_client(beta=-1.0)


def run_cli(run_dir: Path, *extra: str) -> Any:
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/fedntd.yaml")]
    args += [*SMALL_DATA, "--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    cli = build_cli(args=[*args, *extra])
    assert isinstance(cli.model, FedNTDClient)
    return cli


def test_config_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)  # `lit-fed fit` with the method config: 2 rounds
    full = cli.trainer.federated_result
    assert len(full.history) == 2 and AGREEMENT_KEY in full.history[-1]
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
