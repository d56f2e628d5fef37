"""Integer arithmetic: prompt "47+38=", answer "85".

The completion must be the answer alone (surrounding whitespace allowed): a model that keeps
writing after the number ("85abc", "85\\n1+2=3") is wrong, which teaches it to stop, and so is
an expression ("47+38", "170/2"): echoing the prompt must not score.
"""

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UserError
from .base import Task
from .expressions import evaluate
from .verify import number_answer, math_verify_equal, normalize_answer

_SUPPORTED_OPS = "+-*"


@dataclass(frozen=True)
class ArithmeticTask(Task):
    """Options: digits (most digits per operand), num_operands, max_operands (each problem draws its number of
    operands uniformly from num_operands to max_operands: a mix of difficulties; default: num_operands), ops (a
    subset of "+-*", standard precedence), allow_negative (False redraws problems whose result is below zero)."""

    digits: int = 2
    num_operands: int = 2
    max_operands: int | None = None
    ops: str = "+-"
    allow_negative: bool = True

    name: ClassVar[str] = "arithmetic"
    checked_columns: ClassVar[tuple[str, ...]] = ("answer",)

    def __post_init__(self):
        if not isinstance(self.digits, int) or self.digits < 1:
            raise UserError(f"digits must be an integer >= 1, got {self.digits!r}")
        if not isinstance(self.num_operands, int) or self.num_operands < 2:
            raise UserError(f"num_operands must be an integer >= 2, got {self.num_operands!r}")
        if self.max_operands is not None and (not isinstance(self.max_operands, int)
                                              or self.max_operands < self.num_operands):
            raise UserError(f"max_operands must be an integer >= num_operands ({self.num_operands}), got "
                            f"{self.max_operands!r}")
        if not isinstance(self.ops, str) or not self.ops or set(self.ops) - set(_SUPPORTED_OPS):
            raise UserError(f"ops must be a non-empty subset of {_SUPPORTED_OPS!r}, got {self.ops!r}")

    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        while True:
            count = self.num_operands if self.max_operands is None else rng.randint(self.num_operands,
                                                                                    self.max_operands)
            operands = [str(rng.randrange(10**self.digits)) for _ in range(count)]
            expression = operands[0]
            for operand in operands[1:]:
                expression += rng.choice(self.ops) + operand
            value, _ = evaluate(expression, self.ops)
            if self.allow_negative or value >= 0:
                return {"prompt": f"{expression}=", "answer": str(int(value))}

    def is_correct(self, completion: str, row: Mapping[str, Any]) -> bool:
        answer = number_answer(completion)
        return answer is not None and math_verify_equal(str(row["answer"]), answer)

    def extract_answer(self, completion: str) -> str | None:
        answer = number_answer(completion)
        return None if answer is None else normalize_answer(answer)
