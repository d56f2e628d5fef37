"""One rule for reading a configured value as the kind its field or parameter declares: recipe fields
(thermorl/recipe.py) and loss parameters (losses/registry.py) both use it.

YAML 1.1 reads `3e-4` as the string '3e-4' and the command line gives every value as a string, so numeric strings
become numbers and 'true' / 'false' become booleans; anything else of the wrong kind raises `ValueKindError`,
which each caller words for its field. Core: importable by the library and the app alike.
"""

import math


class ValueKindError(ValueError):
    """`value` is not of the `expected` kind: 'number', 'integer', 'bool' or 'string'."""

    def __init__(self, value, expected: str):
        super().__init__(f"expected {expected}, got {value!r}")
        self.value, self.expected = value, expected


def to_number(value) -> float:
    """A float; NaN passes (the caller's range check says why it is refused)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueKindError(value, "number")
    return float(number)


def to_integer(value) -> int:
    try:
        number = to_number(value)
    except ValueKindError:
        raise ValueKindError(value, "integer") from None
    if not math.isfinite(number) or not number.is_integer():
        raise ValueKindError(value, "integer")
    return int(number)


def to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueKindError(value, "bool")


def to_string(value, numbers_as_text: bool) -> str:
    """A string; with `numbers_as_text` a number is read as its text (a recipe's `run_name: 2024`)."""
    if isinstance(value, str):
        return value
    if numbers_as_text and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueKindError(value, "string")
