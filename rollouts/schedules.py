"""Per-position sampling temperature schedules for rollouts.

A schedule maps the position t of a completion token (t = 0 is the first completion token) and
the training step to the temperature used to sample that token. Temperature 0 means greedy.
The annealed schedule is EAD, "Let it Calm: Exploratory Annealed Decoding" (arXiv 2510.05251).
"""

import inspect
import math
from dataclasses import dataclass

import torch

from ..errors import UserError


def _check_number(name: str, value, minimum: float, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise UserError(f"{name} must be {relation} {minimum}, got {value!r}")


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an int >= {minimum}, got {value!r}")


class TemperatureSchedule:
    """Base class: `temperatures(positions, step)` gives one temperature per completion position."""

    def temperatures(self, positions: torch.LongTensor, step: int) -> torch.FloatTensor:
        """Float32 temperatures, same shape and device as `positions` (0 = first completion token)."""
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise ValueError(f"positions must be an integer tensor, got dtype {positions.dtype}")
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError(f"positions must be >= 0, got min {int(positions.min())}")
        _check_count("step", step, 0)
        return self._temperatures(positions.to(torch.float64), step).to(torch.float32)

    def _temperatures(self, positions: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantTemperature(TemperatureSchedule):
    """tau_t = value at every position; value 0.0 is greedy decoding."""

    value: float

    def __post_init__(self):
        _check_number("value", self.value, 0.0, strict=False)

    def _temperatures(self, positions, step):
        return torch.full_like(positions, float(self.value))


@dataclass(frozen=True)
class LinearTemperature(TemperatureSchedule):
    """tau_t = start + (end - start) * min(t / length, 1): start at t = 0, end from t = length on."""

    start: float
    end: float
    length: int

    def __post_init__(self):
        _check_number("start", self.start, 0.0, strict=False)
        _check_number("end", self.end, 0.0, strict=False)
        _check_count("length", self.length, 1)

    def _temperatures(self, positions, step):
        fraction = (positions / self.length).clamp(max=1.0)
        return self.start + (self.end - self.start) * fraction


@dataclass(frozen=True)
class AnnealedTemperature(TemperatureSchedule):
    """EAD annealing (arXiv 2510.05251): hot early in a response, cool late.

    tau_t = 1                                                  for t < warmup_tokens
    tau_t = max(1 + tau_max - exp(t / (horizon_scale * d_s)), tau_min)   otherwise
    d_s   = min(d0 + alpha * step, d_max)

    t counts from the first completion token (t = 0), not from the end of the warm-up, as in the
    authors' code (yangalan123/EAD-RLVR, decay_mode "negexp", which uses len(output_token_ids)).
    horizon_scale = 20 is that code; horizon_scale = 1 is the formula as printed in the paper.
    A larger d_s (later training step) decays more slowly, so the same position is hotter.
    """

    tau_max: float = 1.2
    tau_min: float = 0.1
    warmup_tokens: int = 10
    d0: float = 25.0
    alpha: float = 5.0
    d_max: float = 40000.0
    horizon_scale: float = 20.0

    def __post_init__(self):
        _check_number("tau_max", self.tau_max, 0.0, strict=True)
        _check_number("tau_min", self.tau_min, 0.0, strict=True)
        if self.tau_min > self.tau_max:
            raise UserError(f"tau_min ({self.tau_min}) must be <= tau_max ({self.tau_max})")
        _check_count("warmup_tokens", self.warmup_tokens, 0)
        _check_number("d0", self.d0, 0.0, strict=True)
        _check_number("alpha", self.alpha, 0.0, strict=False)
        _check_number("d_max", self.d_max, 0.0, strict=True)
        if self.d_max < self.d0:
            raise UserError(f"d_max ({self.d_max}) must be >= d0 ({self.d0})")
        _check_number("horizon_scale", self.horizon_scale, 0.0, strict=True)

    def horizon(self, step: int) -> float:
        """d_s = min(d0 + alpha * step, d_max)."""
        return min(self.d0 + self.alpha * step, self.d_max)

    def _annealed(self, positions, step):
        decayed = 1.0 + self.tau_max - torch.exp(positions / (self.horizon_scale * self.horizon(step)))
        return decayed.clamp(min=self.tau_min)

    def _temperatures(self, positions, step):
        in_warmup = positions < self.warmup_tokens
        return torch.where(in_warmup, 1.0, self._annealed(positions, step))


@dataclass(frozen=True)
class ReverseAnnealedTemperature(AnnealedTemperature):
    """Cold-to-hot mirror of AnnealedTemperature, for ablations.

    tau_t = 1 during the warm-up, then tau_min + tau_max - annealed_t, which rises from about
    tau_min to tau_max over the same horizon (annealed_t in [tau_min, tau_max] for t >= 0).
    """

    def _temperatures(self, positions, step):
        mirrored = self.tau_min + self.tau_max - self._annealed(positions, step)
        return torch.where(positions < self.warmup_tokens, 1.0, mirrored)


# The paper's schedule in units of the response length (see `annealed_for_length` and docs/ead.md "Sizing"):
# its code reaches tau_min at t = 20 * 25 * ln(2.1) ~ 371 tokens at step 0, which is 3/4 of a 500-token response,
# with 10 warm-up tokens (2% of it), and its horizon grows by alpha / d0 = 20% of d0 per step.
PAPER_RESPONSE_TOKENS = 500
PAPER_COOL_FRACTION = 20 * 25.0 * math.log(2.1) / PAPER_RESPONSE_TOKENS
PAPER_WARMUP_FRACTION = 10 / PAPER_RESPONSE_TOKENS
PAPER_HORIZON_GROWTH = 5.0 / 25.0
PAPER_HORIZON_CAP = 40000.0 / 25.0


def annealed_for_length(
    response_tokens: int,
    tau_max: float = 1.2,
    tau_min: float = 0.1,
    cool_fraction: float = PAPER_COOL_FRACTION,
    warmup_fraction: float = PAPER_WARMUP_FRACTION,
    horizon_growth: float = PAPER_HORIZON_GROWTH,
) -> AnnealedTemperature:
    """EAD sized to responses of about `response_tokens` tokens, keeping the paper's shape.

    At step 0 the temperature reaches tau_min at t = cool_fraction * response_tokens (the paper: ~371 of ~500
    tokens), the first round(warmup_fraction * response_tokens) tokens are sampled at 1 (the paper: 10), and the
    horizon d_s grows by horizon_growth * d0 per step (the paper: 5 / 25), capped at 1600 d0 (40000 / 25).
    horizon_growth = 0 keeps the step-0 schedule all run, for tasks whose responses do not lengthen.
    """
    _check_count("response_tokens", response_tokens, 1)
    _check_number("cool_fraction", cool_fraction, 0.0, strict=True)
    _check_number("warmup_fraction", warmup_fraction, 0.0, strict=False)
    _check_number("horizon_growth", horizon_growth, 0.0, strict=False)
    _check_number("tau_max", tau_max, 0.0, strict=True)
    _check_number("tau_min", tau_min, 0.0, strict=True)
    if tau_min >= 1 + tau_max:
        raise UserError(f"tau_min ({tau_min}) must be < 1 + tau_max ({1 + tau_max})")
    # 1 + tau_max - exp(t / d0) = tau_min at t = cool_fraction * response_tokens (horizon_scale 1).
    d0 = cool_fraction * response_tokens / math.log(1 + tau_max - tau_min)
    return AnnealedTemperature(
        tau_max=tau_max, tau_min=tau_min, warmup_tokens=round(warmup_fraction * response_tokens), d0=d0,
        alpha=horizon_growth * d0, d_max=PAPER_HORIZON_CAP * d0, horizon_scale=1.0,
    )


SCHEDULE_TYPES = {
    "constant": ConstantTemperature,
    "linear": LinearTemperature,
    "annealed": AnnealedTemperature,
    "reverse_annealed": ReverseAnnealedTemperature,
    "annealed_for_length": annealed_for_length,
}


def build_schedule(spec) -> TemperatureSchedule:
    """A schedule from a number (constant), a dict {"type": name, **arguments}, or a schedule."""
    if isinstance(spec, TemperatureSchedule):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantTemperature(float(spec))
    if not isinstance(spec, dict):
        raise UserError(f"temperature schedule spec must be a number or a dict, got {spec!r}")
    arguments = dict(spec)
    kind = arguments.pop("type", None)
    if kind not in SCHEDULE_TYPES:
        raise UserError(f"unknown temperature schedule type {kind!r}; expected one of {sorted(SCHEDULE_TYPES)}")
    schedule_class = SCHEDULE_TYPES[kind]
    accepted = set(inspect.signature(schedule_class).parameters)
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise UserError(f"unknown key(s) {unknown} for schedule type {kind!r}; accepted: {sorted(accepted)}")
    try:
        return schedule_class(**arguments)
    except TypeError as error:  # a required argument is missing
        raise UserError(f"schedule type {kind!r}: {error}") from None
