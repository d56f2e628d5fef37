"""Name -> policy-loss registry (verl's `register_policy_loss` pattern).

Every loss is called as `fn(per_token_logps, old_per_token_logps, advantages, completion_mask, **kwargs)`
and returns `(loss, metrics)`. Its keyword-only parameters are of two kinds: settings a user may choose
(they must have defaults: `loss_parameters`) and inputs the trainer supplies each step, declared at
registration (`loss_inputs`).
"""

import inspect
from collections.abc import Callable

from .common import check_aggregation

# Tensors every loss accepts from the trainer.
COMMON_INPUTS = ("token_weights", "ref_per_token_logps")

LOSSES: dict[str, Callable] = {}
_INPUTS: dict[str, tuple[str, ...]] = {}


def _keyword_parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    return {
        name: param
        for name, param in inspect.signature(fn).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def register_loss(name: str, *, inputs: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register a loss under `name`; `inputs` names its extra keyword inputs supplied by the trainer."""

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
        LOSSES[name] = fn
        _INPUTS[name] = trainer_inputs
        return fn

    return decorator


def get_loss(name: str) -> Callable:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def loss_inputs(name: str) -> tuple[str, ...]:
    """Keyword inputs the trainer supplies to loss `name` (tensors, group size, ...)."""
    get_loss(name)
    return _INPUTS[name]


def loss_parameters(name: str) -> dict[str, object]:
    """The user-settable keyword parameters of loss `name` with their defaults."""
    inputs = loss_inputs(name)
    return {key: p.default for key, p in _keyword_parameters(get_loss(name)).items() if key not in inputs}


def validate_loss_kwargs(name: str, kwargs: dict) -> None:
    """Raise ValueError for a key that loss `name` does not take, or an unknown aggregation."""
    valid = loss_parameters(name)
    unknown = [key for key in kwargs if key not in valid]
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; valid: {', '.join(valid)}"
        )
    if "aggregation" in kwargs:
        check_aggregation(kwargs["aggregation"])
