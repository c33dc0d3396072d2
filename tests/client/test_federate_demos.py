"""Modules nobody here wrote, federated as they are: Lightning's demo modules and a timm model, on both backends.

Each runs 2 clients x 2 rounds with FedAvg and FedProx on the sequential loop and through Flower's message
handling (``InProcessRunner``). The checks: the global state is the sample-weighted mean of the two clients'
trained states (captured where the server aggregates them), both backends reach the same global model, FedProx's
term changes the clients' training, and a module's own logged validation metrics are pooled as computed by hand
(sample-weighted means; exact merged states for a logged torchmetrics ``Metric``).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel, RandomDataset
from lightning.pytorch.demos.lstm import LightningLSTM, SequenceSampler, SimpleLSTM
from lightning.pytorch.demos.transformer import LightningTransformer, WikiText2
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from lit_fed import FedAvg, FederatedLoop, ProximalTerm, federate
from lit_fed.client.payloads import ServerMessage
from lit_fed.client.split import BatchNorm, Modules
from lit_fed.data import ClientLoaders, PartitionedDataModule

timm = pytest.importorskip("timm")

CPU = {"accelerator": "cpu", "devices": 1}
WORDS = "the cat sat on a mat and dog ran to big red house by tree".split()  # 15 words + <eos> = 16 tokens


# -- capturing what the server aggregates ----------------------------------------------------------------------
class RecordingFedAvg(FedAvg):
    """FedAvg that keeps every round's client updates (their trained states and sample counts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[list[Any]] = []

    def aggregate_train(self, round, updates, global_state):
        self.rounds.append([(u.client_id, u.num_samples, {k: v.clone() for k, v in u.state.items()}) for u in updates])
        return super().aggregate_train(round, updates, global_state)


def weighted_mean(updates: list[Any]) -> dict[str, torch.Tensor]:
    """``Σ n_k w_k / Σ n_k`` of every floating-point tensor, by hand (float64)."""
    total = sum(n for _, n, _ in updates)
    keys = [k for k, v in updates[0][2].items() if v.is_floating_point()]
    return {k: sum(n * state[k].double() for _, n, state in updates) / total for k in keys}


def run(module_fn, data_fn, run_dir: Path, *, mu: float = 0.0, flower: bool = False, **options):
    """Two rounds of ``federate(module_fn())`` on ``data_fn()``; returns ``(result, strategy, loop)``."""
    torch.manual_seed(0)
    module = federate(module_fn(), regularizers=[ProximalTerm(mu)] if mu else [], **options.pop("federate", {}))
    strategy = RecordingFedAvg()
    options = {"rounds": 2, "loggers": [], "progress": False, "trainer_kwargs": CPU, **options}
    loop = FederatedLoop(module, data_fn(), strategy, run_dir=run_dir, **options)
    if flower:
        from lit_fed.flower import InProcessRunner

        loop.runner = InProcessRunner(loop, run_dir / "nodes")
    return loop.run(), strategy, loop


def assert_global_is_weighted_mean(result, strategy) -> None:
    assert len(strategy.rounds) == 2 and all(len(r) == 2 for r in strategy.rounds)
    last = strategy.rounds[-1]
    assert last[0][1] != last[1][1]  # unequal sample counts: a plain mean would differ
    for key, expected in weighted_mean(last).items():
        torch.testing.assert_close(result.global_state[key].double(), expected, rtol=1e-6, atol=1e-7, msg=key)
    first = {k: v for k, v in last[0][2].items() if v.is_floating_point()}
    assert any(not torch.equal(first[k], last[1][2][k]) for k in first)  # the two clients trained differently


def assert_same_global(a, b) -> None:
    assert list(a.global_state) == list(b.global_state)
    for key, value in a.global_state.items():
        torch.testing.assert_close(b.global_state[key], value, rtol=1e-5, atol=1e-6, msg=key)


def check_both_methods_and_backends(module_fn, data_fn, tmp_path: Path, mu: float, **options):
    """FedAvg and FedProx, each sequential and through InProcessRunner; returns the sequential FedAvg run."""
    fedavg, s_avg, loop = run(module_fn, data_fn, tmp_path / "avg", **options)
    assert_global_is_weighted_mean(fedavg, s_avg)
    fedprox, s_prox, _ = run(module_fn, data_fn, tmp_path / "prox", mu=mu, **options)
    assert_global_is_weighted_mean(fedprox, s_prox)
    key = next(k for k, v in fedavg.global_state.items() if v.is_floating_point())
    assert not torch.equal(fedavg.global_state[key], fedprox.global_state[key])  # the proximal term acted
    for name, sequential in (("avg", fedavg), ("prox", fedprox)):
        flower, s_flower, _ = run(
            module_fn, data_fn, tmp_path / f"{name}_flower", mu=mu if name == "prox" else 0.0, flower=True, **options
        )
        assert_global_is_weighted_mean(flower, s_flower)
        assert_same_global(sequential, flower)
        assert flower.history[-1].keys() == sequential.history[-1].keys()
    return fedavg, s_avg, loop


