import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402

from lit_fed.flower.client_app import hosted_client, node_state  # noqa: E402
from lit_fed.flower.node_state import ContextState, DirectoryState  # noqa: E402


def context(**node_config):
    return Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("kind", ["context", "directory"])
def test_node_state_returns_the_newest_version_before_a_round(kind, tmp_path):
    store = ContextState(context()) if kind == "context" else DirectoryState(tmp_path)
    assert store.load(0, before_round=5) is None
    store.save(0, 1, {"w": torch.ones(2)})
    store.save(0, 3, {"w": torch.full((2,), 3.0)})
    assert torch.equal(store.load(0, before_round=4)["w"], torch.full((2,), 3.0))
    assert store.load(1, before_round=4) is None  # another client
    if kind == "directory":  # older versions are what a resumed run needs
        assert torch.equal(store.load(0, before_round=3)["w"], torch.ones(2))
        assert store.load(0, before_round=1) is None


def test_directory_state_keeps_the_newest_versions(tmp_path):
    store = DirectoryState(tmp_path, keep=2)
    for rnd in range(5):
        store.save(7, rnd, {"w": torch.tensor(float(rnd))})
    assert sorted(p.name for p in (tmp_path / "client_7").iterdir()) == ["r3.pt", "r4.pt"]


def test_node_config_selects_the_client_and_the_state_directory(tmp_path):
    ctx = context(**{"partition-id": 3, "state-dir": str(tmp_path)})
    assert hosted_client(ctx) == 3
    assert isinstance(node_state(ctx, None), DirectoryState)
    assert isinstance(node_state(context(**{"partition-id": 0}), None), ContextState)
    with pytest.raises(KeyError, match="partition-id"):
        hosted_client(context())


def test_directory_state_discards_versions_from_a_round(tmp_path):
    store = DirectoryState(tmp_path, keep=5)
    for client in (0, 1):
        for rnd in range(4):
            store.save(client, rnd, {"w": torch.tensor(float(rnd))})
    store.discard_from(1, 2)
    assert sorted(p.name for p in (tmp_path / "client_1").iterdir()) == ["r0.pt", "r1.pt"]
    assert len(list((tmp_path / "client_0").iterdir())) == 4  # another client's versions are untouched
    store.discard_from(0, 0)
    assert store.load(0, before_round=10) is None and store.load(1, before_round=10)["w"] == 1.0


def test_context_state_discards_a_version_from_a_round():
    store = ContextState(context(**{"partition-id": 0}))
    store.save(3, 4, {"w": torch.tensor(4.0)})
    store.discard_from(3, 5)
    assert store.load(3, before_round=10)["w"] == 4.0
    store.discard_from(3, 4)
    assert store.load(3, before_round=10) is None
    store.discard_from(3, 0)  # nothing left: no error


def test_directory_state_keeps_what_a_resume_needs_when_told(tmp_path):
    """With ``keep_from`` the newest version below it and every version from it on stay, however many."""
    store = DirectoryState(tmp_path, keep=1)
    for version in range(6):
        store.save(0, version, {"w": torch.tensor(float(version))}, keep_from=2)
    assert sorted(p.name for p in (tmp_path / "client_0").iterdir()) == ["r1.pt", "r2.pt", "r3.pt", "r4.pt", "r5.pt"]
    assert store.load(0, before_round=2)["w"] == 1.0  # what a resume at 2 reads
    store.save(0, 6, {"w": torch.tensor(6.0)}, keep_from=5)
    assert sorted(p.name for p in (tmp_path / "client_0").iterdir()) == ["r4.pt", "r5.pt", "r6.pt"]
    store.save(0, 7, {"w": torch.tensor(7.0)})  # not told: its own policy, the newest `keep`
    assert sorted(p.name for p in (tmp_path / "client_0").iterdir()) == ["r7.pt"]
