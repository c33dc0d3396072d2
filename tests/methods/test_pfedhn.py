from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import client_model, store_of
from torch.func import functional_call

from lit_fed import FederatedLoop
from lit_fed.cli import build_cli
from lit_fed.client.payloads import ClientUpdate
from lit_fed.methods import (
    Hypernetwork,
    HypernetworkStrategy,
    PFedHN,
    PFedHNClient,
    hypernetwork_gradients,
)
from lit_fed.models import MLP

ROOT = Path(__file__).resolve().parents[2]


def make_client(private_head: bool = False, seed: int = 0) -> PFedHNClient:
    torch.manual_seed(seed)
    return PFedHNClient(
        MLP(in_features=64, num_classes=4, hidden=(8,)),
        private_head=private_head,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )


def make_loop(datamodule, tmp_path, *, private_head=False, rounds=2, fraction=0.5, **kwargs):
    return FederatedLoop(
        make_client(private_head),
        datamodule,
        PFedHN(hidden_dim=16),
        rounds=rounds,
        local_steps=3,
        client_fraction=fraction,
        loggers=[],
        progress=False,
        run_dir=tmp_path,
        **kwargs,
    )


# -- the hypernetwork ------------------------------------------------------------------------------------------


def test_hypernetwork_architecture_and_batched_generation():
    torch.manual_seed(0)
    shapes = {"w": (3, 2), "b": (3,)}
    hn = Hypernetwork(num_clients=10, target_shapes=shapes, hidden_dim=100, n_hidden=3)
    assert hn.embedding_dim == int(1 + 10 / 4) == 3  # d_e = 1 + N/4
    linears = [m for m in hn.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 100)] + [(100, 100)] * 3
    assert sum(isinstance(m, torch.nn.ReLU) for m in hn.mlp) == 3
    assert [h.out_features for h in hn.heads] == [6, 3]
    batch = hn(torch.tensor([4, 7]))
    assert batch["w"].shape == (2, 3, 2) and batch["b"].shape == (2, 3)
    single = hn(torch.tensor([7]))
    torch.testing.assert_close(batch["w"][1], single["w"][0])


def test_gradient_equals_a_manual_vector_jacobian_product():
    torch.manual_seed(0)
    hn = Hypernetwork(num_clients=3, target_shapes={"a": (2, 3), "b": (4,)}, hidden_dim=5, n_hidden=1).double()
    ids = torch.tensor([0, 2])
    generated = hn(ids)
    trained = {k: v.detach() + 0.1 * torch.randn_like(v) for k, v in generated.items()}
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    params = list(hn.parameters())
    grads = hypernetwork_gradients(generated, trained, weights, params)

    names = [n for n, _ in hn.named_parameters()]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.detach().flatten() for p in params])

    def outputs(vector):
        chunks = dict(zip(names, [c.view_as(p) for c, p in zip(vector.split(sizes), params, strict=True)], strict=True))
        out = functional_call(hn, chunks, (ids,))
        return torch.cat([out["a"].flatten(1), out["b"].flatten(1)], dim=1)  # (B, 10)

    jacobian = torch.autograd.functional.jacobian(outputs, flat)  # (B, 10, |phi|)
    delta = torch.cat([(generated[k].detach() - trained[k]).flatten(1) for k in ("a", "b")], dim=1)  # sent - trained
    manual = torch.einsum("b,bo,bop->p", weights, delta, jacobian)
    torch.testing.assert_close(torch.cat([g.flatten() for g in grads]), manual)


def _client_loss(weight, bias, data):
    x, y = data
    return F.cross_entropy(x @ weight.T + bias, y)