# -- BoringModel: batches are bare tensors ---------------------------------------------------------------------
def boring_loaders(client_id: int) -> tuple[DataLoader, DataLoader]:
    """Client ``k``: 24 + 16k random 32-vectors for training, 8 + 4k for validation (bare tensor batches).

    Client 1's validation vectors are 3x larger, so its validation loss differs from client 0's.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(100 + client_id)
        train, val = RandomDataset(32, 24 + 16 * client_id), RandomDataset(32, 8 + 4 * client_id)
    val.data *= 1 + 2 * client_id  # the clients' validation losses differ widely
    return DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8)


def boring_data() -> ClientLoaders:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        global_val = DataLoader(RandomDataset(32, 12), batch_size=8)
    return ClientLoaders(boring_loaders, num_clients=2, global_val=global_val)


class LoggingBoringModel(BoringModel):
    """BoringModel whose validation logs a loss (a tensor) and an MSE (a torchmetrics Metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.val_mse = MeanSquaredError()

    def validation_step(self, batch, batch_idx):
        output = self(batch)
        self.val_mse(output, torch.ones_like(output))
        self.log("val_loss", self.loss(output))
        self.log("val_mse", self.val_mse)


def test_boring_model_federates_as_it_is_on_both_backends(tmp_path) -> None:
    check_both_methods_and_backends(BoringModel, boring_data, tmp_path, mu=1.0)


def test_logged_validation_metrics_are_pooled_by_samples_and_merged_states(tmp_path) -> None:
    result, _, loop = run(LoggingBoringModel, boring_data, tmp_path)
    data = boring_data()
    model = LoggingBoringModel()
    model.load_state_dict({**model.state_dict(), **result.global_state})
    model.eval()
    sums, counts, per_client = 0.0, 0, []
    with torch.no_grad():
        for cid in range(2):
            outputs = torch.cat([model(b) for b in data.client_test_dataloader(cid)])
            squared = (outputs - 1).pow(2)
            per_client.append(float(squared.mean()))
            sums, counts = sums + float(squared.sum()), counts + squared.shape[0]
        global_out = torch.cat([model(b) for b in data.global_test_dataloader()])
    last = result.history[-1]
    # 8 and 12 validation samples: the pooled value is the per-sample mean, not the mean of the two clients
    assert last["val_mse"] == pytest.approx(sums / (counts * 2), rel=1e-5)
    assert last["val_loss"] == pytest.approx(sums / (counts * 2), rel=1e-5)
    assert last["val_loss_mean"] == pytest.approx(sum(per_client) / 2, rel=1e-5)
    assert abs(last["val_loss"] - last["val_loss_mean"]) > 0.05 * last["val_loss"]
    assert last["global_val_loss"] == pytest.approx(float((global_out - 1).pow(2).mean()), rel=1e-5)
    assert "personal_acc" not in last and "global_acc" not in last
    assert set(result.summary) >= {"val_loss", "val_mse", "global_val_loss"}
    assert result.summary["val_loss"]["best"] == min(h["val_loss"] for h in result.history)  # lower is better
    assert (tmp_path / "metrics.png").is_file()


def test_logged_metrics_are_the_same_through_flower_records(tmp_path) -> None:
    sequential, _, _ = run(LoggingBoringModel, boring_data, tmp_path / "seq")
    flower, _, _ = run(LoggingBoringModel, boring_data, tmp_path / "flower", flower=True)
    for key in ("val_loss", "val_mse", "val_loss_mean", "val_loss_std", "global_val_loss"):
        assert flower.history[-1][key] == pytest.approx(sequential.history[-1][key], rel=1e-6), key


def test_a_csv_logger_writes_the_modules_own_metric_names(tmp_path) -> None:
    run(LoggingBoringModel, boring_data, tmp_path, loggers=None)
    header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_loss", "val_mse", "global_val_loss"} <= set(header)


# -- LightningTransformer and the LSTM demo: token sequences -----------------------------------------------------
@pytest.fixture
def wikitext(tmp_path, monkeypatch) -> Path:
    """A tiny synthetic ``./data/wikitext-2.txt`` (16 tokens): the demos' ``prepare_data`` finds it, never downloads."""
    generator = torch.Generator().manual_seed(0)
    lines = [
        " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=generator)) for _ in range(40)
    ]
    lines[0] = " ".join(WORDS)  # every word appears
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wikitext-2.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TokenDataModule(L.LightningDataModule):
    """A user's datamodule over the demo's ``WikiText2`` (8-token blocks)."""

    def setup(self, stage: str) -> None:
        self.train = WikiText2(download=False, block_size=8)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=4, shuffle=True)


