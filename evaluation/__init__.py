"""Multi-temperature test-time-scaling evaluation (arXiv 2510.02611): pass@k, maj@k, Pass@All, early-exit voting."""

from .callback import MultiTemperatureEvalCallback
from .metrics import best_single_temperature, maj_at_k, majority_vote, pass_at_all, pass_at_k
from .model_loading import load_policy
from .pipeline import (
    DEFAULT_TEMPERATURES,
    RewardVerifier,
    TaskVerifier,
    Verifier,
    evaluate,
    parse_temperatures,
    vote,
)
from .voting import RecordedAnswers, VoteResult, multi_temperature_vote

__all__ = [
    "DEFAULT_TEMPERATURES",
    "MultiTemperatureEvalCallback",
    "RecordedAnswers",
    "RewardVerifier",
    "TaskVerifier",
    "Verifier",
    "VoteResult",
    "best_single_temperature",
    "evaluate",
    "load_policy",
    "maj_at_k",
    "majority_vote",
    "multi_temperature_vote",
    "parse_temperatures",
    "pass_at_all",
    "pass_at_k",
    "vote",
]
