"""FedRep (Collins et al. 2021): the head alone for E_h epochs, then the body alone; head personal, body FedAvg."""

from pathlib import Path

import lightning as L
import torch

from lit_fed.cli import build_cli
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.client.split import Head
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}
HEAD = {"backbone.fc.weight", "backbone.fc.bias"}


class EpochRecorder(L.Callback):
    """Per fit: the full state at each epoch start and at the end of training."""

    def __init__(self):
        self.fits = []

    @staticmethod
    def _snap(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.fits.append({"epochs": [], "end": None})

    def on_train_epoch_start(self, trainer, pl_module):
        self.fits[-1]["epochs"].append(self._snap(pl_module))

    def on_train_end(self, trainer, pl_module):
        self.fits[-1]["end"] = self._snap(pl_module)


def same(a, b, keys):
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_head_epochs_freeze_the_body_and_body_epochs_freeze_the_head(client_factory, datamodule_factory, tmp_path):
    head_epochs, local_epochs = 3, 2
    client = client_factory(
        personal=[Head()],
        schedule=LocalSchedule([Phase("personal", epochs=head_epochs), Phase("shared")]),
    )
    body = sorted(set(client.state_dict()) - HEAD)  # includes the BN running statistics
    recorder = EpochRecorder()
    loop = FederatedLoop(
        client,
        datamodule_factory(),
        FedAvg(),
        rounds=2,
        local_epochs=local_epochs,
        eval_every=0,
        trainer_kwargs={**CPU, "callbacks": [recorder]},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    assert len(recorder.fits) == 2 * 4
    for fit in recorder.fits:
        epochs = fit["epochs"]
        assert len(epochs) == head_epochs + local_epochs
        after_head = epochs[head_epochs]  # state at the end of the head phase
        # Head phase: the body (weights and BN statistics) is bit-identical at every epoch boundary.
        assert all(same(epochs[0], e, body) for e in epochs[1 : head_epochs + 1])
        assert not same(epochs[0], after_head, HEAD)
        # Body phase: the head is bit-identical from the end of the head phase to the end of the fit.
        assert all(same(after_head, e, HEAD) for e in [*epochs[head_epochs + 1 :], fit["end"]])
        assert not same(after_head, fit["end"], body)
        # Every parameter is trainable again after the fit.
        assert all(p.requires_grad for p in client.parameters())
    assert set(result.global_state) == set(client.state_dict()) - HEAD


def test_fedrep_config_parses_to_the_phased_schedule():
    cli = build_cli(
        args=[
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/tinycnn.yaml"),
            "--config",
            str(ROOT / "configs/method/fedrep.yaml"),
            "--trainer.local_epochs",
            "2",
        ],
        run=False,
    )
    client = cli.model
    assert client.schedule.phases == [Phase("personal", epochs=10), Phase("shared")]
    assert set(client.personal_keys()) == HEAD
    assert client.fit_limits(cli.trainer.settings.local_epochs, None) == {"max_epochs": 12}
    assert isinstance(cli.trainer.server, FedAvg)
