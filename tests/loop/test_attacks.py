"""Byzantine attacks: exact poisoned uploads, label flipping, the attacker set, honest metrics, robust vs mean."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers import client_model

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.client.split import Head
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.loop.attacks import ByzantineAttack, GaussianNoise, LabelFlip, Scale, SignFlip, byzantine_clients
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAvg, WeightedMean
from lit_fed.server.robust import CenteredClipping, CoordinateMedian
from lit_fed.utils.seeding import torch_generator

ROOT = Path(__file__).resolve().parents[2]


def fake_loop(num_clients=10, seed=7, num_classes=4):
    """What the attack reads of a loop or a client worker: the seed, the number of clients, the data's classes."""
    return SimpleNamespace(seed=seed, num_clients=num_clients, data=SimpleNamespace(num_classes=num_classes))


def test_attacker_set_is_a_deterministic_function_of_seed_size_and_fraction():
    for n, fraction, expected in ((10, 0.2, 2), (10, 0.25, 3), (8, 0.25, 2), (20, 0.2, 4), (5, 0.0, 0)):
        chosen = byzantine_clients(3, n, fraction)
        assert len(chosen) == expected == len(set(chosen))
        assert chosen == sorted(chosen) and all(0 <= c < n for c in chosen)
        assert byzantine_clients(3, n, fraction) == chosen
    assert len({tuple(byzantine_clients(s, 20, 0.2)) for s in range(10)}) > 1  # the seed matters
    attack = ByzantineAttack(0.3)
    assert attack.attackers(fake_loop(seed=7)) == byzantine_clients(7, 10, 0.3)
    assert ByzantineAttack(0.3, seed=1).attackers(fake_loop(seed=7)) == byzantine_clients(1, 10, 0.3)
    assert attack.state_dict() == {}  # nothing to checkpoint: the set is recomputed from the seed
    with pytest.raises(ValueError, match="fraction"):
        ByzantineAttack(1.0)


def make_update(cid, rnd=2):
    torch.manual_seed(cid)
    received = {"w": torch.randn(1000, dtype=torch.float64), "n": torch.tensor(3)}
    trained = {"w": received["w"] + 0.1 * torch.randn(1000, dtype=torch.float64), "n": torch.tensor(4)}
    message = ServerMessage(round=rnd, client_id=cid, state=received)
    return ClientUpdate(client_id=cid, round=rnd, state=trained, num_samples=10), message


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (SignFlip(), lambda w_k, w_g, cid: w_g - (w_k - w_g)),
        (Scale(5.0), lambda w_k, w_g, cid: w_g + 5.0 * (w_k - w_g)),
        (Scale(-3.0), lambda w_k, w_g, cid: w_g - 3.0 * (w_k - w_g)),
        (
            GaussianNoise(0.5),
            lambda w_k, w_g, cid: (
                w_k + 0.5 * torch.randn(1000, generator=torch_generator(7, "attack", 2, cid), dtype=torch.float64)
            ),
        ),
    ],
    ids=["sign-flip", "scale-5", "scale-minus-3", "gaussian"],
)
def test_model_poisoning_uploads_exactly_the_specified_state(kind, expected):
    loop = fake_loop()
    attack = ByzantineAttack(0.3, kind)
    attackers = attack.attackers(loop)
    for cid in range(10):
        update, message = make_update(cid)
        out = attack.client_update(loop, update, message)
        if cid in attackers:
            torch.testing.assert_close(out.state["w"], expected(update.state["w"], message.state["w"], cid))
            assert out.state["n"].item() == 4  # integer buffers go up as trained
            assert out.num_samples == update.num_samples and out.client_id == cid
        else:
            assert out is update
    if isinstance(kind, GaussianNoise):
        update, message = make_update(attackers[0])
        noise = attack.client_update(loop, update, message).state["w"] - update.state["w"]
        assert 0.45 < float(noise.std()) < 0.55


