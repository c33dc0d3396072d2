"""The loop with FedProx, with a user's own LightningModule, under bf16-mixed, and its byte accounting."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import store_of
from torch import nn

from lit_fed.client.regularizers import ProximalTerm
from lit_fed.client.serialization import encoded_size
from lit_fed.client.split import Modules
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAvg

CPU = {"accelerator": "cpu", "devices": 1}


def make_loop(client, dm, tmp_path, **kwargs):
    kwargs.setdefault("rounds", 1)
    trainer_kwargs = {**CPU, **kwargs.pop("trainer_kwargs", {})}
    return FederatedLoop(
        client,
        dm,
        kwargs.pop("strategy", FedAvg()),
        trainer_kwargs=trainer_kwargs,
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        **kwargs,
    )


def drift(updates, global_state):
    return sum(
        float((u.state[k] - global_state[k]).pow(2).sum())
        for u in updates
        for k in global_state
        if global_state[k].is_floating_point()
    )


class RecordingFedAvg(FedAvg):
    def __init__(self):
        super().__init__()
        self.drifts = []

    def aggregate_train(self, round, updates, global_state):
        self.drifts.append(drift(updates, global_state))
        return super().aggregate_train(round, updates, global_state)


def test_fedprox_keeps_client_models_closer_to_the_global_model(client_factory, datamodule_factory, tmp_path):
    """The proximal pull: a large mu shrinks ||w_k - w_g|| versus FedAvg's local training (mu = 0)."""
    drifts = {}
    for mu in (0.0, 10.0):
        strategy = RecordingFedAvg()
        make_loop(
            client_factory(regularizers=[ProximalTerm(mu)]),
            datamodule_factory(),
            tmp_path / str(mu),
            strategy=strategy,
            eval_every=0,
        ).run()
        drifts[mu] = strategy.drifts[0]
    assert drifts[10.0] < 0.5 * drifts[0.0]


class UserModel(L.LightningModule):
    """A user's own module: its own training_step, optimizer and forward; nothing lit_fed-specific."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("my_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_a_user_lightning_module_federates_with_fedprox_and_a_personal_head(datamodule_factory, tmp_path):
    from lit_fed import federate

    torch.manual_seed(0)
    module = federate(UserModel(), personal=[Modules(["net.3"])], regularizers=[ProximalTerm(0.01)])
    loop = make_loop(module, datamodule_factory(), tmp_path, rounds=3)
    result = loop.run()
    assert set(result.global_state) == {"net.1.weight", "net.1.bias"}
    assert result.history[-1]["personal_acc"] > 0.5
    heads = [store_of(loop).get(c)["net.3.weight"] for c in range(4)]
    assert not torch.equal(heads[0], heads[1])


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_precision_passes_through_to_client_trainers(client_factory, datamodule_factory, tmp_path, precision):
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                seen.append((trainer.precision, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()))

    loop = make_loop(
        client_factory(regularizers=[ProximalTerm(0.1)]),
        datamodule_factory(),
        tmp_path,
        rounds=2,
        trainer_kwargs={"precision": precision, "callbacks": [Spy()]},
    )
    result = loop.run()
    assert len(seen) == 8 and all(p == precision for p, _, _ in seen)
    assert result.history[-1]["global_acc"] > 0.4
    assert all(torch.isfinite(v).all() for v in result.global_state.values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in result.global_state.values() if v.is_floating_point())


def test_bytes_per_round_equal_the_serialized_payload_sizes(client_factory, datamodule_factory, tmp_path):
    loop = make_loop(client_factory(), datamodule_factory(), tmp_path, rounds=2, client_fraction=0.5, eval_every=0)
    result = loop.run()
    per_payload = encoded_size({f"state/{k}": v for k, v in result.global_state.items()})
    for h in result.history:
        assert h["mb_down"] * 1e6 == pytest.approx(2 * per_payload)
        assert h["mb_up"] * 1e6 == pytest.approx(2 * per_payload)
    assert loop.comm.total_up == 4 * per_payload
    assert sum(loop.comm.per_client_up.values()) == 4 * per_payload
    rows = (tmp_path / "communication.csv").read_text().splitlines()
    assert rows[-1] == f"total,{4 * per_payload},{4 * per_payload}"
    histogram = (tmp_path / "partition.csv").read_text().splitlines()
    assert len(histogram) == 1 + 4
