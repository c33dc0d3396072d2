"""PSE through Lightning and the FederatedLoop: persistence, mixed precision, the CLI, resume."""

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import store_of
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lit_fed.cli import build_cli
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import load_checkpoint, round_checkpoint_path
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods.pse import PSEClient, select_channels
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/tinycnn.yaml")]
METHODS = ("pse", "pse_no_excitation", "pse_no_attention")
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def make_pse(seed: int = 0, optimizer=None, **kwargs) -> PSEClient:
    torch.manual_seed(seed)
    optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    return PSEClient(TinyCNN(in_channels=1, num_classes=4, width=8), optimizer=optimizer, **kwargs)


def tiny_loader(num: int = 48, batch_size: int = 8, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(num, 1, 8, 8, generator=generator)
    y = torch.randint(0, 4, (num,), generator=generator)
    x[torch.arange(num), 0, y, y] += 2.0  # a learnable signal
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class GradRecorder(L.Callback):
    """Records, at every optimizer step, the gradients the module's score update reads (callbacks run first)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {}
        for layer in pl_module.scored_layers:
            global_conv, personal_conv = pl_module.layer_pair(layer)
            grads[layer] = (global_conv.weight.grad.detach().clone(), personal_conv.weight.grad.detach().clone())
        every = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.steps.append(
            {
                "grads": grads,
                "finite": all(bool(torch.isfinite(g).all()) for g in every),
                "scale": float(scaler.get_scale()) if scaler is not None else 1.0,
                "batch": len(self.batches) - 1,
            }
        )


def magnitude64(grad: torch.Tensor) -> torch.Tensor:
    return grad.double().abs().flatten(1).mean(1)


def replay_scores(steps, ema: float = 0.9, unscale: bool = False) -> dict[str, torch.Tensor]:
    """The EMA of |a_g − a_k| over the recorded finite steps, in float64 (an independent reference)."""
    scores: dict[str, torch.Tensor] = {}
    for step in steps:
        if not step["finite"]:
            continue
        factor = 1.0 / step["scale"] if unscale else 1.0
        for layer, (g_global, g_personal) in step["grads"].items():
            increment = (magnitude64(g_global) * factor - magnitude64(g_personal) * factor).abs()
            scores[layer] = ema * scores.get(layer, torch.zeros_like(increment)) + (1 - ema) * increment
    return scores


def fit(model: PSEClient, loader: DataLoader, epochs: int = 1, callbacks=(), **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, callbacks=list(callbacks), **QUIET, **trainer_kwargs)
    trainer.fit(model, train_dataloaders=loader)
    return trainer


# -- plain Lightning -------------------------------------------------------------------------------------------------
def test_plain_lightning_fit_scores_every_step_and_excites_every_epoch():
    model = make_pse()
    recorder = GradRecorder()
    excited: list[dict] = []
    excite = model.excite

    def spy():  # on_train_epoch_end calls self.excite()
        record = excite()
        excited.append({k: v[0].clone() for k, v in record.items()})
        return record

    model.excite = spy
    loader = tiny_loader()
    trainer = fit(model, loader, epochs=2, callbacks=[recorder])
    assert int(model.excitation_scores.num_updates) == len(recorder.steps) == 2 * len(loader)
    torch.testing.assert_close(model.excitation_scores.score("conv").double(), replay_scores(recorder.steps)["conv"])
    assert len(excited) == 2 and all(len(e["conv"]) == math.ceil(0.3 * 8) for e in excited)
    results = trainer.validate(model, dataloaders=loader, verbose=False)
    assert 0.0 <= results[0]["val_acc"] <= 1.0


# -- the loop: persistence per client ---------------------------------------------------------------------------------
class StartRecorder(L.Callback):
    """The personal state each client starts a fit with."""

    def __init__(self) -> None:
        self.records: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer, pl_module):
        self.records[(pl_module.client_id, pl_module.current_round)] = pl_module.personal_state()


class StoreSnapshot(LoopCallback):
    def __init__(self) -> None:
        self.after: dict[int, dict[int, dict[str, torch.Tensor]]] = {}

    def on_round_end(self, loop, round, metrics):
        self.after[round] = {c: {k: v.clone() for k, v in store_of(loop).get(c).items()} for c in range(4)}


def test_scores_and_personal_model_persist_per_client_and_only_the_global_copy_is_shared(datamodule, tmp_path):
    starts, snapshots = StartRecorder(), StoreSnapshot()
    model = make_pse()
    loop = FederatedLoop(
        model,
        datamodule,
        rounds=2,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "callbacks": [starts]},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        callbacks=[snapshots],
        checkpoint_every=0,
    )
    result = loop.run()
    score, counter = "excitation_scores.score__conv", "excitation_scores.num_updates"
    assert set(result.global_state) == {f"backbone.{k}" for k in model.backbone.state_dict()}
    for cid in range(4):
        first, second = starts.records[(cid, 0)], starts.records[(cid, 1)]
        assert torch.all(first[score] == 0) and int(first[counter]) == 0
        for key, value in snapshots.after[0][cid].items():  # round 1 starts from what round 0 stored
            assert torch.equal(second[key], value), (cid, key)
        steps = math.ceil(datamodule.client_num_train_samples(cid) / 16)
        assert int(snapshots.after[0][cid][counter]) == steps
        assert int(snapshots.after[1][cid][counter]) == 2 * steps  # the EMA continues across rounds
    final = snapshots.after[1]
    for key in (score, "personal_model.conv.weight", "personal_head.weight", "cross_attention.attn.in_proj_weight"):
        values = [final[c][key] for c in range(4)]
        assert all(not torch.equal(values[0], v) for v in values[1:]), key
    assert all(torch.all(final[c][score] > 0) for c in range(4))
    for metrics in result.history:
        assert math.isfinite(metrics["personal_acc"]) and math.isfinite(metrics["global_acc"])


def test_the_global_copy_trains_exactly_like_fedavg(datamodule_factory, tmp_path):
    """The personal terms give no gradient to the global copy: its aggregated state equals a FedAvg run's."""
    from lit_fed.client.module import FederatedClient

    def run(model, name):
        loop = FederatedLoop(
            model,
            datamodule_factory(),
            rounds=2,
            trainer_kwargs={"accelerator": "cpu", "devices": 1},
            run_dir=tmp_path / name,
            loggers=[],
            progress=False,
            checkpoint_every=0,
            personalized_eval=False,
        )
        return loop.run()

    sgd = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)  # noqa: E731
    pse = run(make_pse(optimizer=sgd), "pse")
    torch.manual_seed(0)
    fedavg = run(FederatedClient(TinyCNN(in_channels=1, num_classes=4, width=8), optimizer=sgd), "fedavg")
    for key, value in fedavg.global_state.items():
        assert torch.equal(pse.global_state[key], value), key
    assert [h["global_acc"] for h in pse.history] == [h["global_acc"] for h in fedavg.history]