@pytest.mark.parametrize("sign", ["correct", "wrong"])
def test_one_hypernetwork_step_lowers_the_clients_loss_only_with_the_right_sign(sign):
    torch.manual_seed(0)
    data = (torch.randn(64, 5), torch.randint(0, 3, (64,)))
    strategy = HypernetworkStrategy(hidden_dim=16, n_hidden=2, lr=1e-2, momentum=0.0, weight_decay=0.0)
    strategy.setup({"weight": (3, 5), "bias": (3,)}, num_clients=4, seed=0)
    (message,) = strategy.configure_train(0, [2], {})
    sent = message.extras
    before = _client_loss(sent["weight"], sent["bias"], data).item()
    # the client: K local SGD steps from the sent weights
    theta = {k: v.clone().requires_grad_(True) for k, v in sent.items()}
    local = torch.optim.SGD(theta.values(), lr=0.1)
    for _ in range(5):
        local.zero_grad()
        _client_loss(theta["weight"], theta["bias"], data).backward()
        local.step()
    trained = {k: v.detach() for k, v in theta.items()}
    if sign == "wrong":  # an update whose delta is trained - sent: theta - (2 theta - theta~) = theta~ - theta
        trained = {k: 2 * sent[k] - trained[k] for k in sent}
    strategy.hypernetwork_step([ClientUpdate(client_id=2, round=0, state={}, num_samples=64, extras=trained)])
    after_weights = strategy.personal_tensors(2)
    after = _client_loss(after_weights["weight"], after_weights["bias"], data).item()
    assert (after < before) if sign == "correct" else (after > before), (before, after)


def test_configure_train_generates_only_the_sampled_clients_in_one_forward():
    strategy = PFedHN(hidden_dim=8)
    network = strategy.setup({"w": (2, 2)}, num_clients=100, seed=0)
    calls = []
    network.register_forward_hook(lambda module, args, out: calls.append(args[0].tolist()))
    messages = strategy.configure_train(0, [5, 42, 17], {})
    assert calls == [[5, 42, 17]]  # one batched forward, the sampled clients only
    assert [m.client_id for m in messages] == [5, 42, 17]
    expected = strategy.generate([42])["w"][0]
    torch.testing.assert_close(messages[1].extras["w"], expected)
    with pytest.raises(IndexError, match="100"):
        strategy.configure_train(1, [100], {})


def test_pfedhn_client_split_and_pc_private_head():
    full, pc = make_client(False), make_client(True)
    assert full.shared_keys() == []  # every weight is generated: nothing to aggregate
    assert set(full.generated_keys()) == {k for k in full.state_dict() if k.startswith("backbone.")}
    head = {"backbone.fc.weight", "backbone.fc.bias"}
    assert head.isdisjoint(pc.generated_keys()) and head <= set(pc.personal_keys())
    assert pc.shared_keys() == []  # generated body, private head
    assert pc.generated_shapes()["backbone.body.0.weight"] == (8, 64)


def test_never_trained_clients_are_evaluated_with_generated_weights(datamodule_factory, tmp_path):
    loop = make_loop(datamodule_factory(num_clients=4), tmp_path, private_head=True, rounds=1, fraction=0.5)
    result = loop.run()
    trained = set(loop.stage.sampler.sample(0).reporting)
    untrained = [c for c in range(4) if c not in trained]
    assert untrained
    strategy, client = loop.strategy, loop.client
    assert result.global_state == {} and strategy.version == 1  # pFedHN-PC's client shares nothing
    for cid in range(4):
        generated = strategy.generate([cid])
        stored = store_of(loop).get(cid)
        with client_model(loop, cid):
            for key in client.generated_keys():
                torch.testing.assert_close(client.state_dict()[key], generated[key][0])
            if cid in trained:  # only the private head is stored
                assert set(stored) == {"backbone.fc.weight", "backbone.fc.bias"}
                torch.testing.assert_close(client.backbone.fc.weight, stored["backbone.fc.weight"])
            else:
                assert stored is None
                torch.testing.assert_close(client.backbone.fc.weight, loop.initial_personal["backbone.fc.weight"])
    # the reported accuracy of a never-trained client is that of its generated weights
    cid = untrained[0]
    correct = total = 0
    with client_model(loop, cid), torch.no_grad():
        for x, y in datamodule_factory(num_clients=4).client_test_dataloader(cid):
            correct += int((client(x).argmax(1) == y).sum())
            total += len(y)
    assert loop.evaluation.last_personalized.per_client[cid] == pytest.approx(correct / total)


def test_hypernetwork_state_round_trips_through_the_round_checkpoint(datamodule_factory, tmp_path):
    full = make_loop(datamodule_factory(num_clients=4), tmp_path / "full", rounds=2)
    full_result = full.run()
    first = make_loop(datamodule_factory(num_clients=4), tmp_path / "split", rounds=1)
    first.run()
    saved = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=False)["strategy"]
    assert saved["version"] == 1 and set(saved) >= {"hypernetwork", "optimizer"}
    assert saved["optimizer"]["state"], "the momentum buffers are checkpointed"
    resumed = make_loop(datamodule_factory(num_clients=4), tmp_path / "split", rounds=2)
    resumed_result = resumed.run(resume_from=tmp_path / "split/checkpoints/last.ckpt")
    a, b = full.strategy.state_dict(), resumed.strategy.state_dict()
    assert a["version"] == b["version"] == 2
    for key, value in a["hypernetwork"].items():
        torch.testing.assert_close(value, b["hypernetwork"][key], rtol=0, atol=0)
    for index, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    for key in ("train_loss", "personal_acc", "hn_grad_norm"):
        assert full_result.history[1][key] == pytest.approx(resumed_result.history[1][key])


