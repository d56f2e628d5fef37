"""Countdown written as steps: a short reasoning trace with a choice phase and an execution phase.

Prompt "1 4 5 7>9:" (numbers sorted, then ">" and the target). The completion combines two of the numbers still
available per step, "a+b=r" or "a-b=r" (a >= b, so every result is a non-negative integer), the result replacing
them, until one number is left, which must be the target; steps are separated by commas:
"7-5=2,4*..." is wrong (only + and -), "7-5=2,2+4=6,6+1=7" is wrong for target 9, "7-4=3,5+1=6,6+3=9" is right.
The verifier checks every step: each operand must still be available, each written result must be exact, and all
numbers must be used (n - 1 steps). Every instance is built from a random trace, so every one is solvable.

Why this shape: with 4 numbers the trace is ~18 characters (one token each for the tiny model), the first steps
are a choice (which pair to combine: many lead nowhere, so sampling diversity pays) and each step's arithmetic
is an execution (one wrong digit fails the trace, so precision pays). Prompts differ in how many first moves
lead to a solution, which spreads their difficulty.

The SFT data (`make_sft_dataset`) teaches execution but not the choice: the first n - 2 steps are random valid
steps and the last step reaches the target whenever the two remaining numbers can. A policy that has learnt it
solves ~36% of 4-number prompts (numbers 1-9) at random; RL's job is to learn the first moves.
"""

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from datasets import Dataset

from ..errors import UserError
from .base import Task

_STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)")
# Redraws of one SFT row whose prompt is excluded (held out) before giving up.
_MAX_DRAWS = 1000


def _random_step(numbers: list[int], rng: random.Random) -> tuple[str, list[int]]:
    """One uniformly drawn valid step over `numbers`: (text "a+b=r", the numbers after it)."""
    i, j = rng.sample(range(len(numbers)), 2)
    a, b = numbers[i], numbers[j]
    rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
    if a >= b and rng.random() < 0.5:
        return f"{a}-{b}={a - b}", [*rest, a - b]
    return f"{a}+{b}={a + b}", [*rest, a + b]


def _final_step(a: int, b: int, target: int, rng: random.Random) -> str:
    """The last step over two numbers: one that reaches the target if any does, else a random valid one."""
    big, small = max(a, b), min(a, b)
    hits = [f"{x}+{y}={x + y}" for x, y in ((a, b), (b, a)) if x + y == target]
    hits += [f"{big}-{small}={target}"] if big - small == target else []
    if hits:
        return rng.choice(hits)
    return _random_step([a, b], rng)[0]


@dataclass(frozen=True)
class CountdownStepsTask(Task):
    """Options: num_numbers (>= 3: at least one choice step before the last), max_number (numbers are drawn from
    1..max_number)."""

    num_numbers: int = 4
    max_number: int = 9

    name: ClassVar[str] = "countdown_steps"
    checked_columns: ClassVar[tuple[str, ...]] = ("numbers", "target")
    uneven_prompts: ClassVar[bool] = True  # a prompt is made from a random solution
    canonical_answers: ClassVar[bool] = False  # every correct trace is its own answer

    def __post_init__(self):
        if isinstance(self.num_numbers, bool) or not isinstance(self.num_numbers, int) or self.num_numbers < 3:
            raise UserError(f"num_numbers must be an integer >= 3, got {self.num_numbers!r}")
        if isinstance(self.max_number, bool) or not isinstance(self.max_number, int) or self.max_number < 1:
            raise UserError(f"max_number must be an integer >= 1, got {self.max_number!r}")

    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        numbers = sorted(rng.randint(1, self.max_number) for _ in range(self.num_numbers))
        steps, remaining = [], list(numbers)
        while len(remaining) > 1:
            step, remaining = _random_step(remaining, rng)
            steps.append(step)
        target = remaining[0]
        prompt = " ".join(map(str, numbers)) + f">{target}:"
        return {"prompt": prompt, "answer": ",".join(steps), "numbers": numbers, "target": target}

    def sft_trace(self, numbers: list[int], target: int, rng: random.Random) -> str:
        """Random first steps, then a last step that reaches the target whenever the two numbers left can."""
        steps, remaining = [], list(numbers)
        while len(remaining) > 2:
            step, remaining = _random_step(remaining, rng)
            steps.append(step)
        steps.append(_final_step(*remaining, target, rng))
        return ",".join(steps)

    def make_sft_dataset(self, n: int, seed: int, exclude_prompts: Iterable[str] = ()) -> Dataset:
        """n prompt-completion rows of `sft_trace`s. Prompts may repeat (each with a fresh random trace): the task
        has only a few thousand distinct prompts, and execution needs more examples than that."""
        if not isinstance(n, int) or n < 1:
            raise UserError(f"number of rows must be a positive integer, got {n!r}")
        rng, excluded = random.Random(seed), set(exclude_prompts)
        rows = []
        for _ in range(n):
            for _ in range(_MAX_DRAWS):
                row = self.sample_row(rng)
                if row["prompt"] not in excluded:
                    break
            else:
                raise UserError(f"task {self!r}: every prompt drawn is excluded; hold out fewer prompts")
            rows.append({"prompt": row["prompt"], "completion": self.sft_trace(row["numbers"], row["target"], rng)})
        return Dataset.from_list(rows)

    def check_trace(self, completion: str, numbers: list[int]) -> int | None:
        """The number a trace ends with if every step is well-formed and exact over `numbers`, else None."""
        text = completion.strip()
        if not text:
            return None
        remaining = list(numbers)
        for step in text.split(","):
            match = _STEP.fullmatch(step)
            if match is None:
                return None
            a, op, b, written = int(match[1]), match[2], int(match[3]), int(match[4])
            for operand in (a, b):
                if operand not in remaining:
                    return None
                remaining.remove(operand)
            if written != (a + b if op == "+" else a - b):
                return None
            remaining.append(written)
        return remaining[0] if len(remaining) == 1 else None

    def is_correct(self, completion: str, row: Mapping[str, Any]) -> bool:
        return self.check_trace(completion, list(row["numbers"])) == row["target"]

    def outcome(self, completion: str, row: Mapping[str, Any]) -> str:
        """Where a trace went wrong: "correct"; "malformed" (a step not well-formed or not exact, an arithmetic slip
        included, an operand not available, or the wrong number of steps); "dead end" (the first steps left two
        numbers that cannot make the target: a choice-phase failure); "missed" (they could, and the last step, exact,
        took the other operation)."""
        end = self.check_trace(completion, list(row["numbers"]))
        if end is None:
            return "malformed"
        if end == row["target"]:
            return "correct"
        remaining = list(row["numbers"])
        for step in completion.strip().split(",")[:-1]:
            a, _, b, written = _STEP.fullmatch(step).groups()
            remaining.remove(int(a))
            remaining.remove(int(b))
            remaining.append(int(written))
        big, small = max(remaining), min(remaining)
        return "missed" if row["target"] in (big + small, big - small) else "dead end"

    def extract_answer(self, completion: str) -> str | None:
        """The trace without surrounding spaces if it is a well-formed sequence of steps, else None: every correct
        trace ends at the target, so voting on the final number would tell nothing apart."""
        text = completion.strip()
        if not text or not all(_STEP.fullmatch(step) for step in text.split(",")):
            return None
        return text
