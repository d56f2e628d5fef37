"""Rollout-time sampling: per-position temperature schedules (EAD) and their `generate` processor; variance-aware
prompt sampling (VAS): the prompt scores and the sampler."""

from .schedules import (
    AnnealedTemperature,
    ConstantTemperature,
    LinearTemperature,
    ReverseAnnealedTemperature,
    TemperatureSchedule,
    build_schedule,
)
from .temperature_processor import ScheduledTemperatureProcessor, check_generation_config
from .vas import VarianceAwareSampler
from .vas_scores import (
    DIVERSITY_MEASURES,
    distinct_n,
    inverse_self_bleu,
    mean_edit_distance,
    outcome_variance,
    trajectory_diversity,
    variance_promotion_score,
)

__all__ = [
    "DIVERSITY_MEASURES",
    "AnnealedTemperature",
    "ConstantTemperature",
    "LinearTemperature",
    "ReverseAnnealedTemperature",
    "ScheduledTemperatureProcessor",
    "TemperatureSchedule",
    "VarianceAwareSampler",
    "build_schedule",
    "check_generation_config",
    "distinct_n",
    "inverse_self_bleu",
    "mean_edit_distance",
    "outcome_variance",
    "trajectory_diversity",
    "variance_promotion_score",
]