def test_a_restored_checkpoint_evaluates_with_the_hypernetwork(datamodule_factory, tmp_path):
    loop = make_loop(datamodule_factory(num_clients=4), tmp_path, private_head=True, rounds=2)
    result = loop.run()
    expected = result.history[-1]["personal_acc"]
    assert {"hn_grad_norm", "hn_delta_norm"} <= set(result.history[-1])  # the server step's metrics join the round
    fresh = make_loop(datamodule_factory(num_clients=4), tmp_path, private_head=True, rounds=2)
    fresh.setup()  # Strategy.bind builds the hypernetwork
    fresh.restore(tmp_path / "checkpoints/last.ckpt")
    assert fresh.evaluate()["personal_acc"] == pytest.approx(expected)


def test_evaluation_without_the_generated_tensors_fails_loudly(datamodule_factory):
    client = make_client(private_head=False)
    client.load_personal_state(client.personal_state())  # a plain store's state: no generated tensors supplied
    with pytest.raises(RuntimeError, match="configure_evaluate"):
        client.predict_logits(torch.zeros(2, 1, 8, 8))
    # what the strategy sends for evaluation supplies them
    strategy = PFedHN(hidden_dim=8)
    strategy.setup(client.generated_shapes(), num_clients=2)
    (message,) = strategy.configure_evaluate(0, [1], {})
    assert set(message.extras) == set(client.generated_keys())
    client.receive_evaluation(message)
    assert client.predict_logits(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    strategy = PFedHN()
    with pytest.raises(RuntimeError, match="not built"):
        strategy.generate([0])


def test_update_without_trained_tensors_is_rejected():
    strategy = PFedHN()
    strategy.setup({"w": (2,)}, num_clients=3)
    strategy.configure_train(0, [1], {})
    with pytest.raises(KeyError, match="client 1, round 0"):
        strategy.hypernetwork_step([ClientUpdate(client_id=1, round=0, state={}, num_samples=5)])
    with pytest.raises(ValueError, match="client 2"):
        strategy.hypernetwork_step([ClientUpdate(client_id=2, round=0, state={}, num_samples=5, extras={"w": 0})])


@pytest.mark.parametrize("method", ["pfedhn", "pfedhn_pc"])
def test_config_runs_two_rounds_through_the_cli(method, tmp_path):
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/data/synthetic.yaml"),
        "--config",
        str(ROOT / "configs/model/fedavgcnn.yaml"),
        "--config",
        str(ROOT / f"configs/method/{method}.yaml"),
        "--data.init_args.dataset.init_args.image_size",
        "16",
        "--model.init_args.backbone.init_args.num_classes",
        "4",
        "--model.init_args.backbone.init_args.input_size",
        "16",
        "--model.init_args.backbone.init_args.hidden_dim",
        "16",
        "--trainer.local_steps",
        "2",
        "--trainer.server.init_args.hidden_dim",
        "16",
        "--trainer.rounds",
        "2",
        "--trainer.run_dir",
        str(tmp_path),
        "--trainer.progress",
        "false",
        "--trainer.logger",
        "false",
    ]
    cli = build_cli(args=args)
    history = cli.trainer.federated_result.history
    assert len(history) == 2 and history[-1]["hn_version"] == 2.0
    assert isinstance(cli.model, PFedHNClient) and cli.model.private_head == (method == "pfedhn_pc")
    assert 0.0 <= history[-1]["personal_acc"] <= 1.0
    # lit-fed validate --ckpt_path: a fresh trainer, strategy and client evaluate the saved run the same way
    evaluator = build_cli(args=args[1:], run=False)
    (metrics,) = evaluator.trainer.validate(
        evaluator.model, datamodule=evaluator.datamodule, ckpt_path=str(tmp_path / "checkpoints/last.ckpt")
    )
    assert metrics["personal_acc"] == pytest.approx(history[-1]["personal_acc"])
