"""Clients that learn from a frozen copy of the global model they received.

:class:`FrozenModule` is a frozen copy of a model, kept out of the client's parameters and state dict;
:class:`GlobalTeacherClient` manages the teacher's life cycle (refreshed from every received global state, or set
by hand for use outside federation) and records the teacher–student fidelity metrics of Stanton et al. 2021
("Does Knowledge Distillation Really Work?"). FedNTD, FedLSD and MOON build on it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.metrics.fidelity import DistillationFidelity

__all__ = ["FrozenModule", "GlobalTeacherClient", "TeacherSource"]

TeacherSource = nn.Module | Mapping[str, Tensor]
"""What a teacher can be set from: a module (copied) or a state dict with the client's state-dict keys."""


class FrozenModule:
    """A frozen copy of a module: no gradients, eval mode, invisible to its owner.

    It is deliberately *not* an ``nn.Module`` attribute of the client: its tensors stay out of the client's
    ``parameters()`` (the optimizer never sees them), ``state_dict()`` (nothing is uploaded, checkpointed or
    aggregated) and Lightning's device/precision moves. :meth:`match` moves it to the student's device and
    floating dtype on use; :meth:`cpu` puts it back off the accelerator after a fit.

    Args:
        module: The module to copy (deep copy; gradients are dropped).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = copy.deepcopy(module)
        for param in self.module.parameters():
            param.requires_grad_(False)
            param.grad = None
        self.module.eval()

    def load_from(self, source: nn.Module | Mapping[str, Tensor]) -> None:
        """Copies ``source``'s tensors (a module of the same architecture, or its state dict) in place.

        Raises:
            RuntimeError: missing/unexpected keys or shape mismatches (``load_state_dict(strict=True)``).
        """
        state = source.state_dict() if isinstance(source, nn.Module) else source
        with torch.no_grad():
            self.module.load_state_dict(dict(state), strict=True)

    def match(self, reference: Tensor | nn.Parameter) -> FrozenModule:
        """Moves the copy to ``reference``'s device and (for floating tensors) dtype, if it is elsewhere."""
        first = next(iter(self.module.parameters()), None)
        if first is None:
            first = next(iter(self.module.buffers()), None)
        if first is not None and (first.device != reference.device or first.dtype != reference.dtype):
            self.module.to(device=reference.device, dtype=reference.dtype)
        return self

    def cpu(self) -> FrozenModule:
        """Moves the copy to the CPU."""
        self.module.to("cpu")
        return self

    def state_dict(self) -> StateDict:
        """Detached CPU copies of the frozen tensors."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The module's forward in eval mode without autograd."""
        self.module.eval()
        with torch.no_grad():
            return self.module(*args, **kwargs)


def load_client_keys(target: nn.Module, state: Mapping[str, Tensor], prefixes: Sequence[str]) -> None:
    """Copies ``state`` entries named ``"<prefix>.<key>"`` into ``target``'s ``<prefix>.<key>``, checking shapes."""
    own = target.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in state.items():
            if not any(key.startswith(f"{prefix}.") for prefix in prefixes):
                continue
            if key not in own:
                raise KeyError(f"teacher state has unknown key '{key}'")
            if own[key].shape != value.shape:
                raise ValueError(
                    f"teacher state key '{key}' has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
                )
            own[key].copy_(value)


