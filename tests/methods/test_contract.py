"""The method contract, checked on every config in ``configs/method/`` (found by glob: a new config is covered).

Each config is stacked on ``configs/data/synthetic.yaml`` and a small model config and run through the CLI's parsed
objects for 2 rounds with 2 clients on tiny data. For every method:

1. the run completes 2 rounds and every logged metric is finite;
2. personal state persists: what a client keeps after a fit (its ``personal_state()``, which the loop stores) is what
   it starts its next fit with, and what the store holds at the end; the two clients' personal states differ (unless
   the personal part never trains: FedBABU's frozen head). A method whose clients keep nothing (the FedAvg family;
   the category comes from the clients' own ``personal_state()``) stores nothing, and every client's model is the
   global one;
3. the shared state a client starts a fit with is the server's global state when it sent the message (exactly;
   after lossy download compression, the reconstruction the client received);
4. a run resumed from its round-0 checkpoint ends in the same global, strategy, client-store and callback state and
   the same metrics as the uninterrupted run, bit for bit;
5. under Flower's message handling (every message through Flower records and protobuf bytes, answered by the
   ClientApp's handlers with a :class:`~lit_fed.client.worker.ClientWorker` built from a pickled copy of the client
   side, personal and callback client-side state kept on the node; :class:`~lit_fed.flower.InProcessRunner`;
   asynchronous clients train at dispatch, as on Flower) the run is the same, bit for bit, and so is a run resumed
   from its round-0 checkpoint with the node's state directory;
6. the sequential run reproduces the reference digests of ``state_hashes.json`` (final global state, every client's
   personal state, metric history) bit for bit, where the numerical environment is the reference's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, client_model, global_model, store_of
from lightning.pytorch.callbacks import Callback

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ServerMessage, StateDict
from lit_fed.compression import CompressDownload
from lit_fed.loop import FederatedLoop, LoopCallback
from lit_fed.loop.asynchronous import AsynchronousRounds

METHOD_CONFIGS = sorted((ROOT / "configs/method").glob("*.yaml"))
ROUNDS = 2

SYNTHETIC = "--data.init_args.dataset.init_args."
COMMON = [
    "--data.init_args.num_clients=2",
    f"{SYNTHETIC}num_train=96",
    f"{SYNTHETIC}num_test=32",
    "--data.init_args.batch_size=16",
    f"--trainer.rounds={ROUNDS}",
    "--trainer.client_fraction=1.0",
    "--trainer.local_epochs=1",
    "--trainer.eval_every=1",
    "--trainer.checkpoint_every=1",
    f"--trainer.keep_checkpoints={ROUNDS}",
    "--trainer.accelerator=cpu",
    "--trainer.progress=false",
    "--trainer.logger=false",
]
VIT = "--model.init_args.backbone.init_args."
TINY_VIT = [f"{VIT}{k}={v}" for k, v in dict(image_size=8, patch_size=4, in_channels=1, num_classes=4).items()]
TINY_VIT += [f"{VIT}{k}={v}" for k, v in dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=16).items()]
HYPERNETWORK = ["--trainer.local_steps=2", "--trainer.server.init_args.hidden_dim=16"]

# Only where a method does not run on the default stack (synthetic + tinycnn) or would be slow there: method ->
# (model config or None for none, extra overrides). Everything else runs on the default stack unchanged.
DEFAULT_MODEL = "configs/model/tinycnn.yaml"
SPECIAL: dict[str, tuple[str | None, list[str]]] = {
    # transformers: per-block QKV (FedTP, Personalized-T); a tiny ViT on 8x8 grey images
    "fedtp": ("configs/model/vit_tiny.yaml", [*TINY_VIT, "--trainer.server.init_args.hidden_dim=16"]),
    "personalized_t": ("configs/model/vit_tiny.yaml", TINY_VIT),
    # the method brings its own (timm ViT) backbone
    "prompt_tuning": (
        None,
        [
            f"{VIT}name=test_vit",
            f"{VIT}num_classes=4",
            f"{VIT}in_channels=1",
            f"{VIT}model_kwargs={{img_size: 8, patch_size: 4}}",
            "--model.init_args.num_prompts=2",
        ],
    ),
    # hypernetworks: the config's 50 local steps and width-100 MLP are for real runs
    "pfedhn": (DEFAULT_MODEL, HYPERNETWORK),
    "pfedhn_pc": (DEFAULT_MODEL, HYPERNETWORK),
    # FedDF distils on a held-out part of the dataset
    "feddf": (
        DEFAULT_MODEL,
        [
            "--data.init_args.dataset=lit_fed.methods.HeldOut",
            "--data.init_args.dataset.init_args.source=lit_fed.data.Synthetic",
            "--data.init_args.dataset.init_args.source.init_args.num_train=128",
            "--data.init_args.dataset.init_args.source.init_args.num_test=32",
            "--trainer.server_steps.init_args.max_steps=4",
            "--trainer.server_steps.init_args.val_every=2",
            "--trainer.server_steps.init_args.batch_size=16",
        ],
    ),
    "fedgen": (DEFAULT_MODEL, ["--trainer.server.init_args.iterations=2", "--trainer.server.init_args.hidden_dim=16"]),
    "fedloge": (DEFAULT_MODEL, ["--model.init_args.sse_steps=20"]),
    "fedloge_no_glafr": (DEFAULT_MODEL, ["--model.init_args.sse_steps=20"]),
    "ccvr": (DEFAULT_MODEL, ["--trainer.server_steps.init_args.samples_per_class=16"]),
    # 2 clients: at most 2 train at once
    "partial_pfl_async": (DEFAULT_MODEL, ["--trainer.asynchronous.concurrency=2"]),
    # 20% of 2 clients rounds to no attacker: make one of the two Byzantine so that the attack runs
    "fedavg_byzantine": (DEFAULT_MODEL, ["--trainer.round_callbacks.init_args.fraction=0.5"]),
    "partial_pfl_byzantine": (DEFAULT_MODEL, ["--trainer.round_callbacks.init_args.fraction=0.5"]),
}


def cli_args(name: str, run_dir: Path) -> list[str]:
    model, extra = SPECIAL.get(name, (DEFAULT_MODEL, []))
    args = ["--config", str(ROOT / "configs/data/synthetic.yaml")]
    if model is not None:
        args += ["--config", str(ROOT / model)]
    args += ["--config", str(ROOT / f"configs/method/{name}.yaml"), *COMMON, *extra]
    return [*args, f"--trainer.run_dir={run_dir}"]


# -- recording -----------------------------------------------------------------------------------------------
def clone(state: StateDict | None) -> StateDict | None:
    return None if state is None else {k: v.detach().clone() for k, v in state.items()}


@dataclass
class Records:
    """What one run saw. Message keys are ``(round, client)``; in asynchronous mode ``round`` is the start version."""

    sent_global: dict[tuple[int, int], StateDict] = field(default_factory=dict)  # the server's state when sending
    delivered: dict[tuple[int, int], ServerMessage] = field(default_factory=dict)  # what the client received
    start_shared: dict[tuple[int, int], StateDict] = field(default_factory=dict)  # the client when its fit starts
    start_personal: dict[int, list[StateDict]] = field(default_factory=dict)  # client -> one per fit, in order
    start_keys: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # client -> message key per fit
    kept: dict[int, list[StateDict]] = field(default_factory=dict)  # client -> personal_state() after each fit


class RecordMessages(LoopCallback):
    """Records each delivered message and the server's global state when it was sent.

    Stateless (saves nothing in checkpoints); appended last, so it sees what download compression delivered.
    """

    def __init__(self, records: Records) -> None:
        self.records = records

    def server_message(self, loop: FederatedLoop, message: ServerMessage) -> ServerMessage:
        key = (message.round, message.client_id)
        self.records.sent_global[key] = clone(loop.global_state)
        self.records.delivered[key] = dataclasses.replace(
            message, state=clone(message.state), extras=dict(message.extras)
        )
        return message


class RecordFitStart(Callback):
    """Lightning callback of the client Trainers: the worker's shared and personal state when a client's fit starts.

    Only the loop's own client module's first fit after each ``receive_global`` (not server-side fits such as
    FedDF's distillation, nor evaluation-time fine-tuning).
    """

    def __init__(self, records: Records, client: Any) -> None:
        self.records = records
        self.client = client

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if pl_module is not self.client:
            return
        key = (pl_module.current_round, pl_module.client_id)
        if key not in self.records.start_shared:
            self.records.start_shared[key] = pl_module.shared_state()
            # the personal part it trains from: what it keeps, plus a hypernetwork's generated tensors it received
            generated = getattr(pl_module, "generated_keys", list)()
            tensors = pl_module.state_dict()
            start = {**pl_module.personal_state(), **{k: tensors[k].detach().clone() for k in generated}}
            self.records.start_personal.setdefault(key[1], []).append(start)
            self.records.start_keys.setdefault(key[1], []).append(key)


@dataclass
class Run:
    loop: FederatedLoop
    records: Records
    run_dir: Path


def build_loop(name: str, run_dir: Path) -> tuple[FederatedLoop, Records]:
    """The loop a config describes, with recorders: a loop callback, a client-Trainer callback, and a wrapper of the
    worker's ``fit`` noting the personal state the worker stores after each client fit."""
    cli = build_cli(args=cli_args(name, run_dir), run=False)
    records = Records()
    settings = cli.trainer.settings
    callbacks = [*settings.trainer_kwargs.get("callbacks", []), RecordFitStart(records, cli.model)]
    cli.trainer.settings = settings.replace(trainer_kwargs={**settings.trainer_kwargs, "callbacks": callbacks})
    loop = cli.trainer.build_loop(cli.model, cli.datamodule)
    loop.callbacks.append(RecordMessages(records))
    worker = loop.runner.worker
    fit = worker.fit

    def recorded_fit(message: ServerMessage, **kwargs: Any) -> Any:
        update = fit(message, **kwargs)
        records.kept.setdefault(message.client_id, []).append(loop.client.personal_state())
        return update

    worker.fit = recorded_fit  # type: ignore[method-assign]
    return loop, records


def run_method(name: str, run_dir: Path) -> Run:
    try:
        loop, records = build_loop(name, run_dir)
        loop.run()
    except Exception as err:  # a config that does not run on the default stack needs an entry in SPECIAL
        raise AssertionError(
            f"configs/method/{name}.yaml does not run {ROUNDS} rounds with `{' '.join(cli_args(name, run_dir))}`: "
            f"{err!r}. If the method needs another model config or overrides, add it to SPECIAL in {__file__}"
        ) from err
    return Run(loop, records, run_dir)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Callable[[str], Run]:
    """One uninterrupted run per method, shared by the contract's checks."""
    cache: dict[str, Run | BaseException] = {}

    def get(name: str) -> Run:
        if name not in cache:
            try:
                cache[name] = run_method(name, tmp_path_factory.mktemp(name))
            except BaseException as err:
                cache[name] = err
        run = cache[name]
        if isinstance(run, BaseException):
            raise run
        return run

    return get


# -- comparison ----------------------------------------------------------------------------------------------
def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-exact equality of nested checkpoint-like structures (tensors: dtype, shape and values; NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            raise AssertionError(f"{where}: tensor vs {type(b).__name__}")
        if a.dtype != b.dtype or a.shape != b.shape:
            raise AssertionError(f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        if not torch.equal(a.nan_to_num(), b.nan_to_num()) or not torch.equal(a.isnan(), b.isnan()):
            diff = (a.double() - b.double()).abs().max().item()
            raise AssertionError(f"{where}: values differ (max |difference| {diff:.3g})")
    elif isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            raise AssertionError(f"{where}: keys differ: {sorted(set(a) ^ set(b or {}), key=str)[:5]}")
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        if type(a) is not type(b) or len(a) != len(b):
            raise AssertionError(f"{where}: {a!r} vs {b!r}")
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        if not (isinstance(b, float) and math.isnan(b)):
            raise AssertionError(f"{where}: nan vs {b!r}")
    elif a != b:
        raise AssertionError(f"{where}: {a!r} vs {b!r}")


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in metrics.items() if not k.endswith("_seconds")} for metrics in history]


# -- the contract --------------------------------------------------------------------------------------------
IDS = [p.stem for p in METHOD_CONFIGS]


def test_every_special_case_names_a_method_config():
    assert METHOD_CONFIGS and set(SPECIAL) <= set(IDS), sorted(set(SPECIAL) - set(IDS))


@pytest.mark.parametrize("name", IDS)
def test_runs_two_rounds_with_finite_metrics(name, full_run):
    history = full_run(name).loop.history
    assert [m["round"] for m in history] == list(range(1, ROUNDS + 1))
    for metrics in history:
        assert {"global_acc", "personal_acc", "train_loss"} <= set(metrics), sorted(metrics)
        for key, value in metrics.items():
            if isinstance(value, int | float):
                assert math.isfinite(value), f"round {metrics['round']}: {key} = {value}"


def generated_keys(loop: FederatedLoop) -> set[str]:
    """Personal keys a hypernetwork generates for each client every round (never kept by the client)."""
    return set(loop.client.generated_keys()) if hasattr(loop.client, "generated_keys") else set()


def without(state: StateDict, keys: set[str]) -> StateDict:
    return {k: v for k, v in state.items() if k not in keys}


@pytest.mark.parametrize("name", IDS)
def test_personal_state_persists_across_rounds(name, full_run):
    run = full_run(name)
    loop, records = run.loop, run.records
    clients = range(loop.num_clients)
    for cid in clients:
        assert len(records.kept[cid]) == len(records.start_personal[cid]) >= 2, f"client {cid} trained < 2 times"
    generated = generated_keys(loop)
    if generated:
        # a hypernetwork's tensors are regenerated for the client each round and never kept: the ones a client
        # trains from are those sent, and the ones it is evaluated with are h(v_c; φ) for the current φ
        for cid in clients:
            for fit, key in enumerate(records.start_keys[cid]):
                sent = {k: records.delivered[key].extras[k] for k in generated}
                assert_same(
                    {k: records.start_personal[cid][fit][k] for k in generated}, sent, f"client {cid} fit {fit}"
                )
            assert not generated & set(store_of(loop).get(cid) or {}), f"client {cid}: generated tensors stored"
            with client_model(loop, cid) as model:
                tensors, current = clone(model.state_dict()), loop.strategy.generate([cid])
            assert_same({k: tensors[k] for k in generated}, {k: current[k][0] for k in generated}, f"client {cid}")
    if not any(state for fits in records.kept.values() for state in fits):
        # nothing kept (FedAvg family, pFedHN): nothing is stored, and every client's model is the global one plus
        # what the server generates for it
        assert not loop.initial_personal
        assert all(store_of(loop).get(cid) is None for cid in clients)
        with global_model(loop) as model:
            expected = without(clone(model.state_dict()), generated)
        for cid in clients:
            with client_model(loop, cid) as model:
                assert_same(without(clone(model.state_dict()), generated), expected, f"client {cid}'s model")
        return
    for cid in clients:
        starts, kept = records.start_personal[cid], records.kept[cid]
        # the first fit starts from the initial personal state (MOON: none yet) ...
        assert_same(without(starts[0], generated), loop.initial_personal, f"client {cid} fit 0")
        for fit in range(1, len(starts)):
            # ... and every later fit from what the client kept after its previous one
            assert_same(without(starts[fit], generated), kept[fit - 1], f"client {cid} fit {fit}")
        # the store holds what the client kept after its last fit
        stored = store_of(loop).get(cid)
        assert stored is not None, f"client {cid}: nothing stored"
        assert_same(stored, kept[-1], f"store {cid}")
    final = [store_of(loop).get(cid) for cid in clients]
    assert final[0] and set(final[0]) == set(final[1]), "the clients' personal states have different keys"
    schedule = getattr(loop.client, "schedule", None)
    if schedule is not None and all(phase.train == "shared" for phase in schedule.phases):
        # a personal part that never trains (FedBABU's head, frozen at its initialization) stays the initial one
        for cid in clients:
            assert_same(final[cid], loop.initial_personal, f"client {cid}'s untrained personal state")
    else:
        assert any(not torch.equal(final[0][k], final[1][k]) for k in final[0]), "both clients hold the same state"


@pytest.mark.parametrize("name", IDS)
def test_shared_state_is_the_servers_global_state(name, full_run):
    run = full_run(name)
    loop, records = run.loop, run.records
    shared = loop.client.shared_keys()
    lossy_download = any(isinstance(cb, CompressDownload) for cb in loop.callbacks)
    trained = sorted(records.start_shared)
    assert len(trained) == ROUNDS * loop.num_clients, trained
    for key in trained:
        delivered = records.delivered[key].state
        assert set(shared) <= set(delivered), f"{key}: the message lacks shared keys"
        start = records.start_shared[key]
        assert_same(start, {k: delivered[k] for k in shared}, f"{key}: client vs delivered message")
        # The server's global state when it sent the message: in asynchronous mode a client trains from the version
        # it was dispatched with, which the server may have moved past by the time the client's update arrives.
        # Compressed downloads (FedKD's SVD) deliver a lossy reconstruction by design, except at first contact.
        if not lossy_download or key[0] == 0:
            sent = records.sent_global[key]
            assert_same(start, {k: sent[k] for k in shared}, f"{key}: client vs server global state")


@pytest.mark.parametrize("name", IDS)
def test_resume_from_round_checkpoint_is_bit_exact(name, full_run, tmp_path):
    full = full_run(name)
    checkpoint = full.run_dir / "checkpoints" / "round_00001.ckpt"
    assert checkpoint.exists()
    resumed, records = build_loop(name, tmp_path)
    resumed.run(resume_from=checkpoint)
    assert len(resumed.history) == ROUNDS
    fits = sum(len(v) for v in records.kept.values())
    assert fits == sum(len(v) for v in full.records.kept.values()) // ROUNDS, "the resumed run did not run 1 round"
    a = full.loop.checkpoint_payload(ROUNDS - 1)
    b = resumed.checkpoint_payload(ROUNDS - 1)
    a["history"], b["history"] = without_timing(a["history"]), without_timing(b["history"])
    assert_same(a, b, name)
    for cid in range(full.loop.num_clients):
        assert_same(clone(store_of(full.loop).get(cid)), clone(store_of(resumed).get(cid)), f"client {cid}")


# -- 5. the same run under Flower's message handling -----------------------------------------------------------
FLOWER = importlib.util.find_spec("flwr") is not None


def run_under_flower(name: str, run_dir: Path, state_dir: Path, resume_from: Path | None = None) -> FederatedLoop:
    from lit_fed.flower import InProcessRunner

    cli = build_cli(args=cli_args(name, run_dir), run=False)
    loop = cli.trainer.build_loop(cli.model, cli.datamodule)
    loop.runner = InProcessRunner(loop, state_dir)
    loop.run(resume_from=resume_from)
    return loop


def without_client_stores(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint payload without the client-side state (on the nodes under Flower) and stateless callbacks."""
    callbacks = {key: {k: v for k, v in state.items() if k != "store"} for key, state in payload["callbacks"].items()}
    kept = {k: v for k, v in payload.items() if k not in ("clients", "callbacks", "history")}
    return {**kept, "callbacks": callbacks, "history": without_timing(payload["history"])}


def assert_node_holds_the_client_state(sequential: FederatedLoop, flower: FederatedLoop, state_dir: Path) -> None:
    """The node's state of each client (as the Flower run counts it) = the sequential store's personal state + the
    callbacks' stores."""
    from lit_fed.flower import DirectoryState
    from lit_fed.flower.client_app import CALLBACK_PREFIX

    nodes = DirectoryState(state_dir)
    for cid in range(sequential.num_clients):
        expected = dict(store_of(sequential).get(cid) or {})
        for callback in sequential.callbacks:
            store = getattr(callback, "store", None)
            if store is not None and store.get(cid):
                if type(callback).client_state is LoopCallback.client_state:
                    continue  # server-side per-client state (download compression's reconstructions)
                prefix = f"{CALLBACK_PREFIX}{callback.state_key}."
                expected.update({f"{prefix}{k}": v for k, v in store.get(cid).items()})
        held = nodes.load(cid, before_round=flower.stage.state_bound(cid)) or {}
        assert_same(held, expected, f"node of client {cid}")


@pytest.mark.skipif(not FLOWER, reason="needs Flower: pip install 'lit_fed[flower]'")
@pytest.mark.parametrize("name", IDS)
def test_flower_message_handling_gives_the_same_run(name, full_run, tmp_path):
    sequential = full_run(name).loop
    flower = run_under_flower(name, tmp_path / "run", tmp_path / "node_states")
    messages = flower.runner.messages  # type: ignore[attr-defined]
    trained = messages.count("train")  # the clients trained on the node (asynchronous: also those still in flight)
    assert (
        trained >= ROUNDS * flower.num_clients
        if isinstance(flower.stage, AsynchronousRounds)
        else trained == ROUNDS * flower.num_clients
    )
    expected = without_client_stores(sequential.checkpoint_payload(ROUNDS - 1))
    assert_same(without_client_stores(flower.checkpoint_payload(ROUNDS - 1)), expected, f"{name} under Flower")
    assert_node_holds_the_client_state(sequential, flower, tmp_path / "node_states")
    # resumed from round 0 with the node's state directory: the node forgets round 1 and re-runs it identically
    resumed = run_under_flower(
        name, tmp_path / "resumed", tmp_path / "node_states", resume_from=tmp_path / "run/checkpoints/round_00001.ckpt"
    )
    assert_same(without_client_stores(resumed.checkpoint_payload(ROUNDS - 1)), expected, f"{name} resumed under Flower")
    assert_node_holds_the_client_state(sequential, resumed, tmp_path / "node_states")


# -- 6. the reference digests ----------------------------------------------------------------------------------------
def _state_hashes() -> Any:
    spec = importlib.util.spec_from_file_location("state_hashes", Path(__file__).with_name("state_hashes.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


HASHES = _state_hashes()
REFERENCES = HASHES.load_references()
REFERENCE = HASHES.reference_for(HASHES.environment(), REFERENCES)


@pytest.mark.parametrize("index", range(len(REFERENCES)))
def test_every_method_config_has_a_reference_digest(index):
    configs = REFERENCES[index]["configs"]
    assert set(IDS) == set(configs), sorted(set(IDS) ^ set(configs))


@pytest.mark.skipif(
    REFERENCE is None,
    reason=f"no reference digests for this environment {HASHES.environment()} "
    f"(stored: {[r['environment'] for r in REFERENCES]})",
)
@pytest.mark.parametrize("name", IDS)
def test_run_reproduces_the_reference_digests(name, full_run):
    loop = full_run(name).loop
    reference = REFERENCE["configs"][name]
    assert sorted(loop.global_state) == reference["global_keys"]
    assert HASHES.state_digest(loop.global_state) == reference["global_state"], "final global state"
    personal = [HASHES.state_digest(store_of(loop).get(cid)) for cid in range(loop.num_clients)]
    assert personal == reference["personal"], "the clients' personal states"
    leaves_out = tuple(REFERENCE.get("history_leaves_out", ()))  # metrics added since the reference was written
    assert HASHES.history_digest(loop.history, leaves_out) == reference["history"], "the metric history"
