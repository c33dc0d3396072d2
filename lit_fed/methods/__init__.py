"""Personalized-FL methods: one module per paper (client hooks, and a server strategy when they pair)."""

from lit_fed.methods.partial import (
    PartialPFL,
    fedalt_schedule,
    fedsim_schedule,
    ffgg_schedule,
    partial_schedule,
)

__all__ = ["PartialPFL", "fedalt_schedule", "fedsim_schedule", "ffgg_schedule", "partial_schedule"]
