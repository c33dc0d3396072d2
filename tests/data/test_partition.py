import math

import numpy as np
import pytest

from lit_fed.data.partition import (
    IID,
    Dirichlet,
    Partitioner,
    Pathological,
    QuantitySkew,
    class_histogram,
    dirichlet_partition,
    iid_partition,
    long_tail_class_sizes,
    long_tail_indices,
    pathological_partition,
    quantity_skew_partition,
    split_train_test,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2000 labels, 200 per class, in a shuffled order."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(NUM_CLASSES), 200))


PARTITIONERS = {
    "iid": lambda y, k, s: iid_partition(y, k, s),
    "dirichlet": lambda y, k, s: dirichlet_partition(y, k, alpha=0.3, seed=s, min_size=10),
    "pathological": lambda y, k, s: pathological_partition(y, k, classes_per_client=2, seed=s),
    "quantity_skew": lambda y, k, s: quantity_skew_partition(y, k, alpha=0.5, seed=s, min_size=10),
}


def classes_per_client(labels: np.ndarray, partition: list[np.ndarray]) -> np.ndarray:
    return (class_histogram(labels, partition, NUM_CLASSES) > 0).sum(axis=1)


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
@pytest.mark.parametrize("num_clients", [5, 7, 20])
def test_every_sample_assigned_exactly_once(labels, name, num_clients):
    partition = PARTITIONERS[name](labels, num_clients, 0)
    assert len(partition) == num_clients
    for part in partition:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each client's indices are sorted and unique"
    merged = np.concatenate(partition)
    assert merged.size == labels.size, "no index assigned twice or dropped"
    np.testing.assert_array_equal(np.sort(merged), np.arange(labels.size))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_same_partition_different_seed_different(labels, name):
    first = PARTITIONERS[name](labels, 10, 0)
    again = PARTITIONERS[name](labels, 10, 0)
    other = PARTITIONERS[name](labels, 10, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_single_client_gets_everything(labels):
    for partition in (
        iid_partition(labels, 1, 0),
        dirichlet_partition(labels, 1, 0.1, 0),
        pathological_partition(labels, 1, NUM_CLASSES, 0),
        quantity_skew_partition(labels, 1, 0.1, 0),
    ):
        assert len(partition) == 1
        np.testing.assert_array_equal(partition[0], np.arange(labels.size))


def test_dirichlet_respects_min_size(labels):
    for seed in range(5):
        partition = dirichlet_partition(labels, 30, alpha=0.1, seed=seed, min_size=15)
        assert min(part.size for part in partition) >= 15


def test_dirichlet_small_alpha_concentrates_labels(labels):
    def mean_classes(alpha: float) -> float:
        return float(
            np.mean(
                [classes_per_client(labels, dirichlet_partition(labels, 20, alpha, seed)).mean() for seed in range(3)]
            )
        )

    skewed, uniform = mean_classes(0.05), mean_classes(100.0)
    assert skewed < 4.0
    assert uniform == NUM_CLASSES
    assert skewed < uniform


def test_dirichlet_gives_up_with_a_clear_message(labels):
    with pytest.raises(ValueError, match=r"max_attempts=3.*larger alpha"):
        dirichlet_partition(labels, 100, alpha=0.01, seed=0, min_size=19, max_attempts=3)


@pytest.mark.parametrize("k", [1, 2, 3, NUM_CLASSES])
def test_pathological_gives_exactly_k_classes_per_client(labels, k):
    partition = pathological_partition(labels, 20, classes_per_client=k, seed=0)
    np.testing.assert_array_equal(classes_per_client(labels, partition), np.full(20, k))
    # 20 * k >= 10 classes, so every class is used and every sample assigned.
    assert np.concatenate(partition).size == labels.size


def test_pathological_sizes_vary_and_min_size_holds(labels):
    partition = pathological_partition(labels, 20, classes_per_client=2, seed=0, min_size=30)
    sizes = np.array([part.size for part in partition])
    assert sizes.min() >= 30
    assert sizes.std() > 0, "random shares, not equal shards"


def test_pathological_leaves_unused_classes_out(labels):
    partition = pathological_partition(labels, 2, classes_per_client=2, seed=0)
    used = np.unique(labels[np.concatenate(partition)])
    assert used.size == 4
    assert np.concatenate(partition).size == 4 * 200, "every sample of a used class is assigned once"


def test_quantity_skew_sizes_follow_dirichlet_with_min(labels):
    partition = quantity_skew_partition(labels, 20, alpha=0.3, seed=0, min_size=25)
    sizes = np.array([part.size for part in partition])
    assert sizes.min() >= 25
    assert sizes.max() > 3 * sizes.min()
    # Labels stay IID: the largest client sees every class.
    assert classes_per_client(labels, [partition[int(np.argmax(sizes))]])[0] == NUM_CLASSES


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda y: iid_partition(y, 0, 0), "num_clients=0"),
        (lambda y: iid_partition(y, 2001, 0), "num_clients=2001"),
        (lambda y: dirichlet_partition(y, 10, alpha=0.0, seed=0), "alpha=0.0"),
        (lambda y: dirichlet_partition(y, 10, alpha=-1, seed=0), "alpha=-1"),
        (lambda y: dirichlet_partition(y, 300, alpha=1.0, seed=0, min_size=10), "min_size=10"),
        (lambda y: pathological_partition(y, 5, classes_per_client=11, seed=0), "classes_per_client=11"),
        (lambda y: pathological_partition(y, 5, classes_per_client=0, seed=0), "classes_per_client=0"),
        (lambda y: pathological_partition(y, 3000, classes_per_client=2, seed=0), "num_clients=3000"),
        (lambda y: quantity_skew_partition(y, 10, alpha=0, seed=0), "alpha=0"),
        (lambda y: quantity_skew_partition(y, 10, alpha=1.0, seed=0, min_size=201), "min_size=201"),
        (lambda y: long_tail_indices(y, 0.5, seed=0), "imbalance_ratio=0.5"),
        (lambda y: long_tail_indices(y, 500, seed=0), "imbalance_ratio=500"),
        (lambda y: split_train_test(np.arange(10), y, train_fraction=1.0), "train_fraction=1.0"),
    ],
)
def test_impossible_requests_name_the_offending_value(labels, call, match):
    with pytest.raises(ValueError, match=match):
        call(labels)


