"""FedBN (Li et al. 2021): BatchNorm layers stay local — never sent, never averaged, persisted per client."""

from pathlib import Path

import lightning as L
import torch
from helpers import store_of

from lit_fed.cli import build_cli
from lit_fed.client.split import BatchNorm
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}


class BNRecorder(L.Callback):
    """Snapshots the BN state of the client at the start and end of every local fit."""

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


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_batchnorm_state_is_never_sent_and_persists_per_client(client_factory, datamodule_factory, tmp_path):
    client = client_factory(personal=[BatchNorm()])
    bn_keys = sorted(BatchNorm().select(client))
    assert any(k.endswith("running_mean") for k in bn_keys)
    initial = {k: v.clone() for k, v in client.state_dict().items() if k in bn_keys}
    recorder = BNRecorder(bn_keys)
    rounds, num_clients = 3, 4
    loop = FederatedLoop(
        client,
        datamodule_factory(num_clients=num_clients),
        FedAvg(),
        rounds=rounds,
        eval_every=0,
        trainer_kwargs={**CPU, "callbacks": [recorder]},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    # Nothing of BN travels: the global state is exactly the non-BN keys.
    assert set(result.global_state) == set(client.state_dict()) - set(bn_keys)
    for cid in range(num_clients):
        assert_equal_states(recorder.start[(0, cid)], initial)
        for rnd in range(1, rounds):
            # Round r+1 starts from this client's own round-r BN state (not an average, not another client's).
            assert_equal_states(recorder.start[(rnd, cid)], recorder.end[(rnd - 1, cid)])
        assert_equal_states(store_of(loop).get(cid), recorder.end[(rounds - 1, cid)])
        assert int(store_of(loop).get(cid)["backbone.bn.num_batches_tracked"]) > 0
    stats = [store_of(loop).get(c)["backbone.bn.running_mean"] for c in range(num_clients)]
    assert all(not torch.equal(stats[0], s) for s in stats[1:])
    # Averaging the clients' stats would give none of them.
    mean = torch.stack(stats).mean(0)
    assert all(not torch.allclose(mean, s) for s in stats)


def test_fedbn_config_selects_the_batchnorm_layers_of_fedavgcnn_bn():
    cli = build_cli(
        args=[
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/fedavgcnn_bn.yaml"),
            "--config",
            str(ROOT / "configs/method/fedbn.yaml"),
        ],
        run=False,
    )
    client = cli.model
    assert isinstance(cli.trainer.server, FedAvg)
    bn_modules = {n for n, m in client.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bn_modules == {"backbone.conv1.1", "backbone.conv2.1"}
    personal = set(client.personal_keys())
    assert personal == {k for k in client.state_dict() if k.rsplit(".", 1)[0] in bn_modules}
    assert "backbone.conv1.0.weight" in client.shared_keys()
