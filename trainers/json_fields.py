"""Config fields that hold a dict or a list: a recipe gives them as YAML values, a command line (TRL's
HfArgumentParser) as a JSON string."""

from __future__ import annotations

import json

from ..errors import UserError


def json_field(name: str, value, expected: str):
    """`value` itself, or the value its JSON string spells; `expected` says what the field takes, for the error."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise UserError(f"{name} must be {expected}, got {value!r}: {error}") from None
