"""Phased local schedules: which part of the model trains during which part of a client's local fit.

Several methods train parts of the model in sequence within one round:

* FedRep (Collins et al. 2021, Alg. 1): the personal head for ``E_h`` epochs, then the shared body for ``E_b``.
* FedBABU (Oh et al. 2022): the shared body only; the head stays frozen at its initialization during FL.
* FedAlt (Pillutla et al. 2022): the personal part for a pass, then the shared part.
* Partial PFL's FFGG (Mishchenko et al. 2023): ``K_y`` steps on the personal part, then ``H`` steps on the shared
  part.

A :class:`LocalSchedule` is a list of :class:`Phase` objects, each naming what trains (``"personal"``,
``"shared"`` or ``"all"`` — relative to the client's parameter split) and for how long (epochs *or* steps; a
schedule uses one unit throughout). The client toggles ``requires_grad`` at phase boundaries: frozen
parameters get no gradient, so the optimizer (built once per fit) skips them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PARTS = ("personal", "shared", "all")


@dataclass(frozen=True)
class Phase:
    """One phase of a local schedule.

    Attributes:
        train: ``"personal"``, ``"shared"`` or ``"all"``: the parameters that train in this phase.
        epochs: Length in local epochs (``None`` when the schedule counts steps, or to use the loop's
            ``local_epochs``).
        steps: Length in optimizer steps (``None`` when the schedule counts epochs).
    """

    train: str = "all"
    epochs: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.train not in PARTS:
            raise ValueError(f"Phase.train must be one of {PARTS}, got {self.train!r}")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("a Phase has epochs or steps, not both")
        for name, value in (("epochs", self.epochs), ("steps", self.steps)):
            if value is not None and value < 1:
                raise ValueError(f"Phase.{name} must be >= 1, got {value}")


class LocalSchedule:
    """A sequence of phases run within one local fit.

    Args:
        phases: The phases in order. Phases counting epochs may leave ``epochs`` unset to take the loop's
            ``local_epochs``; a schedule counts either epochs or steps, not both.
    """

    def __init__(self, phases: Sequence[Phase]) -> None:
        self.phases = list(phases)
        if not self.phases:
            raise ValueError("a LocalSchedule needs at least one phase")
        if any(p.steps is not None for p in self.phases) and any(p.steps is None for p in self.phases):
            raise ValueError("a LocalSchedule counts either steps in every phase or epochs in every phase")

    @property
    def counts_steps(self) -> bool:
        """Whether phases are measured in optimizer steps (else in epochs)."""
        return self.phases[0].steps is not None

    def lengths(self, local_epochs: int) -> list[int]:
        """Each phase's length in its unit, with unset epochs replaced by ``local_epochs``."""
        if self.counts_steps:
            return [int(p.steps) for p in self.phases]  # type: ignore[arg-type]
        return [p.epochs if p.epochs is not None else local_epochs for p in self.phases]

    def total(self, local_epochs: int) -> int:
        """Total length of the fit, in the schedule's unit."""
        return sum(self.lengths(local_epochs))

    def phase_at(self, position: int, local_epochs: int) -> Phase:
        """The phase in force at epoch (or step) ``position`` of the fit; the last phase beyond the end."""
        end = 0
        for phase, length in zip(self.phases, self.lengths(local_epochs), strict=True):
            end += length
            if position < end:
                return phase
        return self.phases[-1]

    def __repr__(self) -> str:
        return f"LocalSchedule({self.phases!r})"
