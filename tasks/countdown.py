"""Countdown: reach the target with each given number exactly once.

Prompt "3 5 7>22:" (numbers sorted, then ">" and the target); any expression over those numbers
with the allowed operators and parentheses whose exact value is the target is correct, e.g.
"3*5+7" or "7+5*3". Instances are built from a random expression, so every one is solvable and
the `answer` column holds that expression.
"""

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UserError
from .base import Task
from .expressions import PRECEDENCE, InvalidExpression, evaluate

# Redraws of one instance before concluding that the options admit (almost) no valid target.
_MAX_DRAWS = 1000


@dataclass(frozen=True)
class CountdownTask(Task):
    """Options: num_numbers, max_number (numbers are drawn from 1..max_number), max_target
    (targets lie in 0..max_target), division (allow "/"; the target must still be an integer)."""

    num_numbers: int = 3
    max_number: int = 9
    max_target: int = 100
    division: bool = False

    name: ClassVar[str] = "countdown"
    checked_columns: ClassVar[tuple[str, ...]] = ("numbers", "target")
    uneven_prompts: ClassVar[bool] = True  # a prompt is made from a random solution
    canonical_answers: ClassVar[bool] = False  # equivalent expressions vote apart

    def __post_init__(self):
        for option in ("num_numbers", "max_number", "max_target"):
            value = getattr(self, option)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{option} must be an integer >= 1, got {value!r}")

    @property
    def ops(self) -> str:
        return "+-*/" if self.division else "+-*"

    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        for _ in range(_MAX_DRAWS):
            numbers = [rng.randint(1, self.max_number) for _ in range(self.num_numbers)]
            expression, _ = self._random_expression(numbers, rng)
            try:
                value, _ = evaluate(expression, self.ops)
            except ZeroDivisionError:
                continue
            if value.denominator == 1 and 0 <= value <= self.max_target:
                target = int(value)
                prompt = " ".join(map(str, sorted(numbers))) + f">{target}:"
                return {"prompt": prompt, "answer": expression, "numbers": sorted(numbers), "target": target}
        raise UserError(f"{self!r} found no target in 0..{self.max_target} in {_MAX_DRAWS} draws")

    def _random_expression(self, numbers: list[int], rng: random.Random) -> tuple[str, int]:
        """A random binary tree over the numbers in random order, printed with the fewest
        parentheses; returns the text and the precedence of its top operator (3 for a number)."""
        if len(numbers) == 1:
            return str(numbers[0]), 3
        numbers = rng.sample(numbers, len(numbers))
        split = rng.randint(1, len(numbers) - 1)
        left, left_precedence = self._random_expression(numbers[:split], rng)
        right, right_precedence = self._random_expression(numbers[split:], rng)
        op = rng.choice(self.ops)
        precedence = PRECEDENCE[op]
        if left_precedence < precedence:
            left = f"({left})"
        # a-(b+c) and a/(b*c) need their parentheses; a+(b-c) and a*(b/c) do not.
        if right_precedence < precedence or (right_precedence == precedence and op in "-/"):
            right = f"({right})"
        return f"{left}{op}{right}", precedence

    def is_correct(self, completion: str, row: Mapping[str, Any]) -> bool:
        try:
            value, used = evaluate(completion, self.ops)
        except (InvalidExpression, ZeroDivisionError):
            return False
        return Counter(used) == Counter(row["numbers"]) and value == row["target"]

    def extract_answer(self, completion: str) -> str | None:
        """The expression without spaces: equivalent solutions written differently vote apart."""
        try:
            evaluate(completion, self.ops)
        except (InvalidExpression, ZeroDivisionError):
            return None
        return "".join(completion.split())
