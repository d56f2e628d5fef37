"""Name -> policy-loss registry (verl's `register_policy_loss` pattern).

Every loss is called as `fn(per_token_logps, old_per_token_logps, advantages, completion_mask, **kwargs)`
and returns `(loss, metrics)`. Its keyword-only parameters are of two kinds: settings a user may choose
(they must have defaults: `loss_parameters`) and inputs the trainer supplies each step, declared at
registration (`loss_inputs`). A setting's type comes from its annotation and its valid range from the
registration, so `validate_loss_kwargs` refuses a bad value when the config is built, not at step 1.
"""

import inspect
import math
import types
import typing
from collections.abc import Callable

from ..errors import UserError
from .common import check_aggregation

# What every loss accepts from the trainer: tensors, and the aggregations' normalising constants.
COMMON_INPUTS = ("token_weights", "ref_per_token_logps", "max_completion_length", "tokens_per_micro_batch")

LOSSES: dict[str, Callable] = {}
_INPUTS: dict[str, tuple[str, ...]] = {}
_RANGES: dict[str, dict[str, str]] = {}
_CHECKS: dict[str, Callable[[dict], None] | None] = {}


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
    inputs: tuple[str, ...] = (),
    ranges: dict[str, str] | None = None,
    check: Callable[[dict], None] | None = None,
) -> Callable[[Callable], Callable]:
    """Register a loss under `name`.

    `inputs`: its extra keyword inputs supplied by the trainer. `ranges`: parameter -> interval such as '(0, inf)'
    or '[0, 1)'. `check`: called with all the loss's parameters (defaults filled in) to test how they combine;
    it raises ValueError.
    """

    def decorator(fn: Callable) -> Callable:
        if name in LOSSES:
            raise ValueError(f"Loss {name!r} is already registered")
        keywords = _keyword_parameters(fn)
        trainer_inputs = COMMON_INPUTS + tuple(inputs)
        missing = [key for key in trainer_inputs if key not in keywords]
        if missing:
            raise ValueError(f"Loss {name!r} declares inputs {missing} that are not keyword-only parameters")
        no_default = [
            key for key, p in keywords.items() if key not in trainer_inputs and p.default is inspect.Parameter.empty
        ]
        if no_default:
            raise ValueError(f"Loss {name!r}: user-settable parameters {no_default} need defaults")
        unknown = [key for key in ranges or {} if key not in keywords or key in trainer_inputs]
        if unknown:
            raise ValueError(f"Loss {name!r} gives ranges for {unknown}, which are not its parameters")
        for interval in (ranges or {}).values():
            _parse_range(interval)
        LOSSES[name] = fn
        _INPUTS[name] = trainer_inputs
        _RANGES[name] = dict(ranges or {})
        _CHECKS[name] = check
        return fn

    return decorator


def get_loss(name: str) -> Callable:
    if name not in LOSSES:
        raise UserError(f"Unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def loss_inputs(name: str) -> tuple[str, ...]:
    """Keyword inputs the trainer supplies to loss `name` (tensors, group size, ...)."""
    get_loss(name)
    return _INPUTS[name]


def loss_parameters(name: str) -> dict[str, object]:
    """The user-settable keyword parameters of loss `name` with their defaults."""
    inputs = loss_inputs(name)
    return {key: p.default for key, p in _keyword_parameters(get_loss(name)).items() if key not in inputs}


def _coerce(name: str, key: str, value, annotation):
    """`value` as the parameter's annotated type: float, int, bool or str (optionally None). YAML reads `3e-4` as
    the string '3e-4', so numeric strings become numbers; anything else of the wrong type is refused."""
    allowed = set(typing.get_args(annotation)) if isinstance(annotation, types.UnionType) else {annotation}
    if value is None and type(None) in allowed:
        return None
    where = f"Loss {name!r}: parameter {key!r}"
    if float in allowed or int in allowed:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        if math.isnan(number):
            raise UserError(f"{where} must be a number, got NaN")
        if float not in allowed:
            if number != int(number):
                raise UserError(f"{where} must be an integer, got {value!r}")
            return int(number)
        return float(number)
    for kind in (bool, str):
        if kind in allowed:
            if not isinstance(value, kind):
                raise UserError(f"{where} must be a {kind.__name__}, got {value!r} ({type(value).__name__})")
            return value
    return value  # tensors and other objects a caller passes in code


def validate_loss_kwargs(name: str, kwargs: dict) -> dict:
    """The loss's parameters checked and coerced (numeric strings -> numbers); ValueError naming the loss and the
    parameter for an unknown key, a wrong type, a value outside its range, or an unknown aggregation."""
    valid = loss_parameters(name)
    unknown = [key for key in kwargs if key not in valid]
    if unknown:
        raise UserError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; valid: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(get_loss(name))
    coerced = {key: _coerce(name, key, value, hints.get(key)) for key, value in kwargs.items()}
    if "aggregation" in coerced:
        check_aggregation(coerced["aggregation"])
    params = {**valid, **coerced}
    for key, interval in _RANGES[name].items():
        value = params[key]
        if value is None:
            continue
        low, high, low_inclusive, high_inclusive = _parse_range(interval)
        above = value >= low if low_inclusive else value > low
        below = value <= high if high_inclusive else value < high
        if not (above and below):
            raise UserError(f"Loss {name!r}: parameter {key!r} must lie in {interval}, got {value}")
    if _CHECKS[name] is not None:
        try:
            _CHECKS[name](params)
        except ValueError as error:
            raise UserError(f"Loss {name!r}: {error}") from None
    return coerced