def token_partition() -> PartitionedDataModule:
    return PartitionedDataModule(TokenDataModule(), train_partition=[range(0, 12), range(12, 32)])


def tiny_transformer() -> LightningTransformer:
    module = LightningTransformer(vocab_size=len(WORDS) + 1)
    module.model.pos_encoder.max_len = 64  # its positional table, built on first use (not a parameter)
    return module


def test_lightning_transformer_federates_on_token_blocks(wikitext) -> None:
    assert WikiText2(download=False).vocab_size == 16
    result, _, _ = check_both_methods_and_backends(
        tiny_transformer, token_partition, wikitext / "runs", mu=1.0, trainer_kwargs={**CPU, "limit_train_batches": 3}
    )
    assert "train_loss" in result.history[-1]


def lstm_loaders(client_id: int) -> tuple[DataLoader, None]:
    """The demo's own loader: its ``SequenceSampler`` keeps every batch the size of the hidden state."""
    dataset = torch.utils.data.Subset(
        WikiText2(download=False, block_size=8), range(16 * client_id, 16 * client_id + 12 + 8 * client_id)
    )
    return DataLoader(dataset, batch_sampler=SequenceSampler(dataset, batch_size=4)), None


def tiny_lstm() -> LightningLSTM:
    """The demo module around the demo's own ``SimpleLSTM``, at a tiny size (its default is 4 x 512 units)."""
    module = LightningLSTM(vocab_size=16)
    module.model = SimpleLSTM(vocab_size=16, ninp=32, nhid=32, nlayers=2)
    return module


def test_lightning_lstm_federates_with_its_own_sequence_sampler(wikitext) -> None:
    data = functools.partial(ClientLoaders, lstm_loaders, 2)
    result, _, _ = check_both_methods_and_backends(
        tiny_lstm,
        data,
        wikitext / "runs",
        mu=0.01,
        trainer_kwargs={**CPU, "limit_train_batches": 2},
        max_update_ratio=None,  # the demo's own SGD(lr=20) moves a 16-token model far in one step
    )
    assert result.history[-1]["train_loss"] > 0


# -- a timm model, created directly, in a small user module ---------------------------------------------------------
class TimmClassifier(L.LightningModule):
    """A user's module around ``timm.create_model`` (no pretrained weights)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.net = timm.create_model("test_resnet", pretrained=False, num_classes=num_classes, in_chans=1)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


class ImageDataModule(L.LightningDataModule):
    """A user's datamodule of 16x16 grey images, 3 classes."""

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (60,), generator=generator)
        x = torch.randn(60, 1, 16, 16, generator=generator) + y.view(-1, 1, 1, 1).float()
        self.train, self.val = TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=8, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=8)


def image_partition() -> PartitionedDataModule:
    return PartitionedDataModule(
        ImageDataModule(), train_partition=[range(0, 16), range(16, 40)], val_partition=[range(0, 7), range(7, 20)]
    )


def test_timm_model_federates_with_its_own_metrics_pooled_exactly(tmp_path) -> None:
    result, _, loop = check_both_methods_and_backends(TimmClassifier, image_partition, tmp_path, mu=0.5)
    model = TimmClassifier()
    model.load_state_dict({**model.state_dict(), **result.global_state})
    model.eval()
    data = image_partition()
    data.setup()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for cid in range(2):
            for x, y in data.client_test_dataloader(cid):
                logits = model(x)
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
    assert total == 20
    last = result.history[-1]
    assert last["val_acc"] == pytest.approx(correct / total, abs=1e-6)
    assert last["val_loss"] == pytest.approx(loss_sum / total, rel=1e-4)
    assert "global_val_acc" in last and "val_acc_std" in last


def test_fedbn_and_fedper_splits_apply_to_the_timm_modules_attribute_names(tmp_path) -> None:
    result, _, loop = run(TimmClassifier, image_partition, tmp_path / "bn", federate={"personal": [BatchNorm()]})
    assert result.global_state and not any("bn" in k for k in result.global_state)
    stored = loop.runner.worker.store
    assert all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked", "weight", "bias")) for k in stored.get(0)
    )
    per, _, loop = run(TimmClassifier, image_partition, tmp_path / "per", federate={"personal": [Modules(["net.fc"])]})
    assert not any(k.startswith("net.fc.") for k in per.global_state)
    heads = [loop.runner.worker.store.get(c)["net.fc.weight"] for c in range(2)]
    assert not torch.equal(heads[0], heads[1])


