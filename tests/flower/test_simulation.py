"""The flower-simulation backend reaches the sequential backend's numbers (2 clients, Ray, real ClientApps)."""

import functools

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

import torch  # noqa: E402
from helpers import logged_rounds  # noqa: E402

from lit_fed.client.module import FederatedClient  # noqa: E402
from lit_fed.client.split import BatchNorm, Head, Modules  # noqa: E402
from lit_fed.compression import CompressUpload, TopK  # noqa: E402
from lit_fed.flower import FlowerSimulation  # noqa: E402
from lit_fed.loop import Asynchronous  # noqa: E402
from lit_fed.loop.checkpoint import load_checkpoint  # noqa: E402
from lit_fed.methods import HypernetworkClient, PFedHN  # noqa: E402
from lit_fed.models import TinyCNN  # noqa: E402
from lit_fed.trainer import FederatedTrainer  # noqa: E402

COMPARED = ("global_acc", "personal_acc", "personal_acc_mean", "personal_acc_std", "train_loss", "mb_up", "mb_down")


def make_client(personal=()):
    torch.manual_seed(0)
    optimizer = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)  # picklable for the Ray actors
    return FederatedClient(TinyCNN(in_channels=1, num_classes=4), personal=personal, optimizer=optimizer)


def fit(backend, run_dir, datamodule_factory, personal=(), rounds=2, ckpt_path=None):
    trainer = FederatedTrainer(
        rounds=rounds, backend=backend, run_dir=str(run_dir), progress=False, accelerator="cpu", devices=1
    )
    trainer.fit(make_client(personal), datamodule=datamodule_factory(num_clients=2), ckpt_path=ckpt_path)
    return trainer.federated_result


def flower():
    return FlowerSimulation(client_resources={"num_cpus": 1}, ray_init_args={"num_cpus": 2}, timeout=300)