def test_pathological_rejects_class_with_fewer_samples_than_holders():
    labels = np.array([0] * 50 + [1] * 2)
    with pytest.raises(ValueError, match="class 1 has 2 samples"):
        pathological_partition(labels, 4, classes_per_client=2, seed=0)


def test_long_tail_counts_follow_the_formula_exactly():
    # Class sizes 300, 250, ..., so n_max is the smallest available count (150).
    counts = np.array([300, 250, 200, 150, 400])
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), counts))
    ratio = 10.0
    kept = long_tail_indices(labels, ratio, seed=0)
    got = np.bincount(labels[kept], minlength=5)
    expected = [math.floor(150 * (1 / ratio) ** (c / 4)) for c in range(5)]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(long_tail_class_sizes(150, 5, ratio), expected)
    assert got[0] / got[-1] == pytest.approx(ratio)
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)


@pytest.mark.parametrize("ratio", [1, 10, 100])
def test_long_tail_head_to_tail_ratio(labels, ratio):
    kept = long_tail_indices(labels, ratio, seed=3)
    got = np.bincount(labels[kept], minlength=NUM_CLASSES)
    assert got[0] == 200
    assert np.all(np.diff(got) <= 0), "class 0 is the head, sizes decrease"
    assert got[0] / got[-1] == pytest.approx(ratio, rel=0.01)
    np.testing.assert_array_equal(kept, long_tail_indices(labels, ratio, seed=3))
    if ratio > 1:
        assert not np.array_equal(kept, long_tail_indices(labels, ratio, seed=4))


def test_long_tail_requires_every_class():
    with pytest.raises(ValueError, match="class 2 has no samples"):
        long_tail_indices(np.array([0, 1, 3, 3]), 2.0, seed=0, num_classes=4)


def test_split_train_test_is_stratified_and_disjoint(labels):
    partition = dirichlet_partition(labels, 10, alpha=0.5, seed=0)
    for client, part in enumerate(partition):
        train, test = split_train_test(part, labels, 0.75, seed=0, client_id=client)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), part)
        assert np.intersect1d(train, test).size == 0
        assert train.size / part.size == pytest.approx(0.75, abs=0.02)
        assert set(labels[test]) <= set(labels[part])
        client_counts = np.bincount(labels[part], minlength=NUM_CLASSES)
        test_counts = np.bincount(labels[test], minlength=NUM_CLASSES)
        train_counts = client_counts - test_counts
        both = client_counts >= 2
        assert np.all(test_counts[both] >= 1) and np.all(train_counts[both] >= 1)


def test_split_train_test_determinism(labels):
    part = np.arange(0, 400)
    first = split_train_test(part, labels, seed=0, client_id=1)
    again = split_train_test(part, labels, seed=0, client_id=1)
    other = split_train_test(part, labels, seed=0, client_id=2)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_split_train_test_small_clients():
    labels = np.array([0, 1, 1, 2, 2, 2])
    train, test = split_train_test(np.arange(6), labels, 0.75, seed=0)
    assert set(labels[train]) == {0, 1, 2}, "a single-sample class goes to train"
    assert set(labels[test]) == {1, 2}
    empty_train, empty_test = split_train_test(np.array([], dtype=np.int64), labels)
    assert empty_train.size == 0 and empty_test.size == 0


def test_class_histogram(labels):
    partition = iid_partition(labels, 4, seed=0)
    histogram = class_histogram(labels, partition, NUM_CLASSES)
    assert histogram.shape == (4, NUM_CLASSES)
    np.testing.assert_array_equal(histogram.sum(axis=1), [part.size for part in partition])
    np.testing.assert_array_equal(histogram.sum(axis=0), np.bincount(labels))


@pytest.mark.parametrize(
    ("config", "function"),
    [
        (IID(), lambda y, k, s: iid_partition(y, k, s)),
        (Dirichlet(alpha=0.2, min_size=5), lambda y, k, s: dirichlet_partition(y, k, 0.2, s, min_size=5)),
        (Pathological(classes_per_client=3), lambda y, k, s: pathological_partition(y, k, 3, s)),
        (
            QuantitySkew(alpha=2.0, min_size=4),
            lambda y, k, s: quantity_skew_partition(y, k, 2.0, s, min_size=4),
        ),
    ],
)
def test_config_objects_call_the_functions(labels, config, function):
    assert isinstance(config, Partitioner)
    expected = function(labels, 8, 5)
    got = config(labels, 8, 5)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Dirichlet(alpha=0), "alpha"),
        (lambda: Dirichlet(alpha=0.1, min_size=0), "min_size"),
        (lambda: QuantitySkew(alpha=-0.5), "alpha"),
        (lambda: Pathological(classes_per_client=0), "classes_per_client"),
    ],
)
def test_config_objects_validate_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_partitioner_base_is_abstract():
    with pytest.raises(TypeError):
        Partitioner()
