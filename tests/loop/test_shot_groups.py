import torch

from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.metrics.evaluation import group_accuracy, new_class_stats, shot_groups


def test_shot_groups_by_training_count():
    groups = shot_groups(torch.tensor([500, 101, 100, 20, 19, 0]), few_below=20, many_above=100)
    assert groups["many"].tolist() == [True, True, False, False, False, False]
    assert groups["medium"].tolist() == [False, False, True, True, False, False]
    assert groups["few"].tolist() == [False, False, False, False, True, True]
    assert set(shot_groups(torch.tensor([500, 600]))) == {"many"}


def test_group_accuracy_pools_correct_over_samples():
    stats = new_class_stats(3)
    logits = torch.eye(3)[[0, 0, 1, 1, 2, 0]]  # predictions 0,0,1,1,2,0
    stats.update(logits, torch.tensor([0, 1, 1, 1, 2, 2]))  # class 0: 1/1, class 1: 2/3, class 2: 1/2
    groups = {"many": torch.tensor([True, True, False]), "few": torch.tensor([False, False, True])}
    out = group_accuracy(stats, groups, "global")
    assert out == {"global_acc_many": 3 / 4, "global_acc_few": 1 / 2}


def test_long_tailed_run_reports_shot_groups(client_factory, tmp_path):
    dm = FederatedDataModule(
        Synthetic(num_classes=4, num_train=800, num_test=200, image_size=8),
        Dirichlet(alpha=1.0, min_size=5),
        num_clients=4,
        batch_size=16,
        imbalance_ratio=20,
    )
    loop = FederatedLoop(
        client_factory(),
        dm,
        rounds=1,
        trainer_kwargs={"accelerator": "cpu"},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        shot_thresholds=(30, 100),
    )
    metrics = loop.run().history[-1]
    counts = sum(dm.client_label_counts(c) for c in range(4))
    expected = {name for name, mask in shot_groups(counts, 30, 100).items()}
    assert len(expected) > 1
    for name in expected:
        assert 0.0 <= metrics[f"global_acc_{name}"] <= 1.0
        assert 0.0 <= metrics[f"personal_acc_{name}"] <= 1.0
