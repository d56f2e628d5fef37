"""Name -> policy-loss registry (verl's `register_policy_loss` pattern), and the one function that reduces.

A registered loss is called as `fn(per_token_logps, old_per_token_logps, advantages, completion_mask, **kwargs)`
and returns its terms: `PolicyTerms` (per-token policy terms and the importance ratio) or, registered with
`group_level=True`, `GroupPolicyTerms` (one term per group). `policy_loss(name, ...)` turns them into the scalar
the same way for every loss, as verl's `agg_loss` does: token weights, the beta * k3 KL penalty (bias-corrected
by the ratio with `kl_bias_correction`), and the aggregation over tokens.

A loss's keyword-only parameters are of two kinds: settings a user may choose (they must have defaults:
`loss_parameters`, which adds the reduction's settings) and inputs the trainer supplies each step, declared at
registration (`loss_inputs`). A setting's type comes from its annotation and its valid range from the
registration, so `validate_loss_kwargs` refuses a bad value when the config is built, not at step 1.
"""

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..values import ValueKindError, to_bool, to_integer, to_number, to_string
from .common import GroupPolicyTerms, PolicyTerms, aggregate, check_aggregation, k3_kl, masked_mean

# What the trainer supplies to every loss and `policy_loss` consumes: token weights (EAD's TIS and TRL's masks),
# the reference log-probs for the KL term, and the aggregations' normalising constants.
REDUCTION_INPUTS = ("token_weights", "ref_per_token_logps", "max_completion_length", "tokens_per_micro_batch")


@dataclass(frozen=True)
class _Registration:
    fn: Callable
    inputs: tuple[str, ...]
    ranges: dict[str, str]
    check: Callable[[dict], None] | None
    aggregation: str
    group_level: bool

    def reduction_settings(self) -> tuple[dict[str, object], dict[str, object]]:
        """The reduction's user settings with this loss's defaults, as (listed before, listed after) its own."""
        # A group-level loss has no per-token ratio to correct the KL term with.
        after = {} if self.group_level else {"kl_bias_correction": False}
        return {"beta": 0.0, "aggregation": self.aggregation}, after


REDUCTION_TYPES = {"beta": float, "aggregation": str, "kl_bias_correction": bool}

LOSSES: dict[str, Callable] = {}
_REGISTRATIONS: dict[str, _Registration] = {}


def _keyword_parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    return {
        name: param
        for name, param in inspect.signature(fn).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _parse_range(interval: str) -> tuple[float, float, bool, bool]:
    """'(0, inf)' / '[0, 1)' -> (low, high, low_inclusive, high_inclusive)."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    return low, high, interval[0] == "[", interval[-1] == "]"


def register_loss(
    name: str,
    *,
    aggregation: str = "seq_mean_token_mean",
    group_level: bool = False,
    inputs: tuple[str, ...] = (),
    ranges: dict[str, str] | None = None,
    check: Callable[[dict], None] | None = None,
) -> Callable[[Callable], Callable]:
    """Register a loss under `name`.

    `aggregation`: its default aggregation. `group_level`: it returns `GroupPolicyTerms` (and weighs tokens itself:
    declare `token_weights` among its inputs). `inputs`: the keyword inputs it needs from the trainer. `ranges`:
    parameter -> interval such as '(0, inf)' or '[0, 1)'. `check`: called with all the loss's parameters (defaults
    filled in) to test how they combine; it raises ValueError.
    """
    check_aggregation(aggregation)

    def decorator(fn: Callable) -> Callable:
        if name in LOSSES:
            raise ValueError(f"Loss {name!r} is already registered")
        keywords = _keyword_parameters(fn)
        missing = [key for key in inputs if key not in keywords]
        if missing:
            raise ValueError(f"Loss {name!r} declares inputs {missing} that are not keyword-only parameters")
        reduction = [
            key for key in keywords if key in REDUCTION_TYPES or (key in REDUCTION_INPUTS and key not in inputs)
        ]
        if reduction:
            raise ValueError(f"Loss {name!r}: {reduction} belong to policy_loss's reduction, not to the loss")
        if not group_level and "token_weights" in inputs:
            raise ValueError(f"Loss {name!r}: policy_loss weighs a token-level loss's terms; it takes no token_weights")
        no_default = [key for key, p in keywords.items() if key not in inputs and p.default is inspect.Parameter.empty]
        if no_default:
            raise ValueError(f"Loss {name!r}: user-settable parameters {no_default} need defaults")
        unknown = [key for key in ranges or {} if key not in keywords or key in inputs]
        if unknown:
            raise ValueError(f"Loss {name!r} gives ranges for {unknown}, which are not its parameters")
        for interval in (ranges or {}).values():
            _parse_range(interval)
        LOSSES[name] = fn
        _REGISTRATIONS[name] = _Registration(fn, tuple(inputs), dict(ranges or {}), check, aggregation, group_level)
        return fn

    return decorator


def _registration(name: str) -> _Registration:
    if name not in LOSSES:
        raise UserError(f"Unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return _REGISTRATIONS[name]


def get_loss(name: str) -> Callable:
    """Loss `name` as the trainer calls it: `policy_loss` with the name bound, returning (loss, metrics)."""
    _registration(name)
    return functools.partial(policy_loss, name)


def loss_inputs(name: str) -> tuple[str, ...]:
    """Keyword inputs the trainer supplies to loss `name` (tensors, group size, aggregation constants, ...)."""
    return REDUCTION_INPUTS + tuple(key for key in _registration(name).inputs if key not in REDUCTION_INPUTS)


def loss_parameters(name: str) -> dict[str, object]:
    """The user-settable keyword parameters of loss `name` with their defaults, the reduction's included."""
    registration = _registration(name)
    before, after = registration.reduction_settings()
    own = {
        key: p.default
        for key, p in _keyword_parameters(registration.fn).items()
        if key not in registration.inputs
    }
    return {**before, **own, **after}


