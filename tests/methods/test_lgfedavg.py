"""LG-FedAvg (Liang et al. 2020), the paper's split: local body, shared (averaged) head."""

from pathlib import Path

import lightning as L
import torch
from helpers import store_of

from lit_fed.cli import build_cli
from lit_fed.client.split import Complement, Head
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}


class BodyRecorder(L.Callback):
    def __init__(self, keys):
        self.keys = keys
        self.start, self.end = {}, {}

    def _snap(self, module):
        state = module.state_dict()
        return {k: state[k].detach().clone() for k in self.keys}

    def on_train_start(self, trainer, pl_module):
        self.start[(pl_module.current_round, pl_module.client_id)] = self._snap(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end[(pl_module.current_round, pl_module.client_id)] = self._snap(pl_module)


def test_only_the_head_is_shared_and_the_body_persists(client_factory, datamodule_factory, tmp_path):
    client = client_factory(personal=[Complement([Head()])])
    head_keys = Head().select(client)
    body_keys = sorted(set(client.state_dict()) - head_keys)
    recorder = BodyRecorder(body_keys)
    loop = FederatedLoop(
        client,
        datamodule_factory(),
        FedAvg(),
        rounds=2,
        eval_every=0,
        trainer_kwargs={**CPU, "callbacks": [recorder]},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    assert set(result.global_state) == head_keys == {"backbone.fc.weight", "backbone.fc.bias"}
    for cid in range(4):
        stored = store_of(loop).get(cid)
        assert set(stored) == set(body_keys)
        for key in body_keys:
            assert torch.equal(recorder.start[(1, cid)][key], recorder.end[(0, cid)][key])
            assert torch.equal(stored[key], recorder.end[(1, cid)][key])
    convs = [store_of(loop).get(c)["backbone.conv.weight"] for c in range(4)]
    assert all(not torch.equal(convs[0], w) for w in convs[1:])


def test_lgfedavg_config_shares_exactly_the_head():
    cli = build_cli(
        args=[
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/tinycnn.yaml"),
            "--config",
            str(ROOT / "configs/method/lgfedavg.yaml"),
        ],
        run=False,
    )
    assert cli.model.shared_keys() == ["backbone.fc.weight", "backbone.fc.bias"]
    assert isinstance(cli.trainer.server, FedAvg)
