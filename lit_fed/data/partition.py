"""Client partitioners: pure functions of ``(labels, num_clients, seed)`` that split indices among clients.

Every partitioner returns one sorted ``int64`` index array per client and assigns each index at most once
(exactly once, except where documented). The randomness comes from :func:`lit_fed.utils.seeding.numpy_rng`
with the stream ``(seed, "partition", <kind>)``, so a partition is a pure function of its arguments.

The schemes follow the personalized-FL benchmarks (PFLlib, Zhang et al. 2023; NIID-Bench, Li et al. 2022):

* :func:`iid_partition`: a uniform random split into near-equal parts.
* :func:`dirichlet_partition`: label skew through per-class Dirichlet proportions (Hsu et al. 2019).
* :func:`pathological_partition`: each client sees only ``k`` classes (McMahan et al. 2017).
* :func:`quantity_skew_partition`: IID labels, Dirichlet client sizes (Li et al. 2022).
* :func:`long_tail_indices`: a long-tailed training pool (Cao et al. 2019; FedLoGe, Xiao et al. 2024).
* :func:`split_train_test`: each client's stratified local train/test split.

The dataclasses at the bottom (:class:`IID`, :class:`Dirichlet`, :class:`Pathological`,
:class:`QuantitySkew`) wrap them as configurable callables for YAML configs (``class_path``/``init_args``).
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lit_fed.utils.seeding import numpy_rng

# ---------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------


def _as_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    """Returns ``labels`` as a 1-D ``int64`` array of non-negative class ids, or raises ``ValueError``."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be non-negative class ids, got minimum {array.min()}")
    return array.astype(np.int64, copy=False)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive(name: str, value: float) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {name}={value!r}")


def _check_int_at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")


def _check_clients(num_clients: int, num_samples: int, min_size: int = 1) -> None:
    """Checks that ``num_clients`` clients can each get ``min_size`` of ``num_samples`` samples."""
    _check_int_at_least("num_clients", num_clients, 1)
    _check_int_at_least("min_size", min_size, 1)
    if num_clients * min_size > num_samples:
        raise ValueError(
            f"cannot give num_clients={num_clients} clients at least min_size={min_size} samples each: "
            f"only {num_samples} samples (need {num_clients * min_size})"
        )


def _split_counts(total: int, proportions: np.ndarray) -> np.ndarray:
    """Splits ``total`` items into ``len(proportions)`` integer counts at the floored cumulative boundaries.

    This is the ``(cumsum(p) * n).astype(int)`` rule of PFLlib/NIID-Bench; the counts always sum to ``total``.
    """
    proportions = np.asarray(proportions, dtype=np.float64)
    bounds = np.floor(np.cumsum(proportions / proportions.sum()) * total).astype(np.int64)
    bounds = np.minimum(bounds, total)
    bounds[-1] = total
    return np.diff(bounds, prepend=0)


