import json
import types

import pytest
import torch

from lit_fed.client.module import FederatedClient
from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.client.serialization import encode_tensors, update_nbytes
from lit_fed.compression import SVD, CompressDownload, CompressUpload, Quantize8Bit, TopK
from lit_fed.loop.asynchronous import Asynchronous, Exponential
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import round_checkpoint_path
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.state_store import DiskStateStore
from lit_fed.methods.feddg import FedDGClient, FedDGStrategy
from lit_fed.models import MLP, TinyCNN
from lit_fed.server import FedAvg

CPU = {"accelerator": "cpu", "devices": 1}


def mlp_client(seed=0):
    torch.manual_seed(seed)
    return FederatedClient(MLP(64, 4, (48,)), optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))


def run(dm, tmp_path, name, callbacks=(), rounds=2, resume=None, client=None, strategy=None):
    loop = FederatedLoop(
        client or mlp_client(),
        dm,
        strategy or FedAvg(),
        rounds=rounds,
        trainer_kwargs=CPU,
        run_dir=tmp_path / name,
        loggers=[],
        progress=False,
        keep_checkpoints=5,
        callbacks=list(callbacks),
    )
    return loop, loop.run(resume_from=resume)


WRAPPERS = {
    "topk": lambda: CompressUpload(TopK(0.9)),
    "topk_residual_dgc": lambda: CompressUpload(TopK(0.9, warmup_rounds=2), residual=True, momentum=0.5),
    "svd": lambda: CompressUpload(SVD(energy_start=0.9, energy_end=0.95)),
    "quant8_stochastic": lambda: CompressUpload(Quantize8Bit(stochastic=True), residual=True),
    "download_topk": lambda: CompressDownload(TopK(0.9)),
}


_DENSE = {}


@pytest.fixture
def dense_run(datamodule_factory, tmp_path_factory):
    """The same 2 rounds without compression (run once per session)."""
    if "result" not in _DENSE:
        _DENSE["result"] = run(datamodule_factory(), tmp_path_factory.mktemp("dense"), "dense")[1]
    return _DENSE["result"]


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_wrapper_runs_sends_fewer_bytes_and_resumes_exactly(name, datamodule_factory, dense_run, tmp_path):
    dm = datamodule_factory()
    callback = WRAPPERS[name]()
    loop, full = run(dm, tmp_path, "full", [callback])
    direction = "down" if name.startswith("download") else "up"
    dense_total = dense_run.history[-1][f"mb_{direction}_total"]
    last = full.history[-1]
    assert last[f"mb_{direction}_total"] < dense_total
    assert last[f"mb_{direction}_dense_total"] == pytest.approx(dense_total)
    assert last[f"compression_ratio_{direction}_total"] == pytest.approx(dense_total / last[f"mb_{direction}_total"])
    assert last[f"compression_ratio_{direction}"] > 1
    summary = json.loads((tmp_path / "full" / f"compression_{direction}.json").read_text())
    assert summary[f"mb_{direction}_sent_total"] == pytest.approx(last[f"mb_{direction}_total"])
    assert last["global_acc"] > 0.25  # still learns (4 classes)

    resumed_callback = WRAPPERS[name]()
    _, resumed = run(
        dm,
        tmp_path,
        "resumed",
        [resumed_callback],
        resume=round_checkpoint_path(tmp_path / "full" / "checkpoints", 0),
        client=mlp_client(seed=1),  # different init: everything must come from the checkpoint
    )
    for key, value in full.global_state.items():
        assert torch.equal(resumed.global_state[key], value), key
    assert resumed.history[-1][f"mb_{direction}_total"] == last[f"mb_{direction}_total"]
    assert resumed.history[-1][f"compression_ratio_{direction}_total"] == last[f"compression_ratio_{direction}_total"]
    stored, restored = callback.state_dict()["store"]["states"], resumed_callback.state_dict()["store"]["states"]
    assert stored.keys() == restored.keys()
    for cid in stored:
        for key, value in stored[cid].items():
            assert torch.equal(restored[cid][key], value)
    if "residual" in name:
        assert any(k.startswith("residual/") for s in stored.values() for k in s)
        assert any(k.startswith("velocity/") for s in stored.values() for k in s)


def test_wire_nbytes_is_the_serialized_size_and_the_strategy_gets_full_states(datamodule_factory, tmp_path):
    seen = []

    class Capture(FedAvg):
        def aggregate_train(self, round, updates, global_state):
            seen.extend(updates)
            return super().aggregate_train(round, updates, global_state)

    class Check(CompressUpload):
        def client_update(self, loop, update, message):
            dense = update_nbytes(update)
            out = super().client_update(loop, update, message)
            assert out.wire_nbytes == len(encode_tensors(self.last_wire)) < dense
            # biases (1-D) arrive bit-exact; integer buffers untouched
            for key, value in update.state.items():
                if value.dim() <= 1:
                    assert torch.equal(out.state[key], value)
            return out

    run(datamodule_factory(), tmp_path, "a", [Check(TopK(0.9), residual=True)], rounds=1, strategy=Capture())
    assert seen and all(u.wire_nbytes is not None for u in seen)
    for update in seen:
        assert update.state.keys() == seen[0].state.keys()
        assert all(v.dtype == torch.float32 for v in update.state.values())


