from pathlib import Path

import pytest
import timm
import torch
from helpers import client_model, store_of

from lit_fed import FedAvg, FederatedClient, FederatedLoop
from lit_fed.cli import build_cli
from lit_fed.client.payloads import ClientUpdate
from lit_fed.data import ShakespeareDataModule
from lit_fed.methods import QKV, FedTP, FedTPClient
from lit_fed.models import CharTransformer, ViT

ROOT = Path(__file__).resolve().parents[2]
VIT = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32)


def tiny_vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return ViT(**VIT, dropout=0.0, emb_dropout=0.0)


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-5)


def fedtp_loop(datamodule, tmp_path, *, rounds=1, fraction=0.5, backbone=None):
    client = FedTPClient(tiny_vit() if backbone is None else backbone, optimizer=sgd)
    return FederatedLoop(
        client,
        datamodule,
        FedTP(hidden_dim=24),
        rounds=rounds,
        client_fraction=fraction,
        loggers=[],
        progress=False,
        run_dir=tmp_path,
    )


def qkv_keys(depth: int = 2, prefix: str = "backbone.") -> set[str]:
    return {f"{prefix}blocks.{i}.attn.qkv.weight" for i in range(depth)}


def test_qkv_selector_picks_every_attention_projection_by_module():
    client = FederatedClient(tiny_vit(), personal=[QKV()])
    assert set(client.personal_keys()) == qkv_keys()
    assert not any("qkv" in k for k in client.shared_keys())
    vit = timm.create_model("test_vit", num_classes=4, in_chans=1, img_size=8, patch_size=4)
    selected = QKV().select(vit)
    assert selected and all(".attn.qkv." in k for k in selected) and len(selected) == 2 * len(vit.blocks)
    with pytest.raises(ValueError, match="no attention block"):
        QKV().select(torch.nn.Linear(2, 2))


def test_hypernetwork_emits_one_qkv_matrix_per_block_and_they_differ_across_clients():
    client = FedTPClient(tiny_vit())
    shapes = client.generated_shapes()
    assert set(shapes) == qkv_keys() and all(s == (3 * 2 * 8, 16) for s in shapes.values())
    strategy = FedTP(hidden_dim=24)
    network = strategy.setup(shapes, num_clients=5)
    assert network.embedding_dim == 128 and len(network.heads) == 2
    assert [h.out_features for h in network.heads] == [3 * 2 * 8 * 16] * 2
    generated = strategy.generate([0, 1, 2])
    for key, value in generated.items():
        for i in range(3):
            for j in range(i + 1, 3):
                assert not torch.allclose(value[i], value[j]), (key, i, j)


def test_fedtp_never_averages_qkv_into_the_shared_state(datamodule_factory, tmp_path):
    loop = fedtp_loop(datamodule_factory(num_clients=4), tmp_path, rounds=2, fraction=1.0)
    result = loop.run()
    assert not qkv_keys() & set(result.global_state)
    assert set(result.global_state) == set(loop.client.shared_keys())
    assert loop.strategy.version == 2 == result.history[-1]["hn_version"]
    # the aggregation itself: QKV only travels in extras and never reaches the aggregate
    strategy = FedTP(hidden_dim=8)
    strategy.setup(loop.client.generated_shapes(), num_clients=4)
    shared = loop.client.shared_state()
    messages = strategy.configure_train(0, [0, 1], shared)
    assert all(set(m.extras) == qkv_keys() and not qkv_keys() & set(m.state) for m in messages)
    updates = [
        ClientUpdate(
            client_id=m.client_id,
            round=0,
            state={k: v + (i + 1) for k, v in shared.items()},
            num_samples=10 * (i + 1),
            extras={k: v + 1.0 for k, v in m.extras.items()},
        )
        for i, m in enumerate(messages)
    ]
    aggregated = strategy.aggregate_train(0, updates, shared)
    assert set(aggregated) == set(shared)
    key = "backbone.cls_token"
    torch.testing.assert_close(aggregated[key], shared[key] + (1 * 1 + 2 * 2) / 3)  # FedAvg with p = (1/3, 2/3)


def test_never_trained_client_gets_its_qkv_from_the_hypernetwork_at_evaluation(datamodule_factory, tmp_path):
    datamodule = datamodule_factory(num_clients=4)
    loop = fedtp_loop(datamodule, tmp_path, rounds=1, fraction=0.25)
    loop.run()
    trained = set(loop.stage.sampler.sample(0).reporting)
    untrained = [c for c in range(4) if c not in trained]
    assert len(untrained) == 3
    client, strategy = loop.client, loop.strategy
    for cid in untrained:
        generated = strategy.generate([cid])
        correct = total = 0
        with client_model(loop, cid), torch.no_grad():
            for key in qkv_keys():
                torch.testing.assert_close(client.state_dict()[key], generated[key][0])
                assert key not in loop.initial_personal  # generated, never kept
            for x, y in datamodule.client_test_dataloader(cid):
                correct += int((client(x).argmax(1) == y).sum())
                total += len(y)
        assert loop.evaluation.last_personalized.per_client[cid] == pytest.approx(correct / total)
    first, second = (strategy.generate([cid]) for cid in untrained[:2])
    assert all(not torch.equal(first[k], second[k]) for k in qkv_keys())  # each client its own projections
    # a client evaluated by the loop sees the hypernetwork of *after* the round's update, not a stale copy
    assert strategy.version == 1