def _finalize(parts: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Concatenates each client's pieces into one sorted ``int64`` index array."""
    out = []
    for pieces in parts:
        merged = np.concatenate(pieces) if len(pieces) else np.empty(0, dtype=np.int64)
        out.append(np.sort(merged.astype(np.int64, copy=False)))
    return out


# --------------------------------------------------------------------------------------------------
# Partitioners
# ----------------------------------------------------------------------------------------------------


def iid_partition(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Splits the samples uniformly at random into ``num_clients`` parts whose sizes differ by at most one.

    Args:
        labels: ``(N,)`` integer class ids (only their number matters).
        num_clients: Number of clients (``1 <= num_clients <= N``).
        seed: Run seed; the stream is ``(seed, "partition", "iid")``.

    Returns:
        One sorted ``int64`` index array per client; every index appears exactly once.
    """
    labels = _as_labels(labels)
    _check_clients(num_clients, labels.size)
    order = numpy_rng(seed, "partition", "iid").permutation(labels.size)
    return _finalize([[part] for part in np.array_split(order, num_clients)])


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients by proportions drawn from ``Dir(alpha · 1)``.

    Follows Hsu et al. 2019 ("Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification") as implemented in PFLlib/NIID-Bench: for every class, shuffle its indices, draw
    ``p ~ Dir(alpha · 1_K)`` over the ``K`` clients, zero the share of clients that already hold at least
    ``N / K`` samples (the balancing rule of those implementations), renormalize and cut the shuffled indices
    at the floored cumulative proportions. The whole draw is repeated until every client has at least
    ``min_size`` samples. Small ``alpha`` (e.g. 0.1) gives few classes per client; large ``alpha`` nears IID.

    Args:
        labels: ``(N,)`` integer class ids.
        num_clients: Number of clients ``K``.
        alpha: Dirichlet concentration (> 0).
        seed: Run seed; the stream is ``(seed, "partition", "dirichlet")``.
        min_size: Minimum number of samples per client (>= 1).
        max_attempts: How many complete draws to try before giving up.

    Returns:
        One sorted ``int64`` index array per client; every index appears exactly once.

    Raises:
        ValueError: On invalid arguments, or if no draw within ``max_attempts`` gives every client
            ``min_size`` samples.
    """
    labels = _as_labels(labels)
    _check_positive("alpha", alpha)
    _check_clients(num_clients, labels.size, min_size)
    _check_int_at_least("max_attempts", max_attempts, 1)
    rng = numpy_rng(seed, "partition", "dirichlet")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    cap = labels.size / num_clients
    concentration = np.full(num_clients, float(alpha))
    smallest = 0
    for _ in range(max_attempts):
        sizes = np.zeros(num_clients, dtype=np.int64)
        draws = []
        for members in by_class:
            shuffled = rng.permutation(members)
            proportions = rng.dirichlet(concentration) * (sizes < cap)
            if not np.isfinite(proportions).all() or proportions.sum() <= 0:
                proportions = (sizes < cap).astype(np.float64)
            counts = _split_counts(shuffled.size, proportions)
            sizes += counts
            draws.append((shuffled, counts))
        smallest = int(sizes.min())
        if smallest >= min_size:
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for shuffled, counts in draws:
                for client, piece in enumerate(np.split(shuffled, np.cumsum(counts)[:-1])):
                    parts[client].append(piece)
            return _finalize(parts)
    raise ValueError(
        f"dirichlet_partition: no draw in max_attempts={max_attempts} gave every one of num_clients="
        f"{num_clients} clients at least min_size={min_size} samples (alpha={alpha}, N={labels.size}; last "
        f"draw's smallest client had {smallest}). Use a larger alpha, fewer clients or a smaller min_size."
    )


def pathological_partition(
    labels: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    seed: int,
    min_size: int = 1,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Pathological label skew: every client holds exactly ``classes_per_client`` classes.

    After McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from Decentralized Data",
    two shards per client) in the form used by PFLlib: classes are dealt round-robin over a shuffled class
    order (client ``i`` takes positions ``i·k, …, i·k + k − 1`` modulo ``C``), so every class is used as soon
    as ``num_clients · k >= C``. Each class's shuffled samples are split among the clients holding it with
    random shares (weights ``~ U(0.1, 1)``, PFLlib's range of ``[n/10, n]``), each holder getting at least one
    sample, so client sizes vary. The share draw is repeated until every client has ``min_size`` samples.

    Classes dealt to no client (only when ``num_clients · k < C``) are left out; every sample of a used class
    is assigned exactly once.

    Args:
        labels: ``(N,)`` integer class ids.
        num_clients: Number of clients.
        classes_per_client: Classes per client ``k`` (``1 <= k <= C``, ``C`` the number of distinct labels).
        seed: Run seed; the stream is ``(seed, "partition", "pathological")``.
        min_size: Minimum number of samples per client (>= 1).
        max_attempts: How many share draws to try before giving up.

    Returns:
        One sorted ``int64`` index array per client.

    Raises:
        ValueError: On invalid arguments, when a class has fewer samples than clients holding it, or when no
            draw within ``max_attempts`` satisfies ``min_size``.
    """
    labels = _as_labels(labels)
    classes = np.unique(labels)
    _check_int_at_least("classes_per_client", classes_per_client, 1)
    if classes_per_client > classes.size:
        raise ValueError(
            f"classes_per_client={classes_per_client} exceeds the number of classes in the labels ({classes.size})"
        )
    _check_clients(num_clients, labels.size, min_size)
    _check_int_at_least("max_attempts", max_attempts, 1)
    rng = numpy_rng(seed, "partition", "pathological")
    order = rng.permutation(classes.size)
    holders: list[list[int]] = [[] for _ in range(classes.size)]
    for client in range(num_clients):
        for slot in range(classes_per_client):
            holders[order[(client * classes_per_client + slot) % classes.size]].append(client)
    members = [np.flatnonzero(labels == c) for c in classes]
    for position, clients in enumerate(holders):
        if clients and members[position].size < len(clients):
            raise ValueError(
                f"class {classes[position]} has {members[position].size} samples but is held by "
                f"{len(clients)} clients; use fewer clients or a larger classes_per_client"
            )
    smallest = 0
    for _ in range(max_attempts):
        sizes = np.zeros(num_clients, dtype=np.int64)
        draws = []
        for position, clients in enumerate(holders):
            if not clients:
                continue
            shuffled = rng.permutation(members[position])
            weights = rng.uniform(0.1, 1.0, size=len(clients))
            counts = 1 + _split_counts(shuffled.size - len(clients), weights)
            np.add.at(sizes, clients, counts)
            draws.append((clients, shuffled, counts))
        smallest = int(sizes.min())
        if smallest >= min_size:
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for clients, shuffled, counts in draws:
                for client, piece in zip(clients, np.split(shuffled, np.cumsum(counts)[:-1]), strict=True):
                    parts[client].append(piece)
            return _finalize(parts)
    raise ValueError(
        f"pathological_partition: no draw in max_attempts={max_attempts} gave every client at least "
        f"min_size={min_size} samples (last draw's smallest client had {smallest}); use a smaller min_size "
        f"or fewer clients"
    )


def quantity_skew_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Quantity skew: IID labels, client sizes proportional to ``Dir(alpha · 1)`` on top of ``min_size`` each.

    NIID-Bench's quantity-based skew (Li et al. 2022, "Federated Learning on Non-IID Data Silos: An
    Experimental Study"): shuffle all indices, give every client ``min_size`` samples and split the remaining
    ``N − K · min_size`` by Dirichlet proportions (floored cumulative boundaries, so sizes sum to ``N``).

    Args:
        labels: ``(N,)`` integer class ids (only their number matters).
        num_clients: Number of clients ``K``.
        alpha: Dirichlet concentration (> 0); small values give very unequal sizes.
        seed: Run seed; the stream is ``(seed, "partition", "quantity_skew")``.
        min_size: Minimum number of samples per client (>= 1).

    Returns:
        One sorted ``int64`` index array per client; every index appears exactly once.
    """
    labels = _as_labels(labels)
    _check_positive("alpha", alpha)
    _check_clients(num_clients, labels.size, min_size)
    rng = numpy_rng(seed, "partition", "quantity_skew")
    order = rng.permutation(labels.size)
    proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
    if not np.isfinite(proportions).all() or proportions.sum() <= 0:
        proportions = np.ones(num_clients)
    sizes = min_size + _split_counts(labels.size - num_clients * min_size, proportions)
    return _finalize([[part] for part in np.split(order, np.cumsum(sizes)[:-1])])


def long_tail_class_sizes(n_max: int, num_classes: int, imbalance_ratio: float) -> np.ndarray:
    """Per-class sizes ``n_c = floor(n_max · (1 / imbalance_ratio) ** (c / (C − 1)))`` (Cao et al. 2019).

    The exponential profile of LDAM-DRW ("Learning Imbalanced Datasets with Label-Distribution-Aware Margin
    Loss"), used for CIFAR-10/100-LT and by FedLoGe (Xiao et al. 2024): class 0 is the head with ``n_max``
    samples, class ``C − 1`` the tail with ``floor(n_max / imbalance_ratio)``.

    Args:
        n_max: Head-class size.
        num_classes: Number of classes ``C``.
        imbalance_ratio: Head/tail ratio (>= 1; 1 is balanced).

    Returns:
        ``(C,)`` int64 class sizes.
    """
    _check_int_at_least("num_classes", num_classes, 1)
    if not (_is_real(imbalance_ratio) and math.isfinite(imbalance_ratio) and imbalance_ratio >= 1):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got imbalance_ratio={imbalance_ratio!r}")
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    exponents = np.arange(num_classes) / (num_classes - 1.0)
    return np.floor(n_max * (1.0 / imbalance_ratio) ** exponents).astype(np.int64)


def long_tail_indices(
    labels: np.ndarray, imbalance_ratio: float, seed: int, num_classes: int | None = None
) -> np.ndarray:
    """Subsamples a labelled set into a long-tailed one (Cao et al. 2019; FedLoGe, Xiao et al. 2024).

    Class ``c`` keeps ``n_c = floor(n_max · (1 / imbalance_ratio) ** (c / (C − 1)))`` samples chosen at random
    (:func:`long_tail_class_sizes`), class 0 being the head. ``n_max`` is the size of the *smallest* class, so
    every class can supply its quota; for the balanced benchmark sets (CIFAR, Fashion-MNIST) this is the
    common per-class count, exactly as in the CIFAR-LT construction.

    Args:
        labels: ``(N,)`` integer class ids.
        imbalance_ratio: Head/tail size ratio (>= 1); 100 means the head has 100× the tail's samples.
        seed: Run seed; the stream is ``(seed, "long_tail")``.
        num_classes: Number of classes ``C``; defaults to ``labels.max() + 1``. Every class must be present.

    Returns:
        Sorted ``int64`` indices into ``labels`` of the kept samples.

    Raises:
        ValueError: If ``imbalance_ratio < 1``, a class is missing, or the tail would be empty.
    """
    labels = _as_labels(labels)
    if labels.size == 0:
        raise ValueError("long_tail_indices: labels are empty")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    _check_int_at_least("num_classes", num_classes, 1)
    if labels.max() >= num_classes:
        raise ValueError(f"labels contain class {labels.max()} but num_classes={num_classes}")
    available = np.bincount(labels, minlength=num_classes)
    if available.min() == 0:
        raise ValueError(f"long_tail_indices: class {int(np.argmin(available))} has no samples")
    sizes = long_tail_class_sizes(int(available.min()), num_classes, imbalance_ratio)
    if sizes.min() < 1:
        raise ValueError(
            f"imbalance_ratio={imbalance_ratio} leaves the tail class empty (head size {available.min()}); "
            f"use imbalance_ratio <= {available.min()}"
        )
    rng = numpy_rng(seed, "long_tail")
    kept = [rng.choice(np.flatnonzero(labels == c), size=int(sizes[c]), replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(kept).astype(np.int64))


def split_train_test(
    indices: np.ndarray,
    labels: np.ndarray,
    train_fraction: float = 0.75,
    seed: int = 0,
    client_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits one client's samples into local train/test parts, stratified by label.

    The personalized-FL protocol of PFLlib (Zhang et al. 2023) keeps 75% of each client's data for training
    and evaluates on the rest; stratifying makes the local test set follow the client's label distribution.
    Per class, ``floor(n_c · f)`` samples go to train, the remaining ``round(n · f) − Σ floor`` are handed to
    the classes with the largest fractional parts, and every class with at least 2 samples keeps at least one
    sample on each side (a single-sample class goes to train).

    Args:
        indices: The client's sample indices (into ``labels``).
        labels: ``(N,)`` class ids of the whole set.
        train_fraction: Fraction of the client's samples for training (``0 < f < 1``).
        seed: Run seed; the stream is ``(seed, "split", client_id)``.
        client_id: The client, so that clients split independently under one seed.

    Returns:
        ``(train_idx, test_idx)``: sorted ``int64`` arrays partitioning ``indices``.
    """
    if not (_is_real(train_fraction) and 0 < train_fraction < 1):
        raise ValueError(f"train_fraction must be in (0, 1), got train_fraction={train_fraction!r}")
    labels = _as_labels(labels)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= labels.size):
        raise ValueError(f"indices must lie in [0, {labels.size}), got range [{indices.min()}, {indices.max()}]")
    rng = numpy_rng(seed, "split", client_id)
    client_labels = labels[indices]
    classes, counts = np.unique(client_labels, return_counts=True)
    raw = counts * float(train_fraction)
    num_train = np.floor(raw).astype(np.int64)
    remainder = int(math.floor(indices.size * train_fraction + 0.5)) - int(num_train.sum())
    if remainder > 0:
        ranking = np.lexsort((rng.random(classes.size), -(raw - num_train)))
        num_train[ranking[:remainder]] += 1
    num_train = np.where(counts >= 2, np.clip(num_train, 1, counts - 1), counts)
    train, test = [], []
    for position, label in enumerate(classes):
        members = rng.permutation(indices[client_labels == label])
        train.append(members[: num_train[position]])
        test.append(members[num_train[position] :])
    empty = np.empty(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(train)) if train else empty,
        np.sort(np.concatenate(test)) if test else empty.copy(),
    )


def class_histogram(labels: np.ndarray, partition: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client class counts.

    Args:
        labels: ``(N,)`` integer class ids.
        partition: One index array per client.
        num_classes: Number of classes ``C`` (columns).

    Returns:
        ``(num_clients, C)`` int64 array whose row ``k`` counts the labels of client ``k``'s indices.
    """
    labels = _as_labels(labels)
    _check_int_at_least("num_classes", num_classes, 1)
    histogram = np.zeros((len(partition), num_classes), dtype=np.int64)
    for client, part in enumerate(partition):
        histogram[client] = np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=num_classes)[:num_classes]
    return histogram


# --------------------------------------------------------------------------------------------------
# Configurable partitioners (YAML: class_path / init_args)
# ----------------------------------------------------------------------------------------------------


class Partitioner(abc.ABC):
    """A partitioning scheme: ``partitioner(labels, num_clients, seed)`` gives one index array per client."""

    @abc.abstractmethod
    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """Splits the indices of ``labels`` among ``num_clients`` clients, deterministically in ``seed``.

        Args:
            labels: ``(N,)`` integer class ids.
            num_clients: Number of clients.
            seed: Run seed.

        Returns:
            One sorted ``int64`` index array per client.
        """


@dataclass(frozen=True)
class IID(Partitioner):
    """Uniform random split into near-equal parts (:func:`iid_partition`)."""

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """See :func:`iid_partition`."""
        return iid_partition(labels, num_clients, seed)


@dataclass(frozen=True)
class Dirichlet(Partitioner):
    """Per-class Dirichlet label skew (Hsu et al. 2019; :func:`dirichlet_partition`).

    Attributes:
        alpha: Dirichlet concentration (> 0); 0.1 is the usual "strongly non-IID" setting.
        min_size: Minimum samples per client.
        max_attempts: Draws tried before giving up.
    """

    alpha: float = 0.1
    min_size: int = 10
    max_attempts: int = 1000

    def __post_init__(self) -> None:
        _check_positive("alpha", self.alpha)
        _check_int_at_least("min_size", self.min_size, 1)
        _check_int_at_least("max_attempts", self.max_attempts, 1)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """See :func:`dirichlet_partition`."""
        return dirichlet_partition(labels, num_clients, self.alpha, seed, self.min_size, self.max_attempts)


@dataclass(frozen=True)
class Pathological(Partitioner):
    """``classes_per_client`` classes per client (McMahan et al. 2017; :func:`pathological_partition`).

    Attributes:
        classes_per_client: Classes each client holds.
        min_size: Minimum samples per client.
    """

    classes_per_client: int = 2
    min_size: int = 1

    def __post_init__(self) -> None:
        _check_int_at_least("classes_per_client", self.classes_per_client, 1)
        _check_int_at_least("min_size", self.min_size, 1)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """See :func:`pathological_partition`."""
        return pathological_partition(labels, num_clients, self.classes_per_client, seed, self.min_size)


@dataclass(frozen=True)
class QuantitySkew(Partitioner):
    """IID labels with Dirichlet client sizes (Li et al. 2022; :func:`quantity_skew_partition`).

    Attributes:
        alpha: Dirichlet concentration of the client sizes (> 0).
        min_size: Minimum samples per client.
    """

    alpha: float = 0.5
    min_size: int = 10

    def __post_init__(self) -> None:
        _check_positive("alpha", self.alpha)
        _check_int_at_least("min_size", self.min_size, 1)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        """See :func:`quantity_skew_partition`."""
        return quantity_skew_partition(labels, num_clients, self.alpha, seed, self.min_size)
