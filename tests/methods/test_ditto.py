"""Ditto (Li et al. 2021): a personal model v per client, trained on CE(v) + λ/2‖v − w_g‖² beside the global w."""

import copy
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from helpers import store_of

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ServerMessage
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import DittoClient
from lit_fed.models import MLP, TinyCNN
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}


def perturb(module, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def test_gradients_are_ce_for_w_and_ce_plus_lambda_pull_to_received_weights_for_v():
    torch.manual_seed(0)
    lam = 0.7
    client = DittoClient(MLP(in_features=6, num_classes=3, hidden=(5,)), lam=lam)
    perturb(client.personal_model, 0.5, seed=1)  # v != w
    received = {k: v + 0.1 for k, v in client.shared_state().items()}
    client.receive_global(ServerMessage(round=0, client_id=0, state=received))
    perturb(client.backbone, 0.3, seed=2)  # w moves away from w_g (as after local steps): v must anchor on w_g
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    global_copy, personal_copy = copy.deepcopy(client.backbone), copy.deepcopy(client.personal_model)
    F.cross_entropy(global_copy(x), y).backward()
    F.cross_entropy(personal_copy(x), y).backward()

    loss = client.training_step((x, y), 0)
    loss.backward()
    for name, p in client.backbone.named_parameters():
        torch.testing.assert_close(p.grad, dict(global_copy.named_parameters())[name].grad, rtol=0, atol=0)
    for name, v in client.personal_model.named_parameters():
        w_g = received[f"backbone.{name}"]
        expected = dict(personal_copy.named_parameters())[name].grad + lam * (v.detach() - w_g)
        torch.testing.assert_close(v.grad, expected, rtol=1e-6, atol=1e-7)
    extras = client.extra_losses((x, y), None)
    prox = 0.5 * lam * sum((v.detach() - received[f"backbone.{n}"]).pow(2).sum() for n, v in client.personal_pairs())
    torch.testing.assert_close(extras["ditto_prox"].detach(), prox)


def test_evaluation_uses_v_for_personalized_and_w_for_global_scores():
    torch.manual_seed(0)
    client = DittoClient(MLP(in_features=6, num_classes=3, hidden=(5,)))
    perturb(client.personal_model, 0.5, seed=1)
    x = torch.randn(4, 6)
    torch.testing.assert_close(client.predict_logits(x), client.personal_model(x))
    torch.testing.assert_close(client.global_logits(x), client.backbone(x))
    assert not torch.allclose(client.predict_logits(x), client.global_logits(x))


class Capture(FedAvg):
    def __init__(self):
        super().__init__()
        self.keys = []

    def aggregate_train(self, round, updates, global_state):
        self.keys += [set(u.state) for u in updates]
        return super().aggregate_train(round, updates, global_state)


class PersonalRecorder(L.Callback):
    def __init__(self):
        self.start, self.end = {}, {}

    @staticmethod
    def _snap(module):
        return {k: v.detach().clone() for k, v in module.personal_model.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.start[(pl_module.current_round, pl_module.client_id)] = self._snap(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end[(pl_module.current_round, pl_module.client_id)] = self._snap(pl_module)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_personal_model_persists_per_client_and_only_the_global_copy_is_uploaded(datamodule_factory, tmp_path):
    torch.manual_seed(0)
    client = DittoClient(
        TinyCNN(in_channels=1, num_classes=4), optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lam=0.5
    )
    backbone_keys = {f"backbone.{k}" for k in client.backbone.state_dict()}
    initial_v = {k: v.clone() for k, v in client.personal_model.state_dict().items()}
    strategy, recorder = Capture(), PersonalRecorder()
    loop = FederatedLoop(
        client,
        datamodule_factory(),
        strategy,
        rounds=2,
        trainer_kwargs={**CPU, "callbacks": [recorder]},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    assert strategy.keys and all(keys == backbone_keys for keys in strategy.keys)
    assert set(result.global_state) == backbone_keys
    for cid in range(4):
        assert same(recorder.start[(0, cid)], initial_v)
        assert same(recorder.start[(1, cid)], recorder.end[(0, cid)])  # v_k carries over, w_g does not overwrite it
        stored = store_of(loop).get(cid)
        assert set(stored) == {f"personal_model.{k}" for k in initial_v}
        assert same({k.removeprefix("personal_model."): v for k, v in stored.items()}, recorder.end[(1, cid)])
    vs = [store_of(loop).get(c)["personal_model.fc.weight"] for c in range(4)]
    assert all(not torch.equal(vs[0], v) for v in vs[1:])
    assert result.history[-1]["personal_acc"] > 0.5


def test_ditto_config_switches_the_client_class_and_keeps_the_model_config():
    cli = build_cli(
        args=[
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/tinycnn.yaml"),
            "--config",
            str(ROOT / "configs/method/ditto.yaml"),
        ],
        run=False,
    )
    client = cli.model
    assert isinstance(client, DittoClient) and isinstance(client.backbone, TinyCNN) and client.lam == 0.1
    assert client.optimizer_factory([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"] == 0.05
    assert all(k.startswith("backbone.") for k in client.shared_keys())
    assert all(k.startswith("personal_model.") for k in client.personal_keys())
