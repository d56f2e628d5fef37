"""Annealed-temperature rollouts (EAD) for ThermoGRPOTrainer: config fields and the trainer hooks they need."""

from dataclasses import dataclass


@dataclass
class AnnealedRolloutArguments:
    """Config fields for annealed-temperature rollouts (filled in by the EAD work)."""


class AnnealedRolloutMixin:
    """Trainer hooks for annealed-temperature rollouts (filled in by the EAD work)."""

    def _rollout_token_weights(self, inputs, mask):
        """Per-token correction of the policy loss for the behaviour policy's temperatures; None when off."""
        return None
