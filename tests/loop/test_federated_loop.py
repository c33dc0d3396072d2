import math

import pytest
import torch
from helpers import client_model, store_of

from lit_fed.client.module import FederatedClient
from lit_fed.client.split import Head
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import load_checkpoint
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.state_store import DiskStateStore
from lit_fed.server import FedAvg
from lit_fed.server.fedopt import FedAdam

CPU = {"accelerator": "cpu", "devices": 1}


def run_loop(client, dm, tmp_path, name, strategy=None, resume=None, **kwargs):
    kwargs.setdefault("rounds", 3)
    loop = FederatedLoop(
        client,
        dm,
        strategy or FedAvg(),
        trainer_kwargs=CPU,
        run_dir=tmp_path / name,
        loggers=[],
        progress=False,
        **kwargs,
    )
    return loop, loop.run(resume_from=resume)


def test_round_aggregates_client_updates_by_fedavg(client_factory, datamodule, tmp_path):
    """The new global state equals the sample-weighted mean of the updates the clients produced."""
    captured = []

    class Capture(FedAvg):
        def aggregate_train(self, round, updates, global_state):
            captured.append([(u.num_samples, dict(u.state)) for u in updates])
            return super().aggregate_train(round, updates, global_state)

    _, result = run_loop(client_factory(), datamodule, tmp_path, "a", Capture(), rounds=1)
    (updates,) = captured
    total = sum(n for n, _ in updates)
    for key, value in result.global_state.items():
        if torch.is_floating_point(value):
            expected = sum(n / total * s[key].double() for n, s in updates)
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    assert [n for n, _ in updates] == [datamodule.client_num_train_samples(c) for c in range(4)]


def test_training_improves_accuracy_and_writes_artifacts(client_factory, datamodule, tmp_path):
    _, result = run_loop(client_factory(), datamodule, tmp_path, "b", rounds=4)
    first, last = result.history[0], result.history[-1]
    assert last["global_acc"] > 0.5 > 0.25  # 4 balanced classes: chance is 0.25
    assert last["train_loss"] < first["train_loss"]
    for key in (
        "personal_acc",
        "personal_acc_mean",
        "personal_acc_std",
        "personal_acc_p10",
        "mb_up",
        "mb_down",
    ):
        assert key in last and math.isfinite(last[key])
    assert result.summary["global_acc"]["best"] >= result.summary["global_acc"]["last"]
    assert (result.run_dir / "accuracy.png").stat().st_size > 1000
    assert (result.run_dir / "partition.png").exists()
    assert result.last_checkpoint is not None and result.last_checkpoint.exists()


def test_personalized_accuracy_is_pooled_exactly(client_factory, datamodule, tmp_path):
    """Pooled accuracy = Σ correct / Σ samples over clients, not the mean of client accuracies."""
    loop, result = run_loop(client_factory(personal=[Head()]), datamodule, tmp_path, "c", rounds=2)
    metrics = loop.evaluate()
    correct = total = 0
    accs = []
    for cid in range(datamodule.num_clients):
        c = n = 0
        with client_model(loop, cid) as model, torch.no_grad():
            for x, y in datamodule.client_test_dataloader(cid):
                c += int((model(x).argmax(1) == y).sum())
                n += len(y)
        correct, total = correct + c, total + n
        accs.append(c / n)
    assert metrics["personal_acc"] == pytest.approx(correct / total, abs=1e-6)
    assert metrics["personal_acc_mean"] == pytest.approx(sum(accs) / len(accs), abs=1e-6)


def test_personal_head_persists_per_client(client_factory, datamodule, tmp_path):
    loop, _ = run_loop(client_factory(personal=[Head()]), datamodule, tmp_path, "d", rounds=2)
    heads = [store_of(loop).get(c)["backbone.fc.weight"] for c in range(4)]
    assert all(h is not None for h in heads)
    assert not torch.equal(heads[0], heads[1])
    assert "backbone.fc.weight" not in loop.global_state
    assert set(store_of(loop).get(0)) == {"backbone.fc.weight", "backbone.fc.bias"}


class Interrupt(LoopCallback):
    def __init__(self, at_round):
        self.at_round = at_round

    def on_round_start(self, loop, round):
        if round == self.at_round:
            raise KeyboardInterrupt


