"""FedBABU (Oh et al. 2022): head frozen at init during FL, fine-tuned only for personalized evaluation."""

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import client_model, store_of

from lit_fed.cli import build_cli
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import FedBABUClient
from lit_fed.metrics.evaluation import accumulate_accuracy, new_accuracy
from lit_fed.models import TinyCNN
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}
HEAD = ("backbone.fc.weight", "backbone.fc.bias")


def make_client(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    return FedBABUClient(TinyCNN(in_channels=1, num_classes=4), **kwargs)


class HeadAtEnd(L.Callback):
    def __init__(self):
        self.heads = []

    def on_train_end(self, trainer, pl_module):
        self.heads.append({k: pl_module.state_dict()[k].clone() for k in HEAD})


def run(client, dm, tmp_path, rounds=2, callbacks=()):
    loop = FederatedLoop(
        client,
        dm,
        FedAvg(),
        rounds=rounds,
        eval_every=0,
        trainer_kwargs={**CPU, "callbacks": list(callbacks)},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    return loop, loop.run()


def snapshot(state):
    return {k: v.clone() for k, v in state.items()}


def test_head_is_bit_identical_to_init_after_federated_training(datamodule_factory, tmp_path):
    client = make_client()
    init = snapshot(client.state_dict())
    recorder = HeadAtEnd()
    loop, result = run(client, datamodule_factory(), tmp_path, rounds=3, callbacks=[recorder])
    assert len(recorder.heads) == 3 * 4
    for head in recorder.heads:  # after every local fit of every client
        for key in HEAD:
            assert torch.equal(head[key], init[key])
    for cid in range(4):  # and in every client's stored state
        stored = store_of(loop).get(cid)
        assert set(stored) == set(HEAD)
        assert all(torch.equal(stored[k], init[k]) for k in HEAD)
    assert not set(HEAD) & set(result.global_state)
    assert not torch.equal(result.global_state["backbone.conv.weight"], init["backbone.conv.weight"])
    # The head is not even handed to the optimizer.
    assert {id(p) for p in client.trainable_parameters()} == {
        id(p) for n, p in client.named_parameters() if n not in HEAD
    }


def test_fine_tuning_changes_personalized_accuracy_but_not_global_accuracy(datamodule_factory, tmp_path):
    loop, _ = run(make_client(finetune_epochs=2), datamodule_factory(), tmp_path)
    tuned = loop.evaluate()
    tuned_per_client = dict(loop.evaluation.last_personalized.per_client)
    loop.client.finetune_epochs = 0
    plain = loop.evaluate()
    assert tuned["global_acc"] == plain["global_acc"]
    assert tuned["personal_acc"] != plain["personal_acc"]
    assert tuned_per_client != loop.evaluation.last_personalized.per_client


def test_fine_tuning_leaks_neither_into_the_store_nor_into_the_next_client(datamodule_factory, tmp_path):
    dm = datamodule_factory()
    loop, _ = run(make_client(), dm, tmp_path)
    store = {c: snapshot(store_of(loop).get(c)) for c in range(4)}
    global_state = snapshot(loop.global_state)
    loop.evaluate()
    per_client = dict(loop.evaluation.last_personalized.per_client)
    for cid in range(4):
        assert all(torch.equal(store_of(loop).get(cid)[k], v) for k, v in store[cid].items())
    assert all(torch.equal(loop.global_state[k], v) for k, v in global_state.items())
    # Each client evaluated alone, in reverse order, from freshly loaded state: the same accuracy.
    client = loop.client
    for cid in reversed(range(4)):
        with client_model(loop, cid):
            client.personalize(dm.client_train_dataloader(cid, loop.round))
            acc = accumulate_accuracy(new_accuracy(4), client.predict_logits, dm.client_test_dataloader(cid), "cpu")
        assert float(acc.compute()) == pytest.approx(per_client[cid], abs=0)


@pytest.mark.parametrize("part", ["personal", "all"])
def test_personalize_fine_tunes_the_chosen_part_with_a_fresh_optimizer(datamodule_factory, part):
    dm = datamodule_factory()
    dm.setup("fit")
    built = []

    def factory(params):
        built.append(list(params))
        return torch.optim.SGD(built[-1], lr=0.1, momentum=0.9)

    client = make_client(finetune=part, finetune_epochs=1, optimizer=factory)
    before = snapshot(client.state_dict())
    client.eval()
    client.personalize(dm.client_train_dataloader(0))
    trainable = [p for n, p in client.named_parameters() if part == "all" or n in HEAD]
    assert len(built) == 1 and [id(p) for p in built[0]] == [id(p) for p in trainable]  # a fresh optimizer
    after = client.state_dict()
    assert not client.training
    assert all(p.requires_grad for p in client.parameters())
    assert any(not torch.equal(after[k], before[k]) for k in HEAD)
    body = [k for k in before if k not in HEAD]
    body_same = all(torch.equal(after[k], before[k]) for k in body)
    assert body_same == (part == "personal")  # "personal": body weights and BN statistics untouched


def test_a_schedule_that_trains_the_head_is_refused():
    with pytest.raises(ValueError, match="frozen"):
        make_client(schedule=LocalSchedule([Phase("personal", epochs=1), Phase("shared")]))
    with pytest.raises(ValueError, match="finetune"):
        make_client(finetune="head")


def test_fedbabu_config_switches_the_client_class_and_keeps_the_model_config():
    cli = build_cli(
        args=[
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/tinycnn.yaml"),
            "--config",
            str(ROOT / "configs/method/fedbabu.yaml"),
        ],
        run=False,
    )
    client = cli.model
    assert isinstance(client, FedBABUClient) and isinstance(client.backbone, TinyCNN)
    assert client.finetune == "all" and client.finetune_epochs == 1
    assert client.optimizer_factory([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"] == 0.05
    assert client.schedule.phases == [Phase("shared")]
    assert tuple(client.personal_keys()) == HEAD
