"""CCVR (Luo et al., NeurIPS 2021):

Pooled Gaussian = statistics of the union, classifier-only calibration, bytes, CLI resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lit_fed.cli import build_cli
from lit_fed.client.codec import packed_nbytes
from lit_fed.client.split import Head
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import (
    CCVR,
    calibrate_classifier,
    classifier_parameters,
    feature_statistics,
    pool_feature_statistics,
    sample_virtual_features,
)
from lit_fed.server import ServerStep
from lit_fed.trainer import FederatedTrainer

ROOT = Path(__file__).resolve().parents[2]


def union_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Mean and unbiased covariance of each class of the pooled features, with torch's own estimators."""
    means, covs = [], []
    for c in range(num_classes):
        fc = features[labels == c]
        means.append(fc.mean(dim=0) if len(fc) else torch.zeros(features.shape[1], dtype=features.dtype))
        covs.append(torch.cov(fc.T) if len(fc) > 1 else torch.zeros(features.shape[1], features.shape[1]).double())
    return torch.stack(means), torch.stack(covs)


def test_pooled_mean_and_covariance_equal_those_of_the_union_of_client_features():
    generator = torch.Generator().manual_seed(0)
    dim, num_classes = 5, 4
    # per client: (samples per class) — class 3 held by nobody; single-sample classes; a class held by one client
    layout = [[7, 1, 0, 0], [3, 0, 4, 0], [1, 6, 2, 0], [0, 1, 1, 0]]
    features, labels, stats = [], [], []
    for client, counts in enumerate(layout):
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]).long()
        x = torch.randn(len(y), dim, generator=generator, dtype=torch.float64) * (1 + client) + 3 * y[:, None]
        features.append(x)
        labels.append(y)
        stats.append(feature_statistics(x, y, num_classes))
    pooled = pool_feature_statistics(stats)
    all_x, all_y = torch.cat(features), torch.cat(labels)
    means, covs = union_statistics(all_x, all_y, num_classes)
    assert pooled.counts.tolist() == [11, 8, 7, 0]
    torch.testing.assert_close(pooled.means, means, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled.covariances, covs, rtol=0, atol=1e-12)
    # the clients' own statistics are those of their features (unbiased, N - 1)
    torch.testing.assert_close(stats[0].covariances[0], torch.cov(features[0][labels[0] == 0].T), rtol=0, atol=1e-12)
    assert torch.equal(stats[0].covariances[1], torch.zeros(dim, dim, dtype=torch.float64))  # one sample: zero