def test_label_flip_makes_the_attacker_train_on_c_minus_1_minus_y(client_factory, datamodule_factory, tmp_path):
    dm = datamodule_factory(num_clients=5)
    seen = {}

    class Labels(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.setdefault(module.client_id, []).append(batch[1].clone())

    attack = ByzantineAttack(0.2, LabelFlip())
    loop = FederatedLoop(
        client_factory(),
        dm,
        FedAvg(),
        rounds=1,
        trainer_kwargs={"accelerator": "cpu", "callbacks": [Labels()]},
        callbacks=[attack],
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        checkpoint_every=0,
        eval_every=0,
    )
    loop.run()
    (attacker,) = attack.attackers(loop)
    for cid in range(5):
        original = torch.cat([y for _, y in dm.client_train_dataloader(cid, 0)])
        trained_on = torch.cat(seen[cid])
        assert torch.equal(trained_on, 3 - original if cid == attacker else original)
    poisoned = attack.client_dataloader(loop.runner.worker, attacker, 0, dm.client_train_dataloader(attacker, 0))
    assert len(poisoned) == len(dm.client_train_dataloader(attacker, 0))


def test_honest_personal_accuracy_is_pooled_over_honest_clients(client_factory, datamodule_factory, tmp_path):
    dm = datamodule_factory(num_clients=5)
    attack = ByzantineAttack(0.4, SignFlip())
    loop = FederatedLoop(
        client_factory(personal=[Head()]),
        dm,
        FedAvg(aggregator=CoordinateMedian()),
        rounds=2,
        trainer_kwargs={"accelerator": "cpu"},
        callbacks=[attack],
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        checkpoint_every=0,
    )
    result = loop.run()
    attackers = attack.attackers(loop)
    assert len(attackers) == 2
    last = result.history[-1]
    honest = [c for c in range(5) if c not in attackers]
    correct = total = 0
    for cid in honest:
        with client_model(loop, cid) as model, torch.no_grad():
            for x, y in dm.client_test_dataloader(cid):
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
    assert last["personal_acc_honest"] == pytest.approx(correct / total, abs=1e-9)
    assert last["personal_acc_honest_mean"] == pytest.approx(
        sum(loop.evaluation.last_personalized.per_client[c] for c in honest) / 3, abs=1e-9
    )
    assert last["byzantine_clients"] == attackers and last["byzantine_attackers"] == 2
    assert all("personal_acc_honest" in h for h in result.history)


def iid_datamodule():
    return FederatedDataModule(
        dataset=Synthetic(num_classes=4, num_train=960, num_test=120, image_size=8),
        partitioner=Dirichlet(alpha=10.0, min_size=10),
        num_clients=8,
        batch_size=16,
        eval_batch_size=64,
        seed=0,
    )


def test_mean_degrades_far_more_than_robust_rules_under_a_scaled_sign_flip(client_factory, tmp_path):
    """2 of 8 clients upload w_g - 10 (w_k - w_g): the mean collapses to chance, median/clipping keep learning."""
    final = {}
    for name, rule in (("mean", WeightedMean()), ("median", CoordinateMedian()), ("clip", CenteredClipping(1.0, 3))):
        loop = FederatedLoop(
            client_factory(),
            iid_datamodule(),
            FedAvg(aggregator=rule),
            rounds=2,
            trainer_kwargs={"accelerator": "cpu"},
            callbacks=[ByzantineAttack(0.25, Scale(-10.0))],
            run_dir=tmp_path / name,
            loggers=[],
            progress=False,
            checkpoint_every=0,
            personalized_eval=False,
        )
        final[name] = loop.run().history[-1]["global_acc"]
    assert final["mean"] < 0.35  # 4 classes: chance is 0.25
    assert final["median"] > final["mean"] + 0.2
    assert final["clip"] > final["mean"] + 0.2


def test_byzantine_config_runs_through_the_cli(tmp_path):
    base = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/tinycnn.yaml")]
    cli = build_cli(
        args=[
            "fit",
            *base,
            "--config",
            str(ROOT / "configs/method/partial_pfl_byzantine.yaml"),
            "--trainer.rounds",
            "1",
            "--data.init_args.num_clients",
            "5",
            "--trainer.run_dir",
            str(tmp_path),
            "--trainer.progress",
            "false",
        ]
    )
    (last,) = cli.trainer.federated_result.history
    assert len(last["byzantine_clients"]) == 1 and "personal_acc_honest" in last
    assert isinstance(cli.trainer.server.aggregator, CenteredClipping)
    assert "personal_acc_honest" in (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0]
    torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)  # as LightningCLI's --ckpt_path reads it