def assert_same_run(actual_state, expected_state, actual_history, expected_history):
    assert list(actual_state) == list(expected_state)
    for key, value in expected_state.items():
        torch.testing.assert_close(actual_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert len(actual_history) == len(expected_history)
    for got, want in zip(actual_history, expected_history, strict=True):
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_fedavg_one_config_switch_gives_the_sequential_global_model(datamodule_factory, tmp_path):
    sequential = fit("sequential", tmp_path / "seq", datamodule_factory)
    simulated = fit("flower-simulation", tmp_path / "flower", datamodule_factory)  # the one-line switch
    initial = make_client().shared_state()
    assert any(not torch.equal(sequential.global_state[k], initial[k]) for k in initial)  # it trained
    assert_same_run(simulated.global_state, sequential.global_state, simulated.history, sequential.history)
    # metric logging is the loop's in both backends: same CSV columns and rounds
    seq_csv = (tmp_path / "seq/logs/metrics.csv").read_text().splitlines()
    flower_csv = (tmp_path / "flower/logs/metrics.csv").read_text().splitlines()
    assert seq_csv[0] == flower_csv[0] and len(seq_csv) == len(flower_csv) == 3
    assert (tmp_path / "flower/checkpoints/last.ckpt").exists()


def test_personalized_method_matches_and_resumes_like_the_sequential_loop(datamodule_factory, tmp_path):
    """FedPer (personal head on each node): 2 rounds, then resumed to a 3rd, equal the uninterrupted sequential run."""
    sequential = fit("sequential", tmp_path / "seq", datamodule_factory, personal=[Head()], rounds=3)
    after_two = load_checkpoint(tmp_path / "seq/checkpoints/round_00002.ckpt")

    first = fit(flower(), tmp_path / "flower", datamodule_factory, personal=[Head()], rounds=2)
    assert_same_run(first.global_state, after_two["global_state"], first.history, sequential.history[:2])
    # personal state stayed on the nodes, one versioned file per client and round, and the clients' heads differ
    node_states = tmp_path / "flower/node_states"
    assert sorted(p.name for p in (node_states / "client_0").iterdir()) == ["r0.pt", "r1.pt"]
    head_0 = torch.load(node_states / "client_0/r1.pt", weights_only=True)
    head_1 = torch.load(node_states / "client_1/r1.pt", weights_only=True)
    assert set(head_0) == {"backbone.fc.weight", "backbone.fc.bias"}
    assert not torch.equal(head_0["backbone.fc.weight"], head_1["backbone.fc.weight"])

    resumed = fit(
        flower(),
        tmp_path / "flower",
        datamodule_factory,
        personal=[Head()],
        rounds=3,
        ckpt_path=tmp_path / "flower/checkpoints/last.ckpt",
    )
    assert_same_run(resumed.global_state, sequential.global_state, resumed.history, sequential.history)
    assert logged_rounds(tmp_path / "flower") == [1, 2, 3]  # the resumed run appended to the same metrics.csv

    # `lit-fed validate` of the checkpoint evaluates in-process with the heads the nodes kept
    trainer = FederatedTrainer(rounds=3, backend=flower(), run_dir=str(tmp_path / "flower"), progress=False)
    (metrics,) = trainer.validate(
        make_client([Head()]),
        datamodule=datamodule_factory(num_clients=2),
        ckpt_path=tmp_path / "flower/checkpoints/last.ckpt",
    )
    assert metrics["personal_acc"] == pytest.approx(resumed.history[-1]["personal_acc"], abs=1e-6)
    assert metrics["global_acc"] == pytest.approx(resumed.history[-1]["global_acc"], abs=1e-6)


def test_a_failing_client_fails_the_run_loudly_naming_it(datamodule_factory, tmp_path):
    """An exception in a node's ClientApp comes back as a Flower error reply and stops the run with its reason."""
    trainer = FederatedTrainer(
        rounds=1, backend=flower(), run_dir=str(tmp_path), progress=False, accelerator="cpu", precision="bogus"
    )
    with pytest.raises(RuntimeError, match=r"(?s)Flower train on client \d failed: .*Precision 'bogus' is invalid"):
        trainer.fit(make_client(), datamodule=datamodule_factory(num_clients=2))


def test_hypernetwork_and_upload_residuals_match_the_sequential_loop_across_ray_actors(datamodule_factory, tmp_path):
    """A hypernetwork-generated conv layer, a private BatchNorm, a shared head uploaded with top-k compression and
    error feedback; 2 Ray actors, 3 rounds. The generated tensors reach each node for evaluation (the strategy's
    personal overlay) and each client's residual follows it to whichever actor trains it next (kept with its personal
    state on the node), so every number equals the sequential run's."""

    def run(backend, run_dir):
        torch.manual_seed(0)
        optimizer = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
        # the hypernetwork generates the conv layer, BatchNorm is private (FedBN), the head is shared and compressed
        backbone = TinyCNN(in_channels=1, num_classes=4)
        client = HypernetworkClient(
            backbone, generated=[Modules(["backbone.conv"])], personal=[BatchNorm()], optimizer=optimizer
        )
        upload = CompressUpload(TopK(sparsity=0.9), residual=True, dense_extras=True)
        trainer = FederatedTrainer(
            rounds=3,
            local_steps=3,
            server=PFedHN(hidden_dim=16),
            round_callbacks=[upload],
            backend=backend,
            run_dir=str(run_dir),
            progress=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(client, datamodule=datamodule_factory(num_clients=2))
        return trainer.federated_result, upload

    sequential, sequential_upload = run("sequential", tmp_path / "seq")
    simulated, _ = run(flower(), tmp_path / "flower")
    assert_same_run(simulated.global_state, sequential.global_state, simulated.history, sequential.history)
    for key in ("hn_grad_norm", "compression_ratio_up", "mb_up_dense"):
        for got, want in zip(simulated.history, sequential.history, strict=True):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert sequential.history[-1]["compression_ratio_up"] > 1.5
    for cid in (0, 1):  # the node kept BatchNorm and the residual; the residual equals the sequential callback's
        saved = torch.load(tmp_path / f"flower/node_states/client_{cid}/r2.pt", weights_only=True)
        assert {"backbone.bn.weight", "backbone.bn.running_mean"} <= set(saved)
        assert not {"backbone.conv.weight", "backbone.fc.weight"} & set(saved)  # generated / shared
        prefix = f"lit_fed.callback.{sequential_upload.state_key}."
        residual = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
        expected = sequential_upload.store.get(cid)
        assert residual and set(residual) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(residual[key], value, rtol=1e-5, atol=1e-6)


def test_asynchronous_mode_trains_in_flight_clients_on_their_nodes_with_the_sequential_result(
    datamodule_factory, tmp_path
):
    """3 clients, 2 in flight at a time, FedPer heads on the nodes: each dispatched client starts training on its
    node at once (pushed, collected at its virtual arrival); global model, staleness and metrics equal the
    sequential run's."""

    def run(backend, run_dir):
        trainer = FederatedTrainer(
            rounds=2,
            asynchronous=Asynchronous(concurrency=2),
            backend=backend,
            run_dir=str(run_dir),
            progress=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(make_client([Head()]), datamodule=datamodule_factory(num_clients=3))
        return trainer.federated_result

    sequential = run("sequential", tmp_path / "seq")
    simulated = run(flower(), tmp_path / "flower")
    assert_same_run(simulated.global_state, sequential.global_state, simulated.history, sequential.history)
    for got, want in zip(simulated.history, sequential.history, strict=True):
        assert (got["version"], got["staleness_histogram"]) == (want["version"], want["staleness_histogram"])
    # heads are versioned by dispatch index on the nodes: more versions than rounds, in flight ones included
    versions = sorted(p.name for p in (tmp_path / "flower/node_states").glob("client_*/r*.pt"))
    assert len(versions) >= 2 * 2