def test_virtual_features_follow_the_pooled_gaussian_and_skip_absent_classes():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=generator, dtype=torch.float64) @ torch.tensor(
        [[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64
    )  # a singular covariance
    y = torch.zeros(400, dtype=torch.long)
    pooled = pool_feature_statistics([feature_statistics(x, y, 2)])
    virtual, labels = sample_virtual_features(pooled, 20000, torch.Generator().manual_seed(2))
    assert virtual.shape == (20000, 3) and labels.unique().tolist() == [0]
    torch.testing.assert_close(virtual.double().mean(0), pooled.means[0], rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(virtual.double().T), pooled.covariances[0], rtol=0.05, atol=0.05)


def test_virtual_features_do_not_depend_on_how_the_eigensolver_rounds():
    """Σ changed by 1e-17 where it is nonzero (another CPU's BLAS) draws the same features from the same noise.

    A rank-deficient class (5 samples, 32 dimensions): its null-space basis is arbitrary and its eigenvector signs
    are not unique; both must not reach the draws.
    """
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 32, generator=generator, dtype=torch.float64).relu()
    pooled = pool_feature_statistics([feature_statistics(x, torch.zeros(5, dtype=torch.long), 1)])
    noise = torch.randn(pooled.covariances.shape, generator=generator, dtype=torch.float64) * 1e-17
    noise = 0.5 * (noise + noise.transpose(1, 2)) * (pooled.covariances != 0)
    perturbed = type(pooled)(pooled.means, pooled.covariances + noise, pooled.counts)
    assert not torch.equal(perturbed.covariances, pooled.covariances)
    draws = [sample_virtual_features(s, 50, torch.Generator().manual_seed(4))[0] for s in (pooled, perturbed)]
    assert torch.equal(draws[0], draws[1])
    # and each draw lies in the class's span: centred draws are orthogonal to the covariance's null space
    eigenvalues, eigenvectors = torch.linalg.eigh(pooled.covariances[0])
    null = eigenvectors[:, eigenvalues < 1e-12]
    assert null.shape[1] >= 32 - 4
    centred = draws[0].double() - pooled.means[0]
    assert (centred @ null).abs().max() < 1e-5


def test_calibration_trains_only_the_classifier(client_factory):
    client = client_factory()
    assert set(classifier_parameters(client, 32)) == {"backbone.fc.weight", "backbone.fc.bias"}
    before = {k: v.clone() for k, v in client.state_dict().items()}
    features, labels = torch.randn(64, 32), torch.randint(0, 4, (64,))
    calibrate_classifier(client, features, labels, epochs=2, generator=torch.Generator().manual_seed(0))
    after = client.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.fc.weight", "backbone.fc.bias"}
    assert all(p.grad is None for p in client.parameters())


class Snapshot(ServerStep):
    """Records the global state the steps after it (CCVR) receive."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def run(self, global_state, updates, context):
        self.states[context.round] = {k: v.clone() for k, v in global_state.items()}
        return global_state


class CountEvaluations(LoopCallback):
    """Counts the personalized evaluations the loop's runner performs per round."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}

    def on_run_start(self, loop: Any, start_round: int) -> None:
        evaluate = loop.runner.evaluate

        def counted(loop_, messages):
            self.count[loop_.round] = self.count.get(loop_.round, 0) + 1
            return evaluate(loop_, messages)

        loop.runner.evaluate = counted


def test_post_hoc_calibration_in_a_loop_changes_only_the_classifier_and_reports_before_after(
    client_factory, datamodule_factory, tmp_path
):
    dm = datamodule_factory(num_clients=3)
    snapshot, ccvr, evaluations = Snapshot(), CCVR(samples_per_class=100, epochs=3), CountEvaluations()
    loop = FederatedLoop(
        client_factory(),
        dm,
        rounds=2,
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        callbacks=[evaluations],
        server_steps=[snapshot, ccvr],
        trainer_kwargs={"accelerator": "cpu"},
    )
    result = loop.run()
    first, last = result.history
    assert not any(k.startswith("ccvr_") for k in first)  # every=0: after the last round only
    # the round's own evaluation is of the calibrated model, and it is not computed a second time
    assert (
        last["global_acc"] == last["ccvr_after_global_acc"] and last["personal_acc"] == last["ccvr_after_personal_acc"]
    )
    assert evaluations.count == {0: 1, 1: 2}  # before and after calibration
    assert {"ccvr_before_global_acc", "ccvr_before_personal_acc", "ccvr_virtual_samples"} <= set(last)
    before, after = snapshot.states[1], result.global_state
    classifier = {"backbone.fc.weight", "backbone.fc.bias"}
    assert {k for k in before if not torch.equal(before[k], after[k])} == classifier
    # the statistics are every client's, over its local training split, and their bytes are counted as uploaded
    counts = sum(s.counts for s in ccvr.last_statistics)
    assert torch.equal(counts, sum(dm.client_label_counts(c) for c in range(3)))
    assert last["ccvr_mb_up"] == pytest.approx(sum(packed_nbytes(s) for s in ccvr.last_statistics) / 1e6)
    assert last["mb_up"] == pytest.approx(first["mb_up"] + last["ccvr_mb_up"])
    assert loop.comm.total_up == pytest.approx(1e6 * last["mb_up_total"])
    # the calibrated classifier is what the loop evaluates now
    assert loop.evaluate()["global_acc"] == pytest.approx(last["ccvr_after_global_acc"])


def test_a_personal_classifier_is_refused(client_factory, datamodule_factory, tmp_path):
    loop = FederatedLoop(
        client_factory(personal=[Head()]),
        datamodule_factory(num_clients=2),
        rounds=1,
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        server_steps=[CCVR(samples_per_class=10, epochs=1)],
        trainer_kwargs={"accelerator": "cpu"},
    )
    with pytest.raises(ValueError, match="personal"):
        loop.run()


def test_config_stacks_on_fedavg_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    config = tmp_path / "ccvr_every_round.yaml"
    text = (ROOT / "configs/method/ccvr.yaml").read_text()
    config.write_text(text.replace("every: 0", "every: 1").replace("samples_per_class: 1000", "samples_per_class: 100"))
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/fedavg.yaml")]
    args += ["--config", str(config)]
    args += ["--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    cli = build_cli(args=args)
    (step,) = cli.trainer.server_steps
    assert isinstance(step, CCVR) and step.every == 1
    full = cli.trainer.federated_result
    assert all("ccvr_after_global_acc" in h for h in full.history)  # every round
    fresh = cli.parser.instantiate_classes(cli.config)["fit"]
    trainer = FederatedTrainer(**fresh.trainer.as_dict())
    trainer.fit(fresh.model, datamodule=fresh.data, ckpt_path=str(run_dir / "checkpoints/round_00001.ckpt"))
    resumed = trainer.federated_result
    a, b = full.history[-1], resumed.history[-1]
    assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
        k: v for k, v in b.items() if not k.endswith("_seconds")
    }
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)
