"""Byzantine-robust aggregation rules: drop-in replacements for the weighted mean.

Each rule is an :class:`~lit_fed.server.aggregation.Aggregator`, so any strategy that aggregates through one
takes it: ``FedAvg(aggregator=CoordinateMedian())``, ``FedAvgM(aggregator=Krum(1))``,
``FedAdam(aggregator=TrimmedMean(0.2))``, ``PartialPFL(aggregator=CenteredClipping(1.0))``.

* :class:`CoordinateMedian` — coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", Def. 1).
* :class:`TrimmedMean` — coordinate-wise β-trimmed mean (Yin et al. 2018, Def. 2).
* :class:`Krum` — Krum and multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", §4).
* :class:`CenteredClipping` — centered clipping (Karimireddy, He & Jaggi 2021, "Learning from History for
  Byzantine Robust Optimization", Eq. 2).

Conventions shared by every rule:

* **Unweighted.** Robust rules ignore the sample-count weights a strategy passes: a Byzantine client could
  otherwise claim a huge ``n_k`` and buy itself the aggregate. Every client counts once [design; the papers
  state the rules for unweighted inputs].
* **Floating-point keys** are aggregated; **integer keys** (BatchNorm's ``num_batches_tracked``) pass through
  from the update with the largest weight, exactly as :class:`~lit_fed.server.aggregation.WeightedMean` does.
* Coordinate-wise rules (median, trimmed mean) work per tensor entry. Rules defined on whole updates (Krum's
  distances, clipping's norms) flatten all floating-point keys of an update into one vector.
* Arithmetic is float64; results are cast back to each tensor's dtype.
* All rules are translation-equivariant (``agg({x_k}) − x = agg({x_k − x})``), so aggregating states or the
  deltas ``x_k − x`` from the global state gives the same next state. Centered clipping is defined on the
  deltas ``state − reference`` and needs ``reference``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.client.payloads import StateDict
from lit_fed.server.aggregation import Aggregator


def _float_keys(state: StateDict) -> list[str]:
    return [key for key, value in state.items() if torch.is_floating_point(value)]


def _check_states(states: Sequence[StateDict], rule: str) -> None:
    if len(states) == 0:
        raise ValueError(f"{rule}: cannot aggregate zero client updates")


def _passthrough_integers(states: Sequence[StateDict], weights: Tensor, out: StateDict) -> StateDict:
    """Fills ``out`` with the integer keys, taken from the update with the largest weight (like WeightedMean)."""
    source = states[int(torch.argmax(weights))] if weights.numel() else states[0]
    for key, value in states[0].items():
        if not torch.is_floating_point(value):
            out[key] = source[key].clone()
    return out


def _ordered(states: Sequence[StateDict], out: StateDict) -> StateDict:
    """``out`` with the keys in the order of the input states."""
    return {key: out[key] for key in states[0]}


def flatten_states(states: Sequence[StateDict], keys: Sequence[str], reference: StateDict | None = None) -> Tensor:
    """``(n, d)`` float64 matrix of the updates' floating-point ``keys``, minus ``reference`` when given."""
    rows = []
    for state in states:
        parts = []
        for key in keys:
            value = state[key].detach().to(torch.float64).reshape(-1)
            if reference is not None:
                value = value - reference[key].detach().to(torch.float64).reshape(-1)
            parts.append(value)
        rows.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64))
    return torch.stack(rows)