class GlobalTeacherClient(FederatedClient):
    """A client distilling from a frozen teacher — by default the global model it received this round.

    The teacher's life cycle:

    * **Federated.** :meth:`receive_global` loads the global state, then freezes a copy of the resulting model
      (the received shared state plus the client's own personal parts) as the teacher: no gradient, eval mode
      (BatchNorm uses the global running statistics and never updates them), outside the client's parameters and
      state dict. It is refreshed every round (copied in place, no re-allocation).
    * **Plain Lightning.** :meth:`set_teacher` sets it by hand — from any module mapping inputs to ``(B, C)``
      logits, or from a state dict with the client's keys. If none is set when a fit starts, the model's own
      weights at that moment are frozen as the teacher [design: in federation that is exactly the received
      global model].

    Per training batch, :meth:`extra_losses` runs the teacher on the batch inputs, accumulates the teacher–student
    fidelity (Stanton et al. 2021: top-1 agreement and average predictive KL(teacher ‖ student), at temperature 1,
    over all classes, on the local training batches *before* each step) and adds the subclass's
    :meth:`distillation_losses`. The fidelity is reported in ``ClientUpdate.metrics`` under
    ``fidelity_agreement`` / ``fidelity_kl`` (pooled over the round's samples; the loop averages them over clients
    into the round metrics like ``train_loss``), and logged as ``train_fidelity_agreement`` /
    ``train_fidelity_kl`` under a plain Lightning Trainer with a logger.

    Subclasses implement :meth:`distillation_losses`; :meth:`teacher_source` chooses what is copied.

    Args:
        backbone: A model with timm's feature/head contract.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule).
    """

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        self.fidelity = DistillationFidelity()
        self._teacher: FrozenModule | None = None
        self._teacher_is_copy_of_source = False

    # -- the teacher -------------------------------------------------------------------------------------
    def teacher_source(self) -> nn.Module:
        """The sub-module whose frozen copy is the teacher (default: the backbone, i.e. the whole classifier)."""
        return self.backbone

    def _source_prefix(self) -> str:
        for name, module in self.named_children():
            if module is self.teacher_source():
                return name
        raise ValueError(f"{type(self).__name__}.teacher_source() is not a direct child module")

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher module, or ``None`` before one is set."""
        return None if self._teacher is None else self._teacher.module

    def set_teacher(self, teacher: TeacherSource | None = None) -> None:
        """Sets the frozen teacher by hand.

        Args:
            teacher: ``None`` — a frozen copy of this client's current model; an ``nn.Module`` — a frozen copy of
                it (any model mapping the client's inputs to ``(B, C)`` logits); a mapping — a state dict with this
                client's state-dict keys (e.g. another client's ``shared_state()`` or a server message's state):
                a copy of this client's model with those tensors loaded (keys it does not carry keep this
                client's current values).
        """
        if teacher is None:
            self._snapshot_teacher()
        elif isinstance(teacher, nn.Module):
            self._teacher = FrozenModule(teacher)
            self._teacher_is_copy_of_source = False
        else:
            frozen = FrozenModule(self.teacher_source())
            source = frozen.module
            wrapper = nn.Module()
            wrapper.add_module(self._source_prefix(), source)
            load_client_keys(wrapper, teacher, [self._source_prefix()])
            self._teacher = frozen
            self._teacher_is_copy_of_source = True

    def _snapshot_teacher(self) -> None:
        if self._teacher is not None and self._teacher_is_copy_of_source:
            self._teacher.load_from(self.teacher_source())
        else:
            self._teacher = FrozenModule(self.teacher_source())
            self._teacher_is_copy_of_source = True

    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's ``(B, C)`` logits on ``x`` (no gradient; frozen at the first call if none is set)."""
        if self._teacher is None:
            self._snapshot_teacher()
        reference = next(self.parameters())
        return self._teacher.match(reference)(x)  # type: ignore[union-attr]

    @override
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the global state and freezes a copy of the received model as this round's teacher."""
        super().receive_global(message)
        self._snapshot_teacher()
        self.fidelity.reset()

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self.fidelity.reset()  # fidelity is measured per fit (= per round in federation)
        if self._teacher is None:
            self._snapshot_teacher()

    @override
    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self._teacher is not None:
            self._teacher.cpu()  # state lives off the device between fits (DESIGN principle 5)

    # -- losses and metrics ------------------------------------------------------------------------------
    def distillation_losses(self, output: StepOutput, teacher_logits: Tensor) -> dict[str, Tensor]:
        """The method's distillation terms for a batch, by name. Default: none (fidelity is still measured)."""
        return {}

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """Regularizers, plus :meth:`distillation_losses` against the teacher's logits on the batch."""
        extras = super().extra_losses(batch, output)
        if output is None:
            raise ValueError(f"{type(self).__name__}.extra_losses needs the step output (student logits)")
        teacher_logits = self.teacher_logits(batch[0])
        batch_fidelity = self.fidelity(output.logits, teacher_logits)
        if self._trainer is not None and self.trainer.loggers:
            for name, value in batch_fidelity.items():
                self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=len(output.target))
        extras.update(self.distillation_losses(output, teacher_logits))
        return extras

    @override
    def build_update(self, num_samples: int) -> ClientUpdate:
        """The FedAvg update plus the round's teacher–student fidelity in ``metrics``."""
        update = super().build_update(num_samples)
        update.metrics.update(self.fidelity.compute())
        return update