def test_download_wire_size_and_reconstruction(datamodule_factory, tmp_path):
    class Check(CompressDownload):
        def server_message(self, loop, message):
            out = super().server_message(loop, message)
            assert out.wire_nbytes == len(encode_tensors(self.last_wire))
            self.sizes.append(out.wire_nbytes)
            return out

    callback = Check(Quantize8Bit())
    callback.sizes = []
    loop, _ = run(datamodule_factory(), tmp_path, "d", [callback], rounds=2)
    first, second = callback.sizes[:4], callback.sizes[4:]
    assert min(first) > 3 * max(second)  # first contact dense, then 8-bit deltas


def test_disk_store_for_residuals(datamodule_factory, tmp_path):
    callback = CompressUpload(TopK(0.9), residual=True, store=DiskStateStore(tmp_path / "residuals"))
    run(datamodule_factory(), tmp_path, "disk", [callback], rounds=1)
    assert sorted(p.name for p in (tmp_path / "residuals").iterdir()) == [f"client_{c}" for c in range(4)]


def test_upload_with_extras_is_refused_unless_dense_extras(datamodule_factory, tmp_path):
    def feddg():
        torch.manual_seed(0)
        return FedDGClient(TinyCNN(1, 4), amplitudes_per_client=4, episodic=False)

    with pytest.raises(ValueError, match="FedDGClient.*extras.*dense_extras=True"):
        run(
            datamodule_factory(),
            tmp_path,
            "x",
            [CompressUpload(TopK(0.9))],
            1,
            client=feddg(),
            strategy=FedDGStrategy(),
        )
    callback = CompressUpload(Quantize8Bit(), dense_extras=True)
    _, result = run(datamodule_factory(), tmp_path, "y", [callback], 1, client=feddg(), strategy=FedDGStrategy())
    assert "extras/feddg_amplitudes" in callback.last_wire and len(result.history) == 1


def test_method_without_float_shared_state_is_refused_at_setup():
    loop = types.SimpleNamespace(global_state={"step": torch.tensor(3)}, client=object(), rounds=1)
    with pytest.raises(ValueError, match="object shares no floating-point state"):
        CompressUpload(TopK(0.9)).on_round_start(loop, 0)


class RecordDelivered(LoopCallback):
    """After download compression: what each dispatched client receives."""

    def __init__(self):
        self.delivered = []

    def server_message(self, loop, message):
        exact = {k: v.clone() for k, v in loop.global_state.items()}
        self.delivered.append((message.round, message.client_id, dict(message.state), exact))
        return message


def test_download_compression_works_in_asynchronous_mode_and_resumes_exactly(datamodule_factory, tmp_path):
    """Every dispatch is compressed against the client's previous reconstruction; the update's staleness step
    starts from what the client trained from; a resumed run reaches the same numbers."""

    def make(name, callbacks):
        return FederatedLoop(
            mlp_client(),
            datamodule_factory(),
            FedAvg(),
            rounds=3,
            trainer_kwargs=CPU,
            run_dir=tmp_path / name,
            loggers=[],
            progress=False,
            asynchronous=Asynchronous(concurrency=2, latency=Exponential(1.0)),
            callbacks=callbacks,
            keep_checkpoints=3,
        )

    download, record = CompressDownload(TopK(0.9)), RecordDelivered()
    loop = make("full", [download, record])
    result = loop.run()
    assert all(h["compression_ratio_down"] > 1.0 for h in result.history[1:])
    # a client's first download is the exact state; later ones are lossy reconstructions of the current version
    seen = set()
    for _, cid, delivered, exact in record.delivered:
        same = all(torch.equal(delivered[k], exact[k]) for k in exact)
        assert same == (cid not in seen), cid
        seen.add(cid)
    resumed_loop = make("full", [CompressDownload(TopK(0.9))])
    resumed = resumed_loop.run(resume_from=round_checkpoint_path(tmp_path / "full/checkpoints", 0))
    for key, value in result.global_state.items():
        assert torch.equal(resumed.global_state[key], value)
    strip = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in result.history]
    assert strip == [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in resumed.history]


def test_integer_extras_travel_dense_and_keys_without_reference_go_dense():
    callback = CompressUpload(TopK(0.5, exact=True))
    worker = types.SimpleNamespace(seed=0, module=object(), round=0, rounds=1)
    loop = types.SimpleNamespace(client=object(), rounds=1, global_state={"w": torch.zeros(8, 8)})
    callback.on_round_start(loop, 0)
    message = ServerMessage(round=0, client_id=0, state={"w": torch.zeros(8, 8)})
    update = ClientUpdate(
        client_id=0,
        round=0,
        state={"w": torch.randn(8, 8), "new": torch.randn(3, 3)},
        num_samples=5,
        extras={"label_counts": torch.tensor([1, 4])},
    )
    out = callback.client_update(worker, update, message)
    assert torch.equal(callback.last_wire["extras/label_counts"], update.extras["label_counts"])
    assert torch.equal(out.state["new"], update.state["new"]) and "state/new" in callback.last_wire
    assert int((out.state["w"] != 0).sum()) == 32