class CoordinateMedian(Aggregator):
    """Coordinate-wise median (Yin et al. 2018, Def. 1): ``w[j] = med_k w_k[j]`` for every coordinate ``j``.

    With an even number of updates the median is the mean of the two middle values (the usual definition; Yin
    et al. use ``med`` without fixing the convention). Unweighted (see the module docstring).
    """

    @override
    def __call__(self, states: Sequence[StateDict], weights: Tensor, reference: StateDict | None = None) -> StateDict:
        _check_states(states, "CoordinateMedian")
        out: StateDict = {}
        n = len(states)
        for key in _float_keys(states[0]):
            stacked, _ = torch.stack([s[key].to(torch.float64) for s in states]).sort(dim=0)
            median = stacked[n // 2] if n % 2 else 0.5 * (stacked[n // 2 - 1] + stacked[n // 2])
            out[key] = median.to(states[0][key].dtype)
        return _ordered(states, _passthrough_integers(states, weights, out))

    def __repr__(self) -> str:
        return "CoordinateMedian()"


class TrimmedMean(Aggregator):
    """Coordinate-wise β-trimmed mean (Yin et al. 2018, Def. 2).

    Per coordinate, the ``k = ⌊β·n⌋`` largest and ``k`` smallest values are dropped and the remaining
    ``n − 2k`` averaged. Unweighted (see the module docstring).

    Args:
        beta: β, the fraction trimmed on each side, in ``[0, 0.5)``. ``β = 0`` is the plain (unweighted) mean.

    Raises:
        ValueError: ``beta`` is outside ``[0, 0.5)``, or (when called) nothing would be left after trimming.
    """

    def __init__(self, beta: float = 0.1) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"TrimmedMean: beta must be in [0, 0.5), got beta={beta}")
        self.beta = beta

    def num_trimmed(self, n: int) -> int:
        """``k = ⌊β·n⌋``, the values dropped on each side of each coordinate among ``n`` updates."""
        return int(math.floor(self.beta * n + 1e-12))

    @override
    def __call__(self, states: Sequence[StateDict], weights: Tensor, reference: StateDict | None = None) -> StateDict:
        _check_states(states, "TrimmedMean")
        n = len(states)
        k = self.num_trimmed(n)
        if n - 2 * k < 1:
            raise ValueError(f"TrimmedMean(beta={self.beta}): trimming {k} of n={n} updates per side leaves none")
        out: StateDict = {}
        for key in _float_keys(states[0]):
            stacked, _ = torch.stack([s[key].to(torch.float64) for s in states]).sort(dim=0)
            out[key] = stacked[k : n - k].mean(dim=0).to(states[0][key].dtype)
        return _ordered(states, _passthrough_integers(states, weights, out))

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta})"


class Krum(Aggregator):
    """Krum and multi-Krum (Blanchard et al. 2017, §4).

    Each update ``i`` (all floating-point keys flattened into one vector) gets the score
    ``s(i) = Σ_{j ∈ N_i} ‖V_i − V_j‖²`` over its ``n − f − 2`` nearest other updates ``N_i``. Krum (``multi=1``)
    returns the update with the smallest score; multi-Krum returns the mean of the ``multi`` updates with the
    smallest scores (scores computed once, as in the paper). Ties go to the lower index. Unweighted.

    Args:
        num_byzantine: ``f``, the number of Byzantine updates tolerated; Krum needs ``n > 2f + 2``.
        multi: ``m``, the number of best-scored updates averaged (1: Krum).

    Raises:
        ValueError: ``f < 0`` or ``m < 1``; (when called) ``n ≤ 2f + 2`` or ``m > n``.
    """

    def __init__(self, num_byzantine: int = 1, multi: int = 1) -> None:
        if num_byzantine < 0:
            raise ValueError(f"Krum: num_byzantine (f) must be >= 0, got {num_byzantine}")
        if multi < 1:
            raise ValueError(f"Krum: multi (m) must be >= 1, got {multi}")
        self.num_byzantine = num_byzantine
        self.multi = multi

    def scores(self, vectors: Tensor) -> Tensor:
        """Krum scores of the rows of ``vectors`` (``(n, d)``)."""
        n, f = vectors.shape[0], self.num_byzantine
        if n <= 2 * f + 2:
            raise ValueError(
                f"Krum needs n > 2f + 2 updates: got n={n} updates with f={f} Byzantine "
                f"(at least {2 * f + 3} updates, or a smaller num_byzantine)"
            )
        distances = torch.cdist(vectors, vectors).pow(2)
        distances.fill_diagonal_(float("inf"))  # a vector is not its own neighbour
        nearest, _ = distances.topk(n - f - 2, dim=1, largest=False)
        return nearest.sum(dim=1)

    def select(self, states: Sequence[StateDict]) -> list[int]:
        """Indices of the ``multi`` updates with the smallest scores, best first."""
        keys = _float_keys(states[0])
        if self.multi > len(states):
            raise ValueError(f"Krum: multi={self.multi} exceeds the number of updates n={len(states)}")
        scores = self.scores(flatten_states(states, keys))
        order = sorted(range(len(states)), key=lambda i: (float(scores[i]), i))
        return order[: self.multi]

    @override
    def __call__(self, states: Sequence[StateDict], weights: Tensor, reference: StateDict | None = None) -> StateDict:
        _check_states(states, "Krum")
        chosen = self.select(states)
        out: StateDict = {}
        for key in _float_keys(states[0]):
            stacked = torch.stack([states[i][key].to(torch.float64) for i in chosen])
            out[key] = stacked.mean(dim=0).to(states[0][key].dtype)
        return _ordered(states, _passthrough_integers(states, weights, out))

    def __repr__(self) -> str:
        return f"Krum(num_byzantine={self.num_byzantine}, multi={self.multi})"


