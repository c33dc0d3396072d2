"""FedKD (Wu et al., Nature Communications 2022):

Mutual-distillation loss by hand, mentee-only upload, SVD energy rule, bytes, CLI.
"""

from __future__ import annotations

import types
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ServerMessage
from lit_fed.client.serialization import encoded_size, update_nbytes
from lit_fed.compression import SVD, CompressUpload, as_matrix, energy_schedule, svd_reconstruct
from lit_fed.methods import FedKDClient, fedkd_compression, fedkd_loss
from lit_fed.metrics.fidelity import AGREEMENT_KEY, KL_KEY
from lit_fed.models import MLP, TinyCNN
from lit_fed.trainer import FederatedTrainer

ROOT = Path(__file__).resolve().parents[2]


def make_client(seed: int = 0, **kwargs) -> FedKDClient:
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.1))
    return FedKDClient(TinyCNN(in_channels=1, num_classes=4, width=8), **kwargs)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)), batchmean, written out."""
    p = F.softmax(p_logits, dim=1)
    return (p * (p.log() - F.log_softmax(q_logits, dim=1))).sum(dim=1).mean()


def test_loss_equals_the_hand_computed_formula_with_z_detached():
    generator = torch.Generator().manual_seed(0)
    t_logits = torch.randn(5, 4, generator=generator).requires_grad_()
    s_logits = torch.randn(5, 4, generator=generator).requires_grad_()
    h_t = torch.randn(5, 6, generator=generator).requires_grad_()
    h_s = torch.randn(5, 6, generator=generator).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 1])
    terms = fedkd_loss(t_logits, s_logits, y, h_t, h_s)
    ce_t, ce_s = F.cross_entropy(t_logits, y), F.cross_entropy(s_logits, y)
    z = float((ce_t + ce_s).detach())
    expected = {
        "mentor_ce": ce_t,
        "mentee_ce": ce_s,
        "kd_mentor": kl(s_logits, t_logits) / z,  # KL(p_S || p_T) / Z
        "kd_mentee": kl(t_logits, s_logits) / z,  # KL(p_T || p_S) / Z
        "hidden": ((h_t - h_s) ** 2).mean() / z,
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value)
    # Z is a constant: the gradient of each term is that of its numerator divided by Z; each KL's target is detached
    (grad_t,) = torch.autograd.grad(terms["kd_mentor"], t_logits, retain_graph=True)
    (hand_t,) = torch.autograd.grad(kl(s_logits.detach(), t_logits) / z, t_logits)
    torch.testing.assert_close(grad_t, hand_t)
    assert torch.autograd.grad(terms["kd_mentor"], s_logits, retain_graph=True, allow_unused=True)[0] is None
    (grad_h,) = torch.autograd.grad(terms["hidden"], h_s)
    torch.testing.assert_close(grad_h, 2 * (h_s - h_t).detach() / (h_s.numel() * z))
    full = fedkd_loss(t_logits, s_logits, y, detach_targets=False)
    assert torch.autograd.grad(full["kd_mentor"], s_logits, allow_unused=True)[0] is not None


def test_client_training_loss_is_mentor_ce_plus_the_fedkd_terms():
    client = make_client()
    assert isinstance(client.mentee, TinyCNN) and client.mentee.num_features == 64  # default mentee: width 16
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    output = client.compute_step((x, y))
    extras = client.extra_losses((x, y), output)
    with torch.no_grad():
        mentor_logits, mentor_hidden = client.backbone(x), client.embed(x)
        mentee_hidden = client.mentee_embed(x)
        mentee_logits = client.mentee.get_classifier()(mentee_hidden)
    expected = fedkd_loss(mentor_logits, mentee_logits, y, mentor_hidden, client.hidden_projection(mentee_hidden))
    assert set(extras) == {"mentee_ce", "kd_mentor", "kd_mentee", "hidden"}
    for name, value in extras.items():
        torch.testing.assert_close(value.detach(), expected[name].detach())
    torch.testing.assert_close(output.loss.detach(), expected["mentor_ce"])
    torch.testing.assert_close(client.predict_logits(x), mentor_logits)
    torch.testing.assert_close(client.global_logits(x), mentee_logits)


def test_only_the_mentee_is_uploaded_and_fidelity_is_reported(datamodule_factory):
    dm = datamodule_factory(num_clients=2)
    client = make_client()
    assert client.shared_keys() == [k for k in client.state_dict() if k.startswith("mentee.")]
    assert set(client.personal_keys()) == {k for k in client.state_dict() if not k.startswith("mentee.")}
    assert "hidden_projection.weight" in client.personal_keys()  # mentor 32-d, mentee 64-d
    client.receive_global(ServerMessage(round=0, client_id=0, state=client.shared_state()))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(client, train_dataloaders=dm.client_train_dataloader(0))
    update = client.build_update(num_samples=10)
    assert set(update.state) == set(client.shared_keys())
    assert 0.0 <= update.metrics[AGREEMENT_KEY] <= 1.0 and update.metrics[KL_KEY] >= 0.0


def test_svd_upload_keeps_the_smallest_rank_above_the_energy_and_reports_the_factor_bytes(datamodule_factory):
    torch.manual_seed(0)
    client = FedKDClient(
        TinyCNN(in_channels=1, num_classes=4, width=8),
        mentee=MLP(64, 4, hidden=(48,)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.2),
    )
    dm = datamodule_factory(num_clients=2)
    message = ServerMessage(round=3, client_id=0, state=client.shared_state())
    client.receive_global(message)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(client, train_dataloaders=dm.client_train_dataloader(0))
    update = client.build_update(num_samples=10)
    rounds = 10
    threshold = energy_schedule(3, rounds)  # T(t) = 0.95 + (3/10)(0.98 - 0.95)
    assert threshold == pytest.approx(0.959)
    upload = CompressUpload(SVD(0.95, 0.98), residual=False)
    loop = types.SimpleNamespace(
        global_state=message.state, round=3, rounds=rounds, seed=0, run_dir=None, progress=False
    )
    upload.on_round_start(loop, 3)
    sent = upload.client_update(loop, update, message)
    wire = upload.last_wire
    compressed = sorted({k[len("state/") :].split("#")[0] for k in wire if "#svd." in k})
    assert "mentee.body.0.weight" in compressed  # the 48x64 matrix; small ones may go dense (never inflated)
    for key in compressed:
        delta = as_matrix(update.state[key].float() - message.state[key].float())
        sigma = torch.linalg.svdvals(delta.double())
        energy = torch.cumsum(sigma**2, 0) / (sigma**2).sum()
        u, s, v = (wire[f"state/{key}#svd.{part}"] for part in ("U", "S", "V"))
        k = s.numel()
        assert energy[k - 1] > threshold and (k == 1 or energy[k - 2] <= threshold)  # smallest rank above T(t)
        assert k < min(delta.shape) or key != "mentee.body.0.weight"  # something was dropped
        rebuilt = message.state[key] + svd_reconstruct(u, s, v).reshape(message.state[key].shape)  # U diag(s) V^T
        torch.testing.assert_close(sent.state[key], rebuilt)
    assert sent.wire_nbytes == encoded_size(wire) < update_nbytes(update)  # the factors' serialized size
    assert set(sent.state) == set(client.shared_keys())


def run_cli(run_dir: Path):
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/fedkd.yaml")]
    args += ["--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    return build_cli(args=args)


def test_config_runs_two_rounds_with_compression_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)
    assert isinstance(cli.model, FedKDClient)
    assert [type(c).__name__ for c in cli.trainer.round_callbacks] == [type(c).__name__ for c in fedkd_compression()]
    full = cli.trainer.federated_result
    last = full.history[-1]
    assert {AGREEMENT_KEY, KL_KEY, "compression_ratio_up", "compression_ratio_down"} <= set(last)
    assert set(full.global_state) == set(cli.model.shared_keys())
    fresh = cli.parser.instantiate_classes(cli.config)["fit"]
    trainer = FederatedTrainer(**fresh.trainer.as_dict())
    trainer.fit(fresh.model, datamodule=fresh.data, ckpt_path=str(tmp_path / "checkpoints/round_00001.ckpt"))
    resumed = trainer.federated_result
    a, b = full.history[-1], resumed.history[-1]
    assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
        k: v for k, v in b.items() if not k.endswith("_seconds")
    }
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)
