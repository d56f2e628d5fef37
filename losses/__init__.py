"""Policy losses for GRPO-family training, by name: grpo, gspo, gspo_token, sapo, cispo, vespo, adpo.

Importing the loss modules registers them in `LOSSES`.
"""

from . import adpo, cispo, grpo, gspo, sapo, vespo  # noqa: F401  (registration)
from .registry import LOSSES, get_loss, loss_inputs, loss_parameters, register_loss, validate_loss_kwargs

__all__ = ["LOSSES", "get_loss", "loss_inputs", "loss_parameters", "register_loss", "validate_loss_kwargs"]