class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy, He & Jaggi 2021, Eq. 2), on the deltas ``Δ_i = x_i − reference``.

    Starting from ``v = 0`` (i.e. from the reference, the global state the updates started from), ``L`` times:
    ``v ← v + (1/n) Σ_i clip_τ(Δ_i − v)`` with ``clip_τ(z) = z · min(1, τ/‖z‖)``, the norm taken over all
    floating-point keys of an update flattened together. Returns ``reference + v``. Each iteration moves ``v`` by
    at most τ; when every ``‖Δ_i − v‖ ≤ τ`` an iteration lands on the plain mean of the deltas. The paper starts
    from the previous aggregate momentum; without server momentum that is the reference here [design].
    Unweighted.

    The paper's τ is a fixed constant, but a model delta's norm depends on the model, the data, the learning rate
    and the round, so no single τ fits every setting (on Fashion-MNIST Dir(0.1) with ``FedAvgCNN``, one local
    epoch at lr 0.005 from the initial model gives honest delta norms between 0.56 and 1.11). ``radius=None`` (the
    default) sets ``τ`` at each iteration to the median of the distances ``‖Δ_i − v‖`` [design]: with fewer than
    half of the clients Byzantine, at least half of the honest updates pass unclipped and an attacker's
    contribution is bounded by an honest distance.

    Args:
        radius: τ > 0, a fixed clipping radius (in the units of a model delta: with local SGD at rate η a radius τ
            clips gradients at τ/η); ``None``: the median distance to ``v`` at each iteration.
        iterations: L ≥ 1 (the paper finds L = 1 enough).

    Raises:
        ValueError: ``radius ≤ 0`` or ``iterations < 1``; (when called) no ``reference`` was given.
    """

    def __init__(self, radius: float | None = None, iterations: int = 1) -> None:
        if radius is not None and not radius > 0:
            raise ValueError(f"CenteredClipping: radius (tau) must be > 0 or None (adaptive), got {radius}")
        if iterations < 1:
            raise ValueError(f"CenteredClipping: iterations (L) must be >= 1, got {iterations}")
        self.radius = radius
        self.iterations = iterations

    def clip_deltas(self, deltas: Tensor) -> Tensor:
        """The aggregate delta ``v`` after ``L`` iterations, from the ``(n, d)`` deltas."""
        v = torch.zeros(deltas.shape[1], dtype=deltas.dtype)
        for _ in range(self.iterations):
            diff = deltas - v
            norms = diff.norm(dim=1, keepdim=True)
            radius = norms.median() if self.radius is None else self.radius
            scale = torch.clamp(radius / norms.clamp_min(torch.finfo(diff.dtype).tiny), max=1.0)
            v = v + (diff * scale).mean(dim=0)
        return v

    @override
    def __call__(self, states: Sequence[StateDict], weights: Tensor, reference: StateDict | None = None) -> StateDict:
        _check_states(states, "CenteredClipping")
        if reference is None:
            raise ValueError(
                "CenteredClipping needs the reference state the updates started from (aggregator(..., reference=))"
            )
        keys = _float_keys(states[0])
        v = self.clip_deltas(flatten_states(states, keys, reference))
        offset = 0
        out: StateDict = {}
        for key in keys:
            template = states[0][key]
            size = template.numel()
            step = v[offset : offset + size].reshape(template.shape)
            out[key] = (reference[key].to(torch.float64) + step).to(template.dtype)
            offset += size
        return _ordered(states, _passthrough_integers(states, weights, out))

    def __repr__(self) -> str:
        return f"CenteredClipping(radius={self.radius}, iterations={self.iterations})"