# -- pickling ----------------------------------------------------------------------------------------------------
def test_a_federated_module_pickles_to_a_working_module() -> None:
    module = federate(LoggingBoringModel(), regularizers=[ProximalTerm(0.1)])
    copy = pickle.loads(pickle.dumps(module))
    assert type(copy) is type(module) and type(copy).__name__ == "FederatedLoggingBoringModel"
    assert isinstance(copy, LoggingBoringModel)
    for key, value in module.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value)
    anchor = copy.shared_state()
    copy.receive_global(ServerMessage(round=0, client_id=0, state=anchor))
    with torch.no_grad():
        copy.layer.weight.add_(1.0)  # 64 weights moved by 1: the proximal term is 0.1 / 2 * 64
    batch = torch.randn(4, 32)
    loss = copy.training_step(batch, 0)["loss"]
    assert loss.item() == pytest.approx(copy.step(batch).item() + 0.05 * 64, rel=1e-5)
    assert type(pickle.loads(pickle.dumps(copy))) is type(module)  # pickles again


def test_deepcopy_of_a_federated_module_keeps_its_class_and_protocol() -> None:
    import copy

    module = federate(BoringModel(), personal=[Modules(["layer"])])
    twin = copy.deepcopy(module)
    assert type(twin) is type(module) and twin.personal_keys() == ["layer.weight", "layer.bias"]
    assert twin.layer.weight is not module.layer.weight and torch.equal(twin.layer.weight, module.layer.weight)


# -- real Ray ----------------------------------------------------------------------------------------------------------
def boring_partition() -> PartitionedDataModule:
    """Lightning's own ``BoringDataModule`` (64 training, 64 validation vectors) split over 2 clients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        datamodule = BoringDataModule()
    return PartitionedDataModule(datamodule, train_partition=[range(0, 16), range(16, 40)])


def test_boring_model_runs_on_ray_with_the_sequential_global_model(tmp_path) -> None:
    pytest.importorskip("ray")
    from lit_fed.flower import FlowerSimulation

    options = {"trainer_kwargs": {**CPU, "limit_train_batches": 6}}
    sequential, _, _ = run(BoringModel, boring_partition, tmp_path / "seq", mu=0.5, **options)
    torch.manual_seed(0)
    module = federate(BoringModel(), regularizers=[ProximalTerm(0.5)])
    strategy = RecordingFedAvg()
    loop = FederatedLoop(
        module, boring_partition(), strategy, run_dir=tmp_path / "ray", rounds=2, loggers=[], progress=False, **options
    )
    backend = FlowerSimulation(client_resources={"num_cpus": 1}, ray_init_args={"num_cpus": 2}, timeout=300)
    simulated = backend.run(loop)
    assert_global_is_weighted_mean(simulated, strategy)
    assert_same_global(sequential, simulated)


# -- no hidden rewrites --------------------------------------------------------------------------------------------
class Seen(L.Callback):
    """Counts training batches (a callback the module configures itself)."""

    batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        Seen.batches += 1


class HookedBoringModel(BoringModel):
    """BoringModel with its own callbacks, clipping hook and a step-wise scheduler."""

    clipped: list = []
    lrs: list = []

    def configure_callbacks(self):
        return [Seen()]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        HookedBoringModel.clipped.append(gradient_clip_val)
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_start(self, batch, batch_idx):
        HookedBoringModel.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_the_modules_callbacks_clipping_hook_and_scheduler_run_in_every_client_fit(tmp_path) -> None:
    Seen.batches, HookedBoringModel.clipped, HookedBoringModel.lrs = 0, [], []
    run(HookedBoringModel, boring_data, tmp_path, rounds=1, trainer_kwargs={**CPU, "gradient_clip_val": 0.25})
    # clients of 24 and 40 samples in batches of 8: 3 + 5 steps
    assert Seen.batches == 8
    assert HookedBoringModel.clipped == [0.25] * 8
    assert HookedBoringModel.lrs == pytest.approx([0.1, 0.05, 0.025, 0.1, 0.05, 0.025, 0.0125, 0.00625])


class ManualBoringModel(BoringModel):
    """BoringModel with manual optimization: its own zero_grad / manual_backward / step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = self.step(batch)
        self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_manual_optimization_federates_with_fedprox_on_both_backends(tmp_path) -> None:
    check_both_methods_and_backends(ManualBoringModel, boring_data, tmp_path, mu=1.0)
