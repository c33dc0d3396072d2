"""Per-FedAvg: federated meta-learning of an initialization that adapts in one gradient step.

Fallah, Mokhtari and Ozdaglar, "Personalized Federated Learning with Theoretical Guarantees: A Model-Agnostic
Meta-Learning Approach" (NeurIPS 2020). Clients minimize the MAML objective ``F_k(w) = f_k(w − α∇f_k(w))``
with stochastic meta-steps; the server averages the models (FedAvg). Per-FedAvg (FO) drops the Hessian
term of the meta-gradient; Per-FedAvg (HF) approximates it by a finite difference of two gradients (Eq. 10).
At test time each client adapts the global model by one gradient step of size ``α`` on its own data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient

__all__ = ["PerFedAvgClient"]

VARIANTS = ("fo", "hf")
Batch = Any


class PerFedAvgClient(FederatedClient):
    r"""Per-FedAvg client (Fallah et al. 2020, Alg. 1 with the FO and HF meta-gradients).

    One meta-step uses consecutive batches of the client's loader:

    * **FO** (two batches ``D, D′``): ``w̃ = w − α∇f(w; D)``, then ``w ← w − β∇f(w̃; D′)`` — the gradient taken
      at ``w̃`` is applied to ``w``.
    * **HF** (three batches ``D, D′, D″``, Eq. 10): ``w ← w − β[g − α·H(w; D″) g]`` with ``g = ∇f(w̃; D′)`` and the
      Hessian-vector product by central differences ``H g ≈ (∇f(w + δg; D″) − ∇f(w − δg; D″)) / (2δ)``.

    The inner step, the probes ``w ± δg`` and the gradients are computed by hand (``torch.autograd.grad`` with
    the parameters moved in place and restored), and only the meta-update goes through the Trainer's optimizer:
    a meta-step is not "task loss + extra terms", so this client uses Lightning's manual optimization
    (``automatic_optimization = False``) instead of the base class's single ``training_step``. The meta-gradient
    is handed to the optimizer via ``manual_backward`` of the surrogate ``Σ ⟨w, g_meta⟩`` (float32), so the
    precision plugin's loss scaling/unscaling and AMP step skipping apply as usual; the inner and outer forward
    passes run under the Trainer's autocast (``bf16-mixed``, ``16-mixed``). [design] The two HF probes
    ``∇f(w ± δg; D″)`` run with autocast disabled (float32): their difference is ``O(δ)`` and would drown in
    bf16/fp16 rounding, amplified by ``α/(2δ)``. Automatic gradient clipping and
    ``accumulate_grad_batches`` are not available under manual optimization (Lightning refuses them).

    [design] Batches are grouped in the loader's order: the module keeps the previous batches between
    ``training_step`` calls and steps once a group is complete. An incomplete group at the end of an epoch is
    completed by repeating its last batch (so a client with a single batch still trains: ``D′ = D``), never
    carried into the next epoch. Each meta-step is one optimizer step, so ``local_steps`` counts meta-steps.
    BatchNorm running statistics are updated by every forward pass (inner, outer and probes). The ``train_loss``
    is ``f(w̃; D′)``, the meta-objective. A learning-rate scheduler, if any, is stepped once per epoch.

    Personalization (the paper's test-time adaptation): :meth:`personalize` takes one plain SGD step of size ``α``
    on the first batch of the client's training loader (train mode), then the loop evaluates. Global accuracy is
    the un-adapted ``w``.

    Args:
        backbone: A model with timm's feature/head contract.
        variant: ``"fo"`` (first order) or ``"hf"`` (Hessian-free).
        alpha: Inner (adaptation) step size α. ``None`` takes the learning rate of the client's optimizer
            factory (0.005 without one): [design] as PFLlib, whose Per-FedAvg uses the client learning rate
            (0.005) as α.
        beta: Outer (meta) step size β; [design] 0.001 as PFLlib's Per-FedAvg runs (``-bt 0.001``).
        delta: Finite-difference step δ of the HF variant (Eq. 10). Default 1e-3.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule): no
            personal selectors in the paper (everything is shared); the regularizers' terms are added to every loss
            the meta-step differentiates; ``optimizer`` is the factory of the outer (meta) optimizer, SGD by
            default, whose learning rate is replaced by ``beta``; ``lr_scheduler`` steps the meta optimizer; only
            the parameters a ``schedule`` phase trains take part in a meta-step.

    Raises:
        ValueError: an unknown variant or a non-positive step size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        variant: str = "fo",
        alpha: float | None = None,
        beta: float = 0.001,
        delta: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"PerFedAvgClient: variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in (("alpha", alpha), ("beta", beta), ("delta", delta)):
            if value is not None and value <= 0:
                raise ValueError(f"PerFedAvgClient: {name} must be > 0, got {value}")
        super().__init__(backbone, **kwargs)
        self.automatic_optimization = False
        self.variant = variant
        self._alpha = alpha
        self.beta = beta
        self.delta = delta
        self._pending: list[Batch] = []

    # -- settings ----------------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The inner step size α (the optimizer factory's learning rate when not given)."""
        if self._alpha is None:
            if self.optimizer_factory is None:
                self._alpha = 0.005
            else:
                probe = self.optimizer_factory([nn.Parameter(torch.zeros(1))])
                self._alpha = float(probe.param_groups[0]["lr"])
        return self._alpha

    @property
    def group_size(self) -> int:
        """Batches per meta-step: 2 (FO) or 3 (HF)."""
        return 2 if self.variant == "fo" else 3

    @override
    def configure_optimizers(self) -> Any:
        """The meta optimizer (the factory's, or SGD) with every group's learning rate set to ``beta``."""
        _ = self.alpha  # resolve α from the factory's learning rate before overriding it
        params = list(self.trainable_parameters())
        if self.optimizer_factory is None:
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=self.beta)
        else:
            optimizer = self.optimizer_factory(params)
        for group in optimizer.param_groups:
            group["lr"] = self.beta
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    # -- gradients at displaced weights ------------------------------------------------------------------
    def _loss(self, batch: Batch) -> Tensor:
        output = self.compute_step(batch)
        loss = output.loss
        for term in self.extra_losses(batch, output).values():
            loss = loss + term
        return loss

    def _grad(self, params: list[nn.Parameter], batch: Batch) -> tuple[Tensor, list[Tensor]]:
        """``(f(w; batch), ∇f(w; batch))`` at the parameters' current values (float32 gradients)."""
        loss = self._loss(batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [
            torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads, strict=True)
        ]

    @staticmethod
    @torch.no_grad()
    def _set(params: list[nn.Parameter], values: list[Tensor]) -> None:
        for param, value in zip(params, values, strict=True):
            param.copy_(value)

    def meta_gradient(self, batches: Sequence[Batch]) -> tuple[Tensor, list[Tensor]]:
        """The FO or HF meta-gradient at the current weights; the weights are left unchanged.

        Args:
            batches: ``[D, D′]`` (FO) or ``[D, D′, D″]`` (HF).

        Returns:
            ``(f(w̃; D′), g_meta)`` with ``g_meta`` aligned with the trainable parameters.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        try:
            _, inner = self._grad(params, batches[0])
            self._set(params, [w - self.alpha * g for w, g in zip(start, inner, strict=True)])
            loss, outer = self._grad(params, batches[1])
            if self.variant == "fo":
                return loss, outer
            # The probes run in float32: a difference quotient with δ = 1e-3 is below bf16/fp16 resolution.
            with torch.autocast(device_type=params[0].device.type, enabled=False):
                self._set(params, [w + self.delta * g for w, g in zip(start, outer, strict=True)])
                _, plus = self._grad(params, batches[2])
                self._set(params, [w - self.delta * g for w, g in zip(start, outer, strict=True)])
                _, minus = self._grad(params, batches[2])
            scale = self.alpha / (2 * self.delta)
            return loss, [g - scale * (gp - gm) for g, gp, gm in zip(outer, plus, minus, strict=True)]
        finally:
            self._set(params, start)

    # -- Lightning hooks ---------------------------------------------------------------------------------
    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self._pending = []

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        """Collects ``batch``; when a group of 2 (FO) or 3 (HF) batches is complete, takes one meta-step."""
        self._pending.append(batch)
        last = self._trainer is not None and batch_idx + 1 >= self.trainer.num_training_batches
        if len(self._pending) < self.group_size and not last:
            return None
        group = self._pending + [self._pending[-1]] * (self.group_size - len(self._pending))
        self._pending = []
        loss, meta = self.meta_gradient(group)
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizers()
        optimizer.zero_grad()
        surrogate = sum((p.float() * g.float()).sum() for p, g in zip(params, meta, strict=True))
        self.manual_backward(surrogate)
        optimizer.step()
        self.record_training_loss(loss)
        if self.trainer.loggers:
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[-1]))
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        self._pending = []
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]

    # -- personalization ---------------------------------------------------------------------------------
    @override
    def personalize(self, train_dataloader: Iterable[Any]) -> None:
        """One SGD step of size ``α`` on the first batch of local training data (Fallah et al. 2020's adaptation).

        Runs in train mode with gradients enabled, outside the Trainer (float32); leaves the module in eval mode.
        """
        batch = next(iter(train_dataloader), None)
        if batch is None:
            return
        device = next(self.parameters()).device
        self.train()
        params = [p for p in self.parameters() if p.requires_grad]
        with torch.enable_grad():
            _, grads = self._grad(params, move_data_to_device(batch, device))
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                param.sub_(self.alpha * grad)
        self.eval()
