"""The Flower runner's protocol without Ray: run start, silent nodes, server-side hooks, what a fresh run forgets."""

import functools

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from flwr.app import Message, RecordDict  # noqa: E402

from lit_fed.client.split import Head  # noqa: E402
from lit_fed.flower import DirectoryState, FlowerRunner, InProcessRunner  # noqa: E402
from lit_fed.flower.server_app import seconds  # noqa: E402
from lit_fed.loop import FederatedLoop  # noqa: E402


class SilentGrid:
    """A Flower grid whose nodes 11 and 12 host clients 0 and 1, and where only node 11 ever replies."""

    def get_node_ids(self):
        return [11, 12]

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            if message.metadata.dst_node_id == 11:
                reply = Message(RecordDict(), reply_to=message)
                replies.append(reply)
        return replies


@pytest.fixture
def task_identity(monkeypatch):
    """Flower messages are created inside a ServerApp run; give this process the identity one would have."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def test_a_silent_node_stops_the_round_naming_its_client(task_identity):
    runner = FlowerRunner(SilentGrid(), timeout=0.5)
    runner.nodes = {0: 11, 1: 12}
    contents = [(0, RecordDict()), (1, RecordDict())]
    with pytest.raises(TimeoutError, match=r"1 of 2 replies within 0.5 s; no reply for clients \[1\]"):
        runner.round_trip(contents, "train", 0)


def test_run_config_timeouts():
    assert seconds(None, 600.0) == 600.0 and seconds("", None) is None
    assert seconds(30, None) == 30.0 and seconds("45.5", 600.0) == 45.5
    assert seconds(0, 600.0) is None  # 0: no limit


def fedper_loop(client_factory, datamodule_factory, run_dir, **options):
    """FedPer on 2 clients, 1 round unless ``options`` say otherwise (any FederatedLoop option)."""
    optimizer = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)  # picklable, as Ray needs
    options = {"rounds": 1, "loggers": [], "progress": False, **options}
    return FederatedLoop(
        client_factory(personal=[Head()], optimizer=optimizer),
        datamodule_factory(num_clients=2),
        run_dir=run_dir,
        **options,
    )


def test_a_fresh_run_forgets_what_an_earlier_run_left_on_the_nodes(client_factory, datamodule_factory, tmp_path):
    """Only one of two clients trains; the other is evaluated with its initial head, not a leftover one."""
    expected = fedper_loop(client_factory, datamodule_factory, tmp_path / "seq", client_fraction=0.5).run()
    nodes = DirectoryState(tmp_path / "nodes")
    leftover = {k: torch.zeros_like(v) for k, v in client_factory(personal=[Head()]).personal_state().items()}
    for cid in (0, 1):  # an earlier run's round-0 heads, all zeros
        nodes.save(cid, 0, leftover)
    loop = fedper_loop(client_factory, datamodule_factory, tmp_path / "flower", client_fraction=0.5)
    loop.runner = InProcessRunner(loop, tmp_path / "nodes")
    result = loop.run()
    assert loop.runner.messages[:2] == ["query.begin", "query.begin"]
    assert result.history[0]["personal_acc"] == expected.history[0]["personal_acc"]
    trained = set(loop.stage.sampler.sample(0).reporting)
    (untrained,) = {0, 1} - trained
    assert nodes.load(untrained, before_round=5) is None  # forgotten, not used
    assert nodes.load(trained.pop(), before_round=5)["backbone.fc.weight"].abs().sum() > 0


def test_an_unpicklable_client_side_is_refused_with_advice(client_factory, datamodule_factory, tmp_path):
    client = client_factory(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))  # a lambda does not pickle
    loop = FederatedLoop(client, datamodule_factory(num_clients=2), rounds=1, run_dir=tmp_path, loggers=[])
    with pytest.raises(TypeError, match="must pickle, as Flower's simulation ships it to Ray actors"):
        InProcessRunner(loop, tmp_path / "nodes")


def test_a_resume_from_the_oldest_kept_checkpoint_finds_its_node_state(client_factory, datamodule_factory, tmp_path):
    """5 FedPer rounds keeping 4 round checkpoints on nodes that would keep a single version: the server tells the
    nodes which versions a resume may need, so resuming from round 1 (not the last checkpoint) is still exact."""

    def loop(run_dir, resume_from=None):
        federated = fedper_loop(client_factory, datamodule_factory, run_dir, rounds=5, keep_checkpoints=4)
        federated.runner = InProcessRunner(federated, tmp_path / "nodes", keep=1)
        return federated, federated.run(resume_from=resume_from)

    _, full = loop(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "nodes/client_0").iterdir()) == [
        "r0.pt",
        "r1.pt",
        "r2.pt",
        "r3.pt",
        "r4.pt",
    ]
    resumed_loop, resumed = loop(tmp_path / "resumed", tmp_path / "run/checkpoints/round_00002.ckpt")
    assert resumed_loop.runner.messages.count("train") == 3 * 2
    for key, value in full.global_state.items():
        assert torch.equal(resumed.global_state[key], value), key
    assert [m["personal_acc"] for m in resumed.history] == [m["personal_acc"] for m in full.history]
