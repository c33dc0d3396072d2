import lightning as L
import pytest
import torch

from lit_fed.client.payloads import ServerMessage
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.client.split import Complement, Head


def test_phase_validation():
    with pytest.raises(ValueError, match="train"):
        Phase(train="body")
    with pytest.raises(ValueError, match="not both"):
        Phase(epochs=1, steps=1)
    with pytest.raises(ValueError, match="epochs"):
        Phase(epochs=0)
    with pytest.raises(ValueError, match="either steps"):
        LocalSchedule([Phase("personal", steps=2), Phase("shared", epochs=1)])
    with pytest.raises(ValueError, match="at least one"):
        LocalSchedule([])


def test_phase_lookup_by_epoch_and_step():
    schedule = LocalSchedule([Phase("personal", epochs=2), Phase("shared")])
    assert schedule.lengths(local_epochs=3) == [2, 3]
    assert schedule.total(3) == 5
    assert [schedule.phase_at(e, 3).train for e in range(6)] == ["personal"] * 2 + ["shared"] * 4
    steps = LocalSchedule([Phase("personal", steps=3), Phase("shared", steps=1)])
    assert steps.counts_steps and steps.total(99) == 4
    assert [steps.phase_at(s, 1).train for s in range(4)] == ["personal"] * 3 + ["shared"]


def test_fit_limits_follow_the_schedule(client_factory):
    client = client_factory(personal=[Head()], schedule=LocalSchedule([Phase("personal", epochs=2), Phase("shared")]))
    assert client.fit_limits(local_epochs=3, local_steps=None) == {"max_epochs": 5}
    client = client_factory(
        personal=[Head()], schedule=LocalSchedule([Phase("personal", steps=4), Phase("shared", steps=1)])
    )
    assert client.fit_limits(local_epochs=3, local_steps=None) == {"max_steps": 5, "max_epochs": -1}
    assert client_factory().fit_limits(2, None) == {"max_epochs": 2}
    assert client_factory().fit_limits(2, 7) == {"max_steps": 7, "max_epochs": -1}


def test_set_trainable_freezes_the_other_part_and_its_batchnorm(client_factory):
    client = client_factory(personal=[Head()])
    client.train()
    client.set_trainable("personal")
    trainable = {n for n, p in client.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.fc.weight", "backbone.fc.bias"}
    assert not client.backbone.bn.training  # the frozen body's BN statistics stay put
    client.set_trainable("shared")
    assert "backbone.fc.weight" not in {n for n, p in client.named_parameters() if p.requires_grad}
    assert client.backbone.bn.training
    client.set_trainable("all")
    assert all(p.requires_grad for p in client.parameters())


def test_step_schedule_trains_each_part_only_in_its_phase(client_factory, datamodule):
    """FFGG-like: 3 steps on the personal head, then 2 on the shared body; each part moves only in its phase."""
    schedule = LocalSchedule([Phase("personal", steps=3), Phase("shared", steps=2)])
    client = client_factory(personal=[Head()], schedule=schedule)
    datamodule.setup()
    client.receive_global(ServerMessage(round=0, client_id=0, state=client.shared_state()))
    snapshots = []

    class Snap(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            snapshots.append({k: v.clone() for k, v in module.state_dict().items()})

        def on_train_end(self, trainer, module):
            snapshots.append({k: v.clone() for k, v in module.state_dict().items()})

    trainer = L.Trainer(
        **client.fit_limits(1, None),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Snap()],
    )
    trainer.fit(client, datamodule.client_train_dataloader(0, 0))
    assert trainer.global_step == 5 and len(snapshots) == 6
    head, body = ["backbone.fc.weight"], ["backbone.conv.weight", "backbone.bn.weight", "backbone.bn.running_mean"]
    for before, after in zip(snapshots[:3], snapshots[1:4], strict=True):  # personal phase: body frozen
        assert all(torch.equal(before[k], after[k]) for k in body)
        assert not torch.equal(before[head[0]], after[head[0]])
    for before, after in zip(snapshots[3:5], snapshots[4:6], strict=True):  # shared phase: head frozen
        assert torch.equal(before[head[0]], after[head[0]])
        assert not torch.equal(before[body[0]], after[body[0]])
    assert all(p.requires_grad for p in client.parameters())  # restored after the fit


def test_complement_selects_everything_but_the_head(client_factory):
    client = client_factory(personal=[Complement([Head()])])
    assert client.shared_keys() == ["backbone.fc.weight", "backbone.fc.bias"]
    assert "backbone.conv.weight" in client.personal_keys()
