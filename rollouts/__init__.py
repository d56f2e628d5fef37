"""Rollout-time sampling: per-position temperature schedules (EAD) and their `generate` processor."""

from .schedules import (
    AnnealedTemperature,
    ConstantTemperature,
    LinearTemperature,
    ReverseAnnealedTemperature,
    TemperatureSchedule,
    build_schedule,
)
from .temperature_processor import ScheduledTemperatureProcessor, check_generation_config

__all__ = [
    "AnnealedTemperature",
    "ConstantTemperature",
    "LinearTemperature",
    "ReverseAnnealedTemperature",
    "ScheduledTemperatureProcessor",
    "TemperatureSchedule",
    "build_schedule",
    "check_generation_config",
]
