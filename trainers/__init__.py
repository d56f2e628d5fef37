"""thermorl's trainers: thin subclasses of TRL's trainers that delegate to `thermorl.losses` and `thermorl.rollouts`."""

from .trl_surface import check_trl_surface

check_trl_surface()

from .adpo import ThermoADPOConfig, ThermoADPOTrainer  # noqa: E402  (after the TRL check)
from .grpo import ThermoGRPOConfig, ThermoGRPOTrainer  # noqa: E402
from .reward_guard import RewardFunctionError  # noqa: E402

__all__ = ["RewardFunctionError", "ThermoADPOConfig", "ThermoADPOTrainer", "ThermoGRPOConfig", "ThermoGRPOTrainer"]