@pytest.mark.parametrize("disk", [False, True])
def test_resume_reaches_the_same_numbers(client_factory, datamodule_factory, tmp_path, disk):
    """An interrupted run resumed from its last round checkpoint equals an uninterrupted one."""

    def store(name):
        return DiskStateStore(tmp_path / name / "store") if disk else None

    kwargs = dict(rounds=4, client_fraction=0.5, seed=3)
    _, full = run_loop(
        client_factory(personal=[Head()]),
        datamodule_factory(),
        tmp_path,
        "full",
        FedAdam(),
        state_store=store("full"),
        **kwargs,
    )
    with pytest.raises(KeyboardInterrupt):
        run_loop(
            client_factory(personal=[Head()]),
            datamodule_factory(),
            tmp_path,
            "cut",
            FedAdam(),
            state_store=store("cut"),
            callbacks=[Interrupt(2)],
            **kwargs,
        )
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["round"] == 1
    loop, resumed = run_loop(
        client_factory(seed=99, personal=[Head()]),
        datamodule_factory(),
        tmp_path,
        "cut",
        FedAdam(),
        state_store=store("cut"),
        resume=ckpt,
        **kwargs,
    )
    for key in full.global_state:
        torch.testing.assert_close(resumed.global_state[key], full.global_state[key], rtol=0, atol=0)
    assert [h["global_acc"] for h in resumed.history] == [h["global_acc"] for h in full.history]
    assert [h["personal_acc"] for h in resumed.history] == [h["personal_acc"] for h in full.history]
    assert len(resumed.history) == 4


def test_resume_refuses_a_checkpoint_of_another_run(client_factory, datamodule_factory, tmp_path):
    _, result = run_loop(client_factory(), datamodule_factory(), tmp_path, "one", rounds=1, seed=1)
    with pytest.raises(ValueError, match="other settings:\n  seed: checkpoint 1 / this run 2\n"):
        run_loop(
            client_factory(),
            datamodule_factory(),
            tmp_path,
            "two",
            rounds=2,
            seed=2,
            resume=result.last_checkpoint,
        )


def test_dropped_clients_are_skipped_and_counted(client_factory, datamodule, tmp_path):
    loop, result = run_loop(client_factory(), datamodule, tmp_path, "e", rounds=3, client_dropout=0.5, seed=1)
    dropped = [h["dropped"] for h in result.history]
    expected = [len(loop.stage.sampler.sample(r).dropped) for r in range(3)]
    assert dropped == expected and sum(expected) > 0


class PoisonedClient(FederatedClient):
    """Client 1 reports NaN weights."""

    def build_update(self, num_samples):
        update = super().build_update(num_samples)
        if update.client_id == 1:
            key = next(iter(update.state))
            update.state[key] = torch.full_like(update.state[key], float("nan"))
        return update


def test_nonfinite_update_is_rejected_and_the_run_continues(datamodule, tmp_path, caplog):
    torch.manual_seed(0)
    from lit_fed.models import TinyCNN

    client = PoisonedClient(TinyCNN(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    with caplog.at_level("WARNING", logger="lit_fed"):
        _, result = run_loop(client, datamodule, tmp_path, "f", rounds=2)
    assert [h["rejected"] for h in result.history] == [1, 1]
    assert all(torch.isfinite(v).all() for v in result.global_state.values() if v.is_floating_point())
    assert "client 1, round 1: non-finite values" in caplog.text


def test_local_steps_bound_the_number_of_optimizer_steps(client_factory, datamodule, tmp_path):
    steps = []

    class Count(FederatedClient):
        def on_train_end(self):
            steps.append(self.trainer.global_step)

    torch.manual_seed(0)
    from lit_fed.models import TinyCNN

    run_loop(Count(TinyCNN()), datamodule, tmp_path, "g", rounds=1, local_steps=3)
    assert steps == [3, 3, 3, 3]


def test_bad_loop_arguments_raise(client_factory, datamodule, tmp_path):
    with pytest.raises(ValueError, match=r"client_fraction must be in \(0, 1\], got 1.5"):
        run_loop(client_factory(), datamodule, tmp_path, "h", client_fraction=1.5)
    for bad, message in [
        ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
        ({"keep_checkpoints": -2}, "keep_checkpoints must be >= 0"),
        ({"seed": True}, "seed must be an integer, got True"),
        ({"rounds": 2.5}, "rounds must be an integer"),
        ({"client_dropout": 1.0}, r"client_dropout must be in \[0, 1\)"),
        ({"max_update_ratio": 1.0}, "max_update_ratio must be > 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            FederatedLoop(client_factory(), datamodule, **bad)
    with pytest.raises(ValueError, match="local_epochs"):
        FederatedLoop(client_factory(), datamodule, trainer_kwargs={"max_epochs": 3})
    with pytest.raises(TypeError, match="federate"):
        FederatedLoop(torch.nn.Linear(2, 2), datamodule)