# -- mixed precision ---------------------------------------------------------------------------------------------------
def test_bf16_loop_stays_finite(datamodule, tmp_path):
    model = make_pse()
    loop = FederatedLoop(
        model,
        datamodule,
        rounds=2,
        trainer_kwargs={"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed"},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        checkpoint_every=0,
    )
    result = loop.run()
    assert all(math.isfinite(v) for h in result.history for v in h.values() if isinstance(v, float))
    assert all(torch.isfinite(v).all() for v in result.global_state.values() if v.is_floating_point())
    for cid in range(4):
        state = store_of(loop).get(cid)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        assert int(state["excitation_scores.num_updates"]) > 0 and state["excitation_scores.score__conv"].sum() > 0


def test_bf16_scores_and_selection_match_fp32_on_the_same_gradients():
    """Under bf16-mixed the scores are the fp32 EMA of the step's gradients, and the excitation selects what a plain
    fp32 client selects from the same gradients."""
    model = make_pse()
    recorder = GradRecorder()
    fit(model, tiny_loader(), callbacks=[recorder], precision="bf16-mixed")
    assert recorder.steps and all(step["finite"] for step in recorder.steps)
    reference = make_pse(seed=3)  # fp32, no trainer: the same code path fed the recorded gradients
    for step in recorder.steps:
        for layer, (g_global, g_personal) in step["grads"].items():
            global_conv, personal_conv = reference.layer_pair(layer)
            global_conv.weight.grad, personal_conv.weight.grad = g_global.clone(), g_personal.clone()
        reference.update_scores()
    replayed = replay_scores(recorder.steps)
    for layer in model.scored_layers:
        scores = model.excitation_scores.score(layer)
        assert torch.equal(scores, reference.excitation_scores.score(layer))
        torch.testing.assert_close(scores.double(), replayed[layer], rtol=1e-5, atol=1e-9)
        indices, alpha = model.last_excitation[layer]
        ref_indices, ref_alpha = select_channels(reference.excitation_scores.score(layer), 0.3)
        assert torch.equal(indices, ref_indices) and torch.equal(alpha, ref_alpha)
        ordered = replayed[layer].sort(descending=True).values
        k = len(indices)
        if ordered[k - 1] - ordered[k] > 1e-6 * ordered[0]:  # deterministic: no near-tie at the cut
            assert set(indices.tolist()) == set(replayed[layer].topk(k).indices.tolist())


