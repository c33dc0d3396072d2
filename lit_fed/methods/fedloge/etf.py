"""Simplex equiangular tight frames (ETF) and FedLoGe's static sparse ETF classifier (SSE-C).

* :func:`simplex_etf` — the dense simplex ETF of neural collapse (Papyan et al. 2020), as constructed by the
  FedLoGe and FedETF official code: ``P`` = QR of ``U[0,1)^{d×C}``, ``M = √(C/(C−1)) P (I − 11ᵀ/C)``. Its ``C``
  columns have unit norm and pairwise cosine ``−1/(C−1)``.
* :func:`build_sse_classifier` — FedLoGe's SSE-C (Xiao et al., ICLR 2024): the simplex ETF
  with a random 60% of its entries zeroed, whose non-zeros are refined with Adam (masked gradient) to class-vector
  norms ``0.1`` and large nearest-neighbour angles. **[code]** ``util/etf_methods.py::gen_sparse_ETF``.
* :func:`etf_geometry` — the class-vector norms and nearest-neighbour angles of a classifier (diagnostics, tests).

Every construction is a pure function of its arguments: the random draws come from a private generator seeded by
``derive_seed(seed, "simplex_etf" | "sse_c")``, never from the global RNG, so every client (and every process)
that builds the classifier from the same arguments gets the same tensors. **[design]** Everything runs in
float64 (the official code draws ``P`` in float64 with NumPy and refines in float32) and the result is rounded to
float32 once at the end, which keeps the construction reproducible across BLAS thread counts in practice.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from lit_fed.utils.seeding import torch_generator

__all__ = [
    "SSEClassifier",
    "build_sse_classifier",
    "cached_sse_classifier",
    "check_sse_arguments",
    "etf_geometry",
    "simplex_etf",
    "refine_sparse_etf",
    "sse_loss",
    "sse_loss_and_gradient",
]

COS_CLAMP = 0.99999
"""Cosines are clamped to ``[−COS_CLAMP, COS_CLAMP]`` before ``arccos`` (its gradient is infinite at ±1). [code]"""


class SSEClassifier(NamedTuple):
    """A static (sparse) classifier: ``logits = f Wᵀ + b``.

    Attributes:
        weight: ``(C, d)`` float32 class vectors (row ``c`` is class ``c``'s vector ``m_c``).
        bias: ``(C,)`` float32 bias.
        mask: ``(C, d)`` bool, ``True`` where the weight may be non-zero (the entries kept by sparsification).
    """

    weight: Tensor
    bias: Tensor
    mask: Tensor


def _check_shape(feature_dim: int, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs num_classes >= 2, got {num_classes}")
    if feature_dim < num_classes:
        raise ValueError(
            f"a simplex ETF needs feature_dim >= num_classes (QR of a d×C matrix), got feature_dim={feature_dim}, "
            f"num_classes={num_classes}"
        )


def simplex_etf(feature_dim: int, num_classes: int, seed: int = 0, generator: torch.Generator | None = None) -> Tensor:
    """The simplex ETF ``M = √(C/(C−1)) P (I − 11ᵀ/C)`` as a ``(d, C)`` float64 matrix (columns = classes).

    ``P`` is the ``(d, C)`` orthonormal factor of the reduced QR decomposition of a ``U[0, 1)`` matrix. [code]
    ``ETF_Classifier.__init__`` in FedLoGe and ``Proto_Classifier`` in FedETF (Li et al., ICCV 2023).

    Args:
        feature_dim: ``d``, at least ``num_classes``.
        num_classes: ``C``, at least 2.
        seed: Seed of the draw (stream ``(seed, "simplex_etf")``), used when ``generator`` is ``None``.
        generator: An explicit generator (then ``seed`` is ignored).

    Raises:
        ValueError: ``d < C`` or ``C < 2``.
    """
    _check_shape(feature_dim, num_classes)
    if generator is None:
        generator = torch_generator(seed, "simplex_etf")
    uniform = torch.rand(feature_dim, num_classes, generator=generator, dtype=torch.float64)
    orthonormal, _ = torch.linalg.qr(uniform, mode="reduced")
    centering = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return math.sqrt(num_classes / (num_classes - 1)) * orthonormal @ centering


def sse_loss(columns: Tensor, target_norm: float = 0.1) -> Tensor:
    """SSE-C's refinement objective on a ``(d, C)`` matrix whose columns are the class vectors ``m_c``.

    ``Σ_c (‖m_c‖ − target_norm)² − mean_c arccos(clip(max_{j≠c} cos(m_c, m_j)))`` — a norm term pulling every
    class vector to ``target_norm`` and an angle term pushing every class away from its nearest neighbour. [code]
    ``gen_sparse_ETF``: the diagonal of the cosine matrix is set to −1 before the row maximum and the cosine is
    clipped to ``±0.99999``.
    """
    norms = columns.norm(dim=0)
    norm_term = (norms - target_norm).pow(2).sum()
    unit = columns / norms
    cosine = unit.T @ unit
    eye = torch.eye(cosine.shape[0], dtype=torch.bool, device=cosine.device)
    nearest = cosine.masked_fill(eye, -1.0).max(dim=1).values
    angle_term = -torch.acos(nearest.clamp(-COS_CLAMP, COS_CLAMP)).mean()
    return norm_term + angle_term


def sse_loss_and_gradient(columns: Tensor, target_norm: float = 0.1) -> tuple[Tensor, Tensor]:
    """:func:`sse_loss` and its gradient w.r.t. ``columns``, in closed form (no autograd).

    With ``n_c = ‖m_c‖``, ``u_c = m_c / n_c``, ``s_c = max_{j≠c} u_cᵀu_j`` attained at ``j*(c)`` (the index
    ``torch.max`` returns, as autograd would use) and ``g_c = 1 / (C √(1 − s_c²))`` where ``|s_c| ≤ 0.99999`` (0 where
    the clip is active, as ``clamp``'s gradient):

    ``∂L/∂u_c = Σ_{c'} g_{c'} ([c' = c] u_{j*(c')} + [j*(c') = c] u_{c'})``,
    ``∂L/∂m_c = 2 (n_c − t) u_c + (∂L/∂u_c − u_c (u_cᵀ ∂L/∂u_c)) / n_c``.

    About 5× cheaper per step than autograd + ``torch.optim.Adam`` on these tiny matrices; equal to autograd's
    gradient to rounding (tested).
    """
    norms = columns.norm(dim=0)
    unit = columns / norms
    cosine = unit.T @ unit
    num_classes = cosine.shape[0]
    cosine.fill_diagonal_(-1.0)
    nearest, partner = cosine.max(dim=1)
    clipped = nearest.clamp(-COS_CLAMP, COS_CLAMP)
    loss = (norms - target_norm).pow(2).sum() - torch.acos(clipped).mean()
    active = (nearest >= -COS_CLAMP) & (nearest <= COS_CLAMP)
    weight = torch.where(active, 1.0 / (num_classes * torch.sqrt(1.0 - clipped * clipped)), torch.zeros_like(clipped))
    grad_unit = unit[:, partner] * weight  # the c' = c terms
    grad_unit.index_add_(1, partner, unit * weight)  # the j*(c') = c terms
    radial = (unit * grad_unit).sum(dim=0)
    grad = 2.0 * (norms - target_norm) * unit + (grad_unit - unit * radial) / norms
    return loss, grad


class _Adam:
    """``torch.optim.Adam``'s update (betas 0.9/0.999, eps 1e-8, no weight decay) on one tensor, minus its overhead.

    Equal to ``torch.optim.Adam`` to rounding (tested).
    """

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = 0

    def step(self, grad: Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1.0 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**self.steps)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-self.lr / bias_correction1)


def refine_sparse_etf(columns: Tensor, keep: Tensor, steps: int, lr: float, target_norm: float = 0.1) -> Tensor:
    """SSE-C's refinement: ``steps`` masked Adam steps on :func:`sse_loss` from ``columns ⊙ keep`` (a new tensor).

    Args:
        columns: ``(d, C)`` starting matrix (class vectors as columns); entries where ``keep`` is false are zeroed.
        keep: ``(d, C)`` bool sparsity mask; the gradient is multiplied by it before every step.
        steps: Number of Adam steps.
        lr: Adam learning rate.
        target_norm: The norm term's target.

    Returns:
        The refined ``(d, C)`` matrix, exactly zero where ``keep`` is false.
    """
    mask = keep.to(columns.dtype)
    refined = columns * mask
    optimizer = _Adam(refined, lr)
    with torch.no_grad():
        for _ in range(steps):
            _, grad = sse_loss_and_gradient(refined, target_norm)
            optimizer.step(grad.mul_(mask))
    return refined * mask


def check_sse_arguments(
    feature_dim: int, num_classes: int, sparsity: float, steps: int, lr: float, target_norm: float
) -> None:
    """Raises ``ValueError`` for arguments :func:`build_sse_classifier` cannot use (cheap; no construction)."""
    _check_shape(feature_dim, num_classes)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if lr <= 0 or target_norm <= 0:
        raise ValueError(f"lr and target_norm must be > 0, got lr={lr}, target_norm={target_norm}")
    num_zero = int(sparsity * feature_dim * num_classes + 1e-9)
    if feature_dim * num_classes - num_zero < 2 * num_classes:
        raise ValueError(f"sparsity={sparsity} leaves too few non-zero entries for {num_classes} class vectors")


def build_sse_classifier(
    feature_dim: int,
    num_classes: int,
    sparsity: float = 0.6,
    steps: int = 10_000,
    lr: float = 1e-4,
    target_norm: float = 0.1,
    seed: int = 0,
) -> SSEClassifier:
    r"""FedLoGe's static sparse ETF classifier, SSE-C (Xiao et al., ICLR 2024).

    1. ``M`` = :func:`simplex_etf` ``(d, C)``.
    2. Zero ``⌊sparsity · d · C⌋`` entries chosen uniformly at random without replacement (exactly that many;
       [code] ``np.random.choice(d*C, int(beta*d*C), replace=False)``).
    3. Refine the remaining entries with Adam (``lr``, ``steps`` steps) on :func:`sse_loss`, multiplying the
       gradient by the sparsity mask before every step, so zeroed entries stay exactly zero (Adam's moments of a
       zero gradient are zero, hence so is its update; the result is also multiplied by the mask at the end).
       The gradient is computed in closed form (:func:`sse_loss_and_gradient`) and the Adam update is
       ``torch.optim.Adam``'s, written out ([design] speed: ~5× faster than autograd + the optimizer object here;
       both are tested equal to their references). Note that refinement may drive a few more kept entries to
       (numerically) zero over many steps — the *mask* is exactly the requested sparsity.
    4. The bias is drawn once as ``nn.Linear``'s default bias init, ``U(−1/√d, 1/√d)`` — [code] the official SSE-C
       is an ``nn.Linear`` whose weight is overwritten and whose bias keeps its init — and is never trained.

    The result is the same for the same arguments in every process (see the module docstring), so FedLoGe clients
    build it locally from a shared seed and never communicate it.

    Args:
        feature_dim: Embedding size ``d`` (``>= num_classes``).
        num_classes: ``C`` (``>= 2``).
        sparsity: Fraction of zero entries, in ``[0, 1)``. 0.6 in the paper.
        steps: Adam steps of the refinement (``0`` returns the unrefined sparse ETF). ~10k in the official code.
        lr: Adam learning rate (1e-4 in the official code).
        target_norm: The class-vector norm the refinement pulls to (0.1).
        seed: Seed of the ETF draw, the sparsity pattern and the bias (stream ``(seed, "sse_c")``).

    Returns:
        :class:`SSEClassifier` ``(weight (C, d), bias (C,), mask (C, d))``, float32 / float32 / bool, on CPU.

    Raises:
        ValueError: a bad shape, sparsity, step count, learning rate or target norm.
    """
    check_sse_arguments(feature_dim, num_classes, sparsity, steps, lr, target_norm)
    generator = torch_generator(seed, "sse_c")
    etf = simplex_etf(feature_dim, num_classes, generator=generator)
    total = feature_dim * num_classes
    num_zero = int(sparsity * total + 1e-9)  # [code] int(beta*d*C); the epsilon guards e.g. 0.29 * 100 = 28.99…
    zero_positions = torch.randperm(total, generator=generator)[:num_zero]
    keep = torch.ones(total, dtype=torch.bool)
    keep[zero_positions] = False
    keep = keep.view(feature_dim, num_classes)
    bound = 1.0 / math.sqrt(feature_dim)
    bias = (torch.rand(num_classes, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * bound
    if not bool(keep.any(dim=0).all()):
        raise ValueError(f"sparsity={sparsity} zeroed a whole class vector; use a lower sparsity or another seed")

    weight = refine_sparse_etf(etf, keep, steps, lr, target_norm).T.contiguous()
    return SSEClassifier(weight=weight.float(), bias=bias.float(), mask=keep.T.contiguous())


@functools.lru_cache(maxsize=16)
def _cached_sse(
    feature_dim: int, num_classes: int, sparsity: float, steps: int, lr: float, target_norm: float, seed: int
) -> SSEClassifier:
    return build_sse_classifier(feature_dim, num_classes, sparsity, steps, lr, target_norm, seed)


def cached_sse_classifier(
    feature_dim: int, num_classes: int, sparsity: float, steps: int, lr: float, target_norm: float, seed: int
) -> SSEClassifier:
    """:func:`build_sse_classifier` memoized per process (fresh copies each call: callers own the tensors)."""
    built = _cached_sse(feature_dim, num_classes, float(sparsity), int(steps), float(lr), float(target_norm), seed)
    return SSEClassifier(*(t.clone() for t in built))


class ETFGeometry(NamedTuple):
    """Geometry of a classifier's class vectors.

    Attributes:
        norms: ``(C,)`` class-vector norms ``‖m_c‖``.
        nearest_angles: ``(C,)`` angle (radians) between each class vector and its nearest other class vector.
    """

    norms: Tensor
    nearest_angles: Tensor

    @property
    def min_angle(self) -> float:
        """The smallest pairwise angle (radians)."""
        return float(self.nearest_angles.min())


def etf_geometry(weight: Tensor) -> ETFGeometry:
    """Norms and nearest-neighbour angles of the rows of a ``(C, d)`` classifier weight (computed in float64)."""
    rows = weight.detach().to(torch.float64)
    norms = rows.norm(dim=1)
    unit = rows / norms[:, None]
    cosine = (unit @ unit.T).clamp(-1.0, 1.0)
    cosine.fill_diagonal_(-1.0)
    return ETFGeometry(norms=norms, nearest_angles=torch.acos(cosine.max(dim=1).values))