def test_personalized_t_keeps_qkv_local(datamodule_factory, tmp_path):
    client = FederatedClient(tiny_vit(), personal=[QKV()], optimizer=sgd)
    loop = FederatedLoop(
        client, datamodule_factory(num_clients=3), FedAvg(), rounds=1, loggers=[], progress=False, run_dir=tmp_path
    )
    result = loop.run()
    assert not qkv_keys() & set(result.global_state)
    stored = [store_of(loop).get(c) for c in range(3)]
    assert all(set(s) == qkv_keys() for s in stored)
    key = sorted(qkv_keys())[0]
    assert not torch.equal(stored[0][key], stored[1][key])


def write_corpus(path: Path) -> Path:
    blocks = []
    for turn in range(24):
        name = ("ALPHA", "BETA", "GAMMA")[turn % 3]
        text = f"{name.lower()} says the thing number {turn} to everyone,\nand then {name.lower()} stops."
        blocks.append(f"{name}:\n{text}")
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def test_fedtp_on_text_next_character_prediction(tmp_path):
    datamodule = ShakespeareDataModule(
        path=str(write_corpus(tmp_path / "corpus.txt")), seq_len=12, stride=4, min_speeches=4, batch_size=16
    )
    datamodule.setup()
    torch.manual_seed(0)
    body = CharTransformer(datamodule.num_classes, seq_len=12, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32)
    loop = fedtp_loop(datamodule, tmp_path / "run", rounds=1, fraction=1.0, backbone=body)
    result = loop.run()
    assert set(loop.client.generated_keys()) == qkv_keys()
    assert 0.0 <= result.history[0]["personal_acc"] <= 1.0 and result.history[0]["hn_version"] == 1.0


def cli_args(tmp_path, method):
    return [
        "fit",
        "--config",
        str(ROOT / "configs/data/synthetic.yaml"),
        "--config",
        str(ROOT / "configs/model/vit_tiny.yaml"),
        "--config",
        str(ROOT / f"configs/method/{method}.yaml"),
        *[f"--model.init_args.backbone.init_args.{k}={v}" for k, v in VIT.items()],
        "--trainer.rounds",
        "2",
        "--trainer.client_fraction",
        "0.5",
        "--trainer.run_dir",
        str(tmp_path),
        "--trainer.progress",
        "false",
        "--trainer.logger",
        "false",
    ]


@pytest.mark.parametrize("method", ["fedtp", "personalized_t"])
def test_config_runs_two_rounds_through_the_cli(method, tmp_path):
    extra = ["--trainer.server.init_args.hidden_dim", "16"] if method == "fedtp" else []
    cli = build_cli(args=cli_args(tmp_path, method) + extra)
    history = cli.trainer.federated_result.history
    assert len(history) == 2 and 0.0 <= history[-1]["personal_acc"] <= 1.0
    assert not any("qkv" in k for k in cli.trainer.federated_result.global_state)
    assert isinstance(cli.model, FedTPClient) == (method == "fedtp")


def test_shakespeare_char_transformer_config_runs_through_the_cli(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    vocab = len(set(corpus.read_text()))
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/data/shakespeare.yaml"),
        "--config",
        str(ROOT / "configs/model/char_transformer.yaml"),
        "--config",
        str(ROOT / "configs/method/fedtp.yaml"),
        f"--data.init_args.path={corpus}",
        "--data.init_args.seq_len=12",
        "--data.init_args.stride=6",
        "--data.init_args.min_speeches=4",
        f"--model.init_args.backbone.init_args.vocab_size={vocab}",
        "--model.init_args.backbone.init_args.seq_len=12",
        "--model.init_args.backbone.init_args.dim=16",
        "--model.init_args.backbone.init_args.depth=1",
        "--model.init_args.backbone.init_args.heads=2",
        "--model.init_args.backbone.init_args.dim_head=8",
        "--trainer.server.init_args.hidden_dim=16",
        "--trainer.rounds=2",
        f"--trainer.run_dir={tmp_path / 'run'}",
        "--trainer.progress=false",
        "--trainer.logger=false",
    ]
    cli = build_cli(args=args)
    assert cli.datamodule.num_classes == vocab == cli.model.num_classes  # the corpus' characters
    assert len(cli.trainer.federated_result.history) == 2
