"""FedPer (Arivazhagan et al. 2019): personal head, FedAvg body."""

from pathlib import Path

import lightning as L
import torch
from helpers import store_of

from lit_fed.cli import build_cli
from lit_fed.client.split import Head
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}


class Capture(FedAvg):
    def __init__(self):
        super().__init__()
        self.rounds = []

    def aggregate_train(self, round, updates, global_state):
        new = super().aggregate_train(round, updates, global_state)
        self.rounds.append(([(u.num_samples, dict(u.state)) for u in updates], new))
        return new


class HeadRecorder(L.Callback):
    def __init__(self):
        self.start, self.end = {}, {}

    def _snap(self, module):
        return module.backbone.fc.weight.detach().clone()

    def on_train_start(self, trainer, pl_module):
        self.start[(pl_module.current_round, pl_module.client_id)] = self._snap(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end[(pl_module.current_round, pl_module.client_id)] = self._snap(pl_module)


def test_head_stays_local_and_body_is_averaged(client_factory, datamodule_factory, tmp_path):
    client = client_factory(personal=[Head()])
    head_keys = {"backbone.fc.weight", "backbone.fc.bias"}
    assert set(client.personal_keys()) == head_keys
    strategy, recorder = Capture(), HeadRecorder()
    loop = FederatedLoop(
        client,
        datamodule_factory(),
        strategy,
        rounds=2,
        eval_every=0,
        trainer_kwargs={**CPU, "callbacks": [recorder]},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    assert not head_keys & set(result.global_state)
    for updates, new_global in strategy.rounds:
        total = sum(n for n, _ in updates)
        for _, state in updates:
            assert not head_keys & set(state)  # the head is never uploaded
        for key, value in new_global.items():  # the body is the sample-weighted mean
            if value.is_floating_point():
                expected = sum(n / total * s[key].double() for n, s in updates)
                torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    heads = [store_of(loop).get(c)["backbone.fc.weight"] for c in range(4)]
    assert all(not torch.equal(heads[0], h) for h in heads[1:])
    for cid in range(4):  # round 1 starts from the client's own round-0 head
        assert torch.equal(recorder.start[(1, cid)], recorder.end[(0, cid)])
        assert torch.equal(heads[cid], recorder.end[(1, cid)])


def test_fedper_config_makes_the_head_personal():
    cli = build_cli(
        args=[
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/tinycnn.yaml"),
            "--config",
            str(ROOT / "configs/method/fedper.yaml"),
        ],
        run=False,
    )
    assert cli.model.personal_keys() == ["backbone.fc.weight", "backbone.fc.bias"]
    assert cli.model.schedule is None
    assert isinstance(cli.trainer.server, FedAvg)
