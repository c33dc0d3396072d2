"""Long-tailed baselines: FedRoD with the balanced softmax (Chen & Chao 2022) and a FedETF-style fixed ETF
classifier (Li et al. 2023)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import store_of

from lit_fed.cli import build_cli
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import FedETFClient, FedRoDClient, balanced_softmax_loss
from lit_fed.methods.lt_baselines import etf_logits
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}


def _batch(seed: int = 0, n: int = 12):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def _run(client, tmp_path, rounds=2):
    dm = FederatedDataModule(
        Synthetic(num_classes=4, num_train=800, num_test=120, image_size=8),
        Dirichlet(alpha=1.0, min_size=5),
        num_clients=4,
        batch_size=16,
        imbalance_ratio=10,
    )
    loop = FederatedLoop(
        client, dm, rounds=rounds, trainer_kwargs=CPU, run_dir=tmp_path, loggers=[], progress=False, checkpoint_every=0
    )
    return loop, loop.run()


# -- balanced softmax / FedRoD ------------------------------------------------------------------------------------


def test_balanced_softmax_equals_the_hand_computed_value():
    logits = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
    target = torch.tensor([0, 2])
    counts = torch.tensor([50, 5, 1])
    expected = 0.0
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        adjusted = [z + math.log(n) for z, n in zip(row, counts.tolist(), strict=True)]
        expected += -(adjusted[y] - math.log(sum(math.exp(a) for a in adjusted))) / 2
    assert float(balanced_softmax_loss(logits, target, counts)) == pytest.approx(expected, rel=1e-6)
    # the prior's normalization is a constant shift: counts and frequencies give the same loss
    torch.testing.assert_close(
        balanced_softmax_loss(logits, target, counts), balanced_softmax_loss(logits, target, counts / counts.sum())
    )
    # a class the client has no data of gets probability 0 (logit −inf), not a finite penalty
    zero = torch.tensor([50, 0, 1])
    expected_zero = F.cross_entropy(logits[:, [0, 2]] + torch.tensor([50.0, 1.0]).log(), torch.tensor([0, 1]))
    torch.testing.assert_close(balanced_softmax_loss(logits, target, zero), expected_zero)


def test_fedrod_losses_reach_the_right_parameters_and_predictions_add_up():
    torch.manual_seed(0)
    client = FedRoDClient(TinyCNN(1, 4))
    x, y = batch = _batch()
    with pytest.raises(ValueError, match="label counts"):
        client.compute_step(batch)
    counts = torch.tensor([40, 20, 5, 1])
    client.set_label_counts(counts)
    output = client.compute_step(batch)
    f = client.embed(x)
    torch.testing.assert_close(output.loss, F.cross_entropy(client.generic_head(f) + counts.float().log(), y))
    extras = client.extra_losses(batch, output)
    torch.testing.assert_close(
        extras["personal_ce"], F.cross_entropy(client.generic_head(f) + client.personal_head(f), y)
    )
    params = dict(client.named_parameters())
    task = torch.autograd.grad(output.loss, list(params.values()), retain_graph=True, allow_unused=True)
    assert {n for n, g in zip(params, task, strict=True) if g is not None} == {
        n for n in params if n.startswith("backbone.")
    }
    personal = torch.autograd.grad(extras["personal_ce"], list(params.values()), allow_unused=True)
    assert {n for n, g in zip(params, personal, strict=True) if g is not None} == {
        "personal_head.weight",
        "personal_head.bias",
    }
    with torch.no_grad():
        torch.testing.assert_close(client.global_logits(x), client.generic_head(f))
        torch.testing.assert_close(client.predict_logits(x), client.generic_head(f) + client.personal_head(f))
    assert set(client.personal_keys()) == {"personal_head.weight", "personal_head.bias"}
    assert "backbone.fc.weight" in client.shared_keys()


def test_fedrod_reads_each_clients_label_counts_and_keeps_personal_heads(tmp_path):
    seen = {}

    class Recording(FedRoDClient):
        def on_train_start(self) -> None:
            super().on_train_start()
            seen[self.client_id] = self.class_counts.clone()

    torch.manual_seed(0)
    loop, result = _run(Recording(TinyCNN(1, 4)), tmp_path)
    for cid, counts in seen.items():
        assert torch.equal(counts, loop.datamodule.client_label_counts(cid))
    heads = [store_of(loop).get(cid)["personal_head.weight"] for cid in range(4)]
    assert not torch.equal(heads[0], heads[1])
    assert "backbone.fc.weight" in result.global_state and "personal_head.weight" not in result.global_state


# -- FedETF ---------------------------------------------------------------------------------------------------


def test_fedetf_classifier_is_a_fixed_simplex_etf_and_logits_are_scaled_cosines():
    torch.manual_seed(0)
    client = FedETFClient(TinyCNN(1, 4), temperature=3.0)
    etf = client.etf
    assert etf.shape == (4, 32)
    torch.testing.assert_close(etf.norm(dim=1), torch.ones(4))
    cosines = (etf @ etf.T)[~torch.eye(4, dtype=torch.bool)]
    torch.testing.assert_close(cosines, torch.full_like(cosines, -1 / 3), rtol=0, atol=1e-6)
    assert not any(k.startswith("etf") for k in client.state_dict())  # never communicated
    assert "temperature" in client.shared_keys() and client.temperature.requires_grad
    assert not any(k.startswith("backbone.fc") for k in client.state_dict())  # the unused linear head is dropped
    x, _ = _batch()
    with torch.no_grad():
        z = client.projection(client.embed(x))
        expected = 3.0 * F.normalize(z, dim=1) @ etf.T
        torch.testing.assert_close(client(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(etf_logits(z, etf, 3.0), expected, rtol=1e-5, atol=1e-5)
    fixed = FedETFClient(TinyCNN(1, 4), learn_temperature=False)
    assert "temperature" not in fixed.state_dict() and not any(p.ndim == 0 for p in fixed.parameters())


def test_fedetf_classifier_is_never_updated(tmp_path):
    torch.manual_seed(0)
    client = FedETFClient(TinyCNN(1, 4))
    before = client.etf.clone()
    temperature = float(client.temperature.detach())
    _, result = _run(client, tmp_path)
    assert torch.equal(client.etf, before)
    assert float(result.global_state["temperature"]) != temperature  # τ is learned (and aggregated)
    assert client.etf.grad is None and not client.etf.requires_grad


# -- the CLI contract --------------------------------------------------------------------------------------------

BASE = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/tinycnn.yaml")]
LONG_TAIL = ["--data.init_args.imbalance_ratio", "20", "--data.init_args.dataset.init_args.num_train", "1200"]


def _fit(config: str, run_dir: Path, *extra: str):
    args = ["fit", *BASE, "--config", str(ROOT / f"configs/method/{config}.yaml"), *LONG_TAIL, "--trainer.rounds", "2"]
    args += ["--trainer.run_dir", str(run_dir), "--trainer.progress", "false", *extra]
    return build_cli(args=args).trainer.federated_result


@pytest.mark.parametrize(("config", "cls"), [("fedrod_bsm", FedRoDClient), ("fedetf", FedETFClient)])
def test_config_runs_reports_shot_groups_and_resumes_to_the_same_numbers(config, cls, tmp_path):
    assert isinstance(
        build_cli(args=[*BASE, "--config", str(ROOT / f"configs/method/{config}.yaml")], run=False).model, cls
    )
    full = _fit(config, tmp_path / "full")
    last = full.history[-1]
    for prefix in ("global_acc", "personal_acc"):
        for group in ("many", "medium", "few"):
            assert 0.0 <= last[f"{prefix}_{group}"] <= 1.0
    resumed = _fit(config, tmp_path / "resumed", "--ckpt_path", str(tmp_path / "full/checkpoints/round_00001.ckpt"))
    keys = [k for k in last if "acc" in k or k == "train_loss"]
    assert {k: resumed.history[-1][k] for k in keys} == {k: last[k] for k in keys}