def ratio_metrics(ratio: torch.Tensor, completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far the policy has moved from the one that sampled: mean |log r| over the completion tokens, and the
    batch's smallest and largest r ((B, 1) per-sequence ratios count once per sequence). All 0 / 1 / 1 on the first
    update after a rollout; they grow with staleness (steps_per_generation, num_iterations). None for zero-width
    completions; NaN when no token is masked in (the trainer's QueuedMetrics leaves NaN out). Masked reductions, not boolean indexing: this runs on every micro-batch, and indexing by a mask waits
    for the device to learn its size."""
    ratio = ratio.detach()
    per_sequence = ratio.shape[-1] == 1 and completion_mask.shape[-1] != 1
    mask = (completion_mask.sum(-1, keepdim=True) > 0) if per_sequence else completion_mask.bool()
    if completion_mask.numel() == 0:  # zero-width completions: nothing to measure (known from the shape, no device wait)
        return {}
    ratio = ratio.expand(mask.shape)
    nothing = torch.full((), float("nan"), dtype=ratio.dtype, device=ratio.device)
    some = mask.any()
    return {
        "ratio/abs_log_mean": torch.where(some, masked_mean(ratio.log().abs(), mask), nothing),
        "ratio/min": torch.where(some, ratio.masked_fill(~mask, float("inf")).min(), nothing),
        "ratio/max": torch.where(some, ratio.masked_fill(~mask, float("-inf")).max(), nothing),
    }


def policy_loss(
    name: str,
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    token_weights: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    tokens_per_micro_batch: float | torch.Tensor | None = None,
    beta: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss `name`'s scalar and metrics: its terms, weighted by `token_weights` (detached), plus beta times the k3
    KL to the reference (times the ratio with `kl_bias_correction`: DeepSeek-V3.2's bias-corrected KL, arXiv
    2512.02556, TRL's `use_bias_correction_kl`), aggregated over tokens by `aggregation`.

    A group-level loss's terms are averaged over groups and its KL term aggregated alone (all groups are of equal
    size, so this is each group's loss plus beta times the aggregated KL of its sequences). The logged "kl" is the
    corrected one, as in TRL.
    """
    registration = _registration(name)
    aggregation = kwargs.pop("aggregation", registration.aggregation)
    kl_bias_correction = False if registration.group_level else kwargs.pop("kl_bias_correction", False)
    check_aggregation(aggregation)
    if beta != 0.0 and ref_per_token_logps is None:
        raise ValueError(f"beta={beta} needs ref_per_token_logps (the reference model's per-token log-probs)")
    constants = {"max_completion_length": max_completion_length, "tokens_per_micro_batch": tokens_per_micro_batch}
    # the reduction's inputs a loss declared it needs too (a group-level loss weighs its own terms)
    declared = {"token_weights": token_weights, **constants}
    kwargs.update({key: value for key, value in declared.items() if key in registration.inputs})
    terms = registration.fn(per_token_logps, old_per_token_logps, advantages, completion_mask, **kwargs)

    per_token_kl = None
    if beta != 0.0:
        per_token_kl = k3_kl(per_token_logps, ref_per_token_logps)
        if kl_bias_correction:
            per_token_kl = per_token_kl * terms.ratio
    metrics = {} if per_token_kl is None else {"kl": masked_mean(per_token_kl.detach(), completion_mask).detach()}
    metrics.update(terms.metrics)

    if isinstance(terms, GroupPolicyTerms):
        loss = terms.per_group_loss.mean()
        if per_token_kl is not None:
            loss = loss + beta * aggregate(per_token_kl, completion_mask, aggregation, **constants)
        return loss, metrics
    if not isinstance(terms, PolicyTerms):
        raise TypeError(f"Loss {name!r} returned {type(terms).__name__}, not PolicyTerms or GroupPolicyTerms")
    metrics.update(ratio_metrics(terms.ratio, completion_mask))
    per_token_loss = terms.per_token_loss
    if token_weights is not None:
        per_token_loss = per_token_loss * token_weights.detach()
    if per_token_kl is not None:
        per_token_loss = per_token_loss + beta * per_token_kl
    return aggregate(per_token_loss, completion_mask, aggregation, **constants), metrics


_READERS = {float: to_number, int: to_integer, bool: to_bool, str: lambda value: to_string(value, False)}
_KIND_WORDS = {"number": "a number", "integer": "an integer", "bool": "a bool", "string": "a str"}


def _coerce(name: str, key: str, value, annotation):
    """`value` as the parameter's annotated type (float, int, bool or str, optionally None), read by
    thermorl.values's rule; tensors and other objects a caller passes in code are left alone."""
    allowed = set(typing.get_args(annotation)) if isinstance(annotation, types.UnionType) else {annotation}
    if value is None and type(None) in allowed:
        return None
    kind = next((kind for kind in (float, int, bool, str) if kind in allowed), None)
    if kind is None:
        return value
    where = f"Loss {name!r}: parameter {key!r}"
    try:
        read = _READERS[kind](value)
    except ValueKindError as error:
        got = f"{value!r}" + ("" if kind is int else f" ({type(value).__name__})")
        raise UserError(f"{where} must be {_KIND_WORDS[error.expected]}, got {got}") from None
    if kind is float and math.isnan(read):
        raise UserError(f"{where} must be a number, got NaN")
    return read


def validate_loss_kwargs(name: str, kwargs: dict) -> dict:
    """The loss's parameters checked and coerced (numeric strings -> numbers); ValueError naming the loss and the
    parameter for an unknown key, a wrong type, a value outside its range, or an unknown aggregation."""
    valid = loss_parameters(name)
    unknown = [key for key in kwargs if key not in valid]
    if unknown:
        raise UserError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; valid: {', '.join(valid)}"
        )
    hints = {**typing.get_type_hints(_registration(name).fn), **REDUCTION_TYPES}
    coerced = {key: _coerce(name, key, value, hints.get(key)) for key, value in kwargs.items()}
    if "aggregation" in coerced:
        check_aggregation(coerced["aggregation"])
    params = {**valid, **coerced}
    registration = _registration(name)
    for key, interval in registration.ranges.items():
        value = params[key]
        if value is None:
            continue
        low, high, low_inclusive, high_inclusive = _parse_range(interval)
        above = value >= low if low_inclusive else value > low
        below = value <= high if high_inclusive else value < high
        if not (above and below):
            raise UserError(f"Loss {name!r}: parameter {key!r} must lie in {interval}, got {value}")
    if registration.check is not None:
        try:
            registration.check(params)
        except ValueError as error:
            raise UserError(f"Loss {name!r}: {error}") from None
    return coerced