@pytest.mark.parametrize("fused", [False, True], ids=["sgd", "fused_adam"])
def test_fp16_with_grad_scaler_reads_unscaled_gradients_and_skips_overflow_steps(fused):
    """16-mixed (fp16 autocast + GradScaler, forced on CPU through the plugin): the scores use unscaled gradients
    (Lightning unscales before ``on_before_optimizer_step``; fused optimizers are unscaled by the module), and the
    steps the scaler skips do not update the EMA."""
    if fused:
        optimizer = lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)  # noqa: E731
    else:
        optimizer = lambda params: torch.optim.SGD(params, lr=0.05)  # noqa: E731
    model = make_pse(optimizer=optimizer)
    initial = copy.deepcopy(model)
    recorder = GradRecorder()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**22, growth_interval=1)
    loader = tiny_loader(num=96)
    fit(model, loader, callbacks=[recorder], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    finite = [step["finite"] for step in recorder.steps]
    assert not all(finite) and any(finite), finite  # both skipped and applied steps happened
    assert int(model.excitation_scores.num_updates) == sum(finite)
    replayed = replay_scores(recorder.steps, unscale=fused)
    for layer in model.scored_layers:
        torch.testing.assert_close(model.excitation_scores.score(layer).double(), replayed[layer], rtol=1e-5, atol=1e-9)
    # the first applied step ran on the initial weights (the skipped ones changed nothing): its unscaled gradients
    # match an fp32 backward of the same batch, i.e. they are not multiplied by the loss scale
    first = recorder.steps[finite.index(True)]
    x, y = recorder.batches[first["batch"]]
    output = initial.compute_step((x, y))
    loss = output.loss + sum(initial.extra_losses((x, y), output).values())
    loss.backward()
    for layer, (g_global, g_personal) in first["grads"].items():
        factor = 1.0 / first["scale"] if fused else 1.0
        global_conv, personal_conv = initial.layer_pair(layer)
        torch.testing.assert_close(
            magnitude64(g_global) * factor, magnitude64(global_conv.weight.grad), rtol=0.05, atol=0
        )
        torch.testing.assert_close(
            magnitude64(g_personal) * factor, magnitude64(personal_conv.weight.grad), rtol=0.05, atol=0
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- the CLI -----------------------------------------------------------------------------------------------------------
def run_cli(tmp_path: Path, *extra: str, base=BASE) -> object:
    args = ["fit", *base, *extra, "--trainer.run_dir", str(tmp_path), "--trainer.progress", "false"]
    return build_cli(args=args)


def finite_history(history) -> bool:
    return all(math.isfinite(v) for h in history for v in h.values() if isinstance(v, float))


@pytest.mark.parametrize("method", METHODS)
def test_each_config_runs_and_resumes_to_identical_numbers(method, tmp_path):
    config = ["--config", str(ROOT / f"configs/method/{method}.yaml")]
    full = run_cli(tmp_path / "full", *config, "--trainer.rounds", "2", "--trainer.keep_checkpoints", "5")
    model = full.model
    assert isinstance(model, PSEClient)
    assert model.use_attention == (method != "pse_no_attention")
    assert model.use_excitation == (method != "pse_no_excitation")
    history = full.trainer.federated_result.history
    assert len(history) == 2 and finite_history(history) and "personal_acc" in history[-1]
    # a fresh process-like run resumed from the state after round 0 replays round 1 exactly
    cut = tmp_path / "resumed"
    round_0 = round_checkpoint_path(tmp_path / "full/checkpoints", 0)
    resumed = run_cli(cut, *config, "--trainer.rounds", "2", "--ckpt_path", str(round_0))
    again = resumed.trainer.federated_result.history
    assert len(again) == 2
    for a, b in zip(history, again, strict=True):
        assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
            k: v for k, v in b.items() if not k.endswith("_seconds")
        }
    ckpt_full = load_checkpoint(tmp_path / "full/checkpoints/last.ckpt")
    ckpt_cut = load_checkpoint(cut / "checkpoints/last.ckpt")
    for key, value in ckpt_full["global_state"].items():
        assert torch.equal(value, ckpt_cut["global_state"][key]), key
    states_full, states_cut = ckpt_full["clients"]["store"]["states"], ckpt_cut["clients"]["store"]["states"]
    assert set(states_full) == set(states_cut) == {0, 1, 2, 3}
    for cid, state in states_full.items():
        assert any(k.startswith("excitation_scores") for k in state) == model.use_excitation
        assert any(k.startswith("cross_attention") for k in state) == model.use_attention
        for key, value in state.items():
            assert torch.equal(value, states_cut[cid][key]), (cid, key)


@pytest.mark.parametrize("method", ["pse"])
def test_resnet8_on_a_tiny_rgb_set_through_the_cli(method, tmp_path):
    base = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/resnet8.yaml")]
    dataset = "--data.init_args.dataset.init_args."
    cli = run_cli(
        tmp_path,
        "--config",
        str(ROOT / f"configs/method/{method}.yaml"),
        f"{dataset}channels=3",
        f"{dataset}image_size=32",
        f"{dataset}num_train=64",
        f"{dataset}num_test=16",
        "--data.init_args.num_clients=2",
        "--model.init_args.backbone.init_args.num_classes=4",
        "--trainer.rounds=2",
        base=base,
    )
    model = cli.model
    assert isinstance(model, PSEClient) and model.feature_channels == 64
    assert model.excited_layers == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    history = cli.trainer.federated_result.history
    assert len(history) == 2 and finite_history(history)
    states = load_checkpoint(tmp_path / "checkpoints/last.ckpt")["clients"]["store"]["states"]
    assert all(int(s["excitation_scores.num_updates"]) > 0 for s in states.values())
