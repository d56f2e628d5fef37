"""thermorl's trainers: thin subclasses of TRL's trainers that delegate to `thermorl.losses` and `thermorl.rollouts`."""

from .adpo import ThermoADPOConfig, ThermoADPOTrainer
from .grpo import ThermoGRPOConfig, ThermoGRPOTrainer
from .reward_guard import RewardFunctionError

__all__ = ["RewardFunctionError", "ThermoADPOConfig", "ThermoADPOTrainer", "ThermoGRPOConfig", "ThermoGRPOTrainer"]
