"""Variance-aware prompt sampling (VAS) for ThermoGRPOTrainer: config fields and the trainer hooks they need."""

from dataclasses import dataclass


@dataclass
class VarianceAwareSamplingArguments:
    """Config fields for variance-aware prompt sampling (filled in by the VAS work)."""


class VarianceAwareSamplingMixin:
    """Trainer hooks for variance-aware prompt sampling (filled in by the VAS work)."""
