"""Chat tasks for a real pretrained chat model (e.g. `thermorl:smollm2-135m`): each prompt is one user message that
asks for the final answer within \\boxed{}, and a completion is scored by math-verify on its last \\boxed{} (think
blocks dropped), as the `math_verify` reward scores user data. The model may reason first; only the boxed answer
counts.

- `chat_arithmetic`: "What is 47 + 38? Put your final answer within \\boxed{}." A demo: SmolLM2-135M-Instruct
  solves about a quarter of two-digit sums greedily at the start and learns the format within minutes, mostly by
  answering directly, so its answers get shorter, not longer.
- `word_problems`: a story of `steps` operations on a count (buy packs, give away, find, give away half, double),
  whose answer needs lines of working: the task that methods shaping the sampling temperature along an answer
  (EAD) are compared on. SmolLM2-135M-Instruct works one step through in 20-160 tokens and solves 3 of 24
  greedily at the start; two steps it solves 0 of 24 (with or without halving and doubling), until it is warmed up
  on the task's worked solutions (`make_sft_dataset`, a line of arithmetic per operation; models/warmup.py).
- `chat_countdown`: "Using the numbers 3, 5 and 7, each exactly once, ... write an expression equal to 22." The
  boxed answer is an expression (×, ÷, \\times, \\cdot and a trailing "= 22" accepted), right when it uses each
  number once and equals the target, as `countdown` checks it; answers are not canonical (3*5+7 and 7+5*3 vote apart).
  Its start accuracy on SmolLM2-135M-Instruct is not measured yet.
"""

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from datasets import Dataset

from ..errors import UserError
from .base import Task
from .countdown import CountdownTask
from .expressions import evaluate
from .verify import final_answer, math_verify_equal, normalize_answer

BOXED_INSTRUCTION = "Put your final answer within \\boxed{}."
_SYMBOLS = {"+": "+", "-": "-", "*": "×"}


def _check_integer(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise UserError(f"{name} must be an integer {bounds}, got {value!r}")


def _check_letters(name: str, value, allowed: str) -> None:
    if not isinstance(value, str) or not value or set(value) - set(allowed):
        raise UserError(f"{name} must be a non-empty subset of {allowed!r}, got {value!r}")


@dataclass(frozen=True)
class ChatTask(Task):
    """A task whose prompts are chat messages and whose answers are a number in \\boxed{}."""

    checked_columns: ClassVar[tuple[str, ...]] = ("answer",)
    # Whether make_sft_dataset gives worked solutions to warm a chat model up on (`warmup_dataset`).
    worked_solutions: ClassVar[bool] = False

    def rows_dataset(self, rows: list[dict[str, Any]]) -> Dataset:
        # Prompts are generated, deduplicated and split as strings; the trainer gets them as a user message, which
        # TRL renders with the model's chat template.
        return Dataset.from_list([{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows])

    def make_sft_dataset(self, n, seed, exclude_prompts=()):
        raise UserError(f"task '{self.name}' is a chat task for pretrained chat models: it has no worked solutions "
                        "to warm up on")

    def is_correct(self, completion: str, row: Mapping[str, Any]) -> bool:
        answer = final_answer(completion)
        return answer is not None and math_verify_equal(str(row["answer"]), answer)

    def extract_answer(self, completion: str) -> str | None:
        answer = final_answer(completion)
        return None if answer is None else normalize_answer(answer)


@dataclass(frozen=True)
class ChatArithmeticTask(ChatTask):
    """Options: digits (most digits per operand), num_operands, ops (a subset of "+-*", standard precedence)."""

    digits: int = 2
    num_operands: int = 2
    ops: str = "+"

    name: ClassVar[str] = "chat_arithmetic"

    def __post_init__(self):
        _check_integer("digits", self.digits, 1)
        _check_integer("num_operands", self.num_operands, 2)
        _check_letters("ops", self.ops, "".join(_SYMBOLS))

    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        # Operands of `digits` digits (10-99 for two), so the problem is as hard as it says.
        low = 10 ** (self.digits - 1) if self.digits > 1 else 0
        operands = [rng.randrange(low, 10**self.digits) for _ in range(self.num_operands)]
        ops = [rng.choice(self.ops) for _ in operands[1:]]
        python = str(operands[0]) + "".join(f"{op}{value}" for op, value in zip(ops, operands[1:]))
        shown = str(operands[0]) + "".join(f" {_SYMBOLS[op]} {value}" for op, value in zip(ops, operands[1:]))
        value, _ = evaluate(python, self.ops)
        return {"prompt": f"What is {shown}? {BOXED_INSTRUCTION}", "answer": str(int(value))}


_OPERATIONS = "bfghd"
_NAMES = ("Mia", "Noah", "Ava", "Liam", "Emma", "Lucas", "Sofia", "Omar", "Chloe", "Ravi", "Hana", "Leo")
_PRONOUNS = {"Mia": "She", "Ava": "She", "Emma": "She", "Sofia": "She", "Chloe": "She", "Hana": "She"}
_ITEMS = ("stickers", "marbles", "apples", "pencils", "cards", "coins", "shells", "books")


@dataclass(frozen=True)
class WordProblemsTask(ChatTask):
    """Options: steps (operations after the starting count), max_start (largest starting count), operations (the
    kinds drawn from, as letters: b buy packs, f find, g give some away, h give away half, d double)."""

    steps: int = 3
    max_start: int = 60
    operations: str = "bfghd"

    name: ClassVar[str] = "word_problems"
    worked_solutions: ClassVar[bool] = True

    def __post_init__(self):
        _check_integer("steps", self.steps, 1, 8)
        _check_integer("max_start", self.max_start, 10)
        _check_letters("operations", self.operations, _OPERATIONS)

    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
        pronoun = _PRONOUNS.get(name, "He")
        possessive = "her" if pronoun == "She" else "his"
        count = rng.randint(10, self.max_start)
        sentences = [f"{name} has {count} {items}."]
        working = [f"{name} starts with {count} {items}."]  # the worked solution, one line per operation
        for _ in range(self.steps):
            # Each operation keeps the count a whole, positive number.
            allowed = {"b": True, "f": True, "g": count > 2, "h": count % 2 == 0, "d": count <= 60}
            operation = rng.choice([kind for kind in self.operations if allowed[kind]] or ["f"])
            if operation == "b":
                packs, size = rng.randint(2, 5), rng.randint(3, 12)
                sentences.append(f"{pronoun} buys {packs} packs of {size} {items} each.")
                working.append(f"{pronoun} buys {packs} packs of {size}, which is {packs} × {size} = {packs * size} "
                               f"{items}, so {count} + {packs * size} = {count + packs * size}.")
                count += packs * size
            elif operation == "f":
                found = rng.randint(2, 30)
                sentences.append(f"{pronoun} finds {found} more {items}.")
                working.append(f"{pronoun} finds {found} more: {count} + {found} = {count + found}.")
                count += found
            elif operation == "g":
                given = rng.randint(1, count - 1)
                sentences.append(f"{pronoun} gives {given} {items} to a friend.")
                working.append(f"{pronoun} gives away {given}: {count} - {given} = {count - given}.")
                count -= given
            elif operation == "h":
                sentences.append(f"{pronoun} gives away half of {possessive} {items}.")
                working.append(f"{pronoun} gives away half: {count} ÷ 2 = {count // 2}.")
                count //= 2
            else:
                sentences.append(f"{pronoun} doubles the number of {items} {pronoun.lower()} has.")
                working.append(f"{pronoun} doubles them: {count} × 2 = {count * 2}.")
                count *= 2
        question = f"How many {items} does {name} have now?"
        working.append(f"{name} has \\boxed{{{count}}} {items} now.")
        return {"prompt": " ".join([*sentences, question, BOXED_INSTRUCTION]), "answer": str(count),
                "solution": "\n".join(working)}

    def rows_dataset(self, rows: list[dict[str, Any]]) -> Dataset:
        # The worked solution is warm-up data (make_sft_dataset), not a column the trainer or a reward sees.
        return super().rows_dataset([{key: value for key, value in row.items() if key != "solution"} for row in rows])

    def make_sft_dataset(self, n, seed, exclude_prompts=()):
        """TRL conversational prompt-completion rows: the question as a user message, its worked solution (a line
        per operation, the answer in \\boxed{}) as the assistant's. A short SFT on these teaches a chat model the
        working this task needs (models/warmup.py, `warmup_dataset`)."""
        rows = self._distinct_rows(n, random.Random(seed), set(exclude_prompts))
        return Dataset.from_list([{"prompt": [{"role": "user", "content": row["prompt"]}],
                                   "completion": [{"role": "assistant", "content": row["solution"]}]}
                                  for row in rows])


# How chat models write the operators of an expression, and the plain ones `countdown` evaluates.
_OPERATOR_SPELLINGS = (("\\times", "*"), ("\\cdot", "*"), ("×", "*"), ("·", "*"), ("\\div", "/"), ("÷", "/"),
                       ("\\left(", "("), ("\\right)", ")"), ("$", ""))


@dataclass(frozen=True)
class ChatCountdownTask(ChatTask):
    """Options: num_numbers, max_number (numbers drawn from 1..max_number), max_target (targets in 0..max_target),
    division (allow ÷; the target stays an integer), as for `countdown`."""

    num_numbers: int = 3
    max_number: int = 9
    max_target: int = 100
    division: bool = False

    name: ClassVar[str] = "chat_countdown"
    checked_columns: ClassVar[tuple[str, ...]] = ("numbers", "target")
    uneven_prompts: ClassVar[bool] = True
    canonical_answers: ClassVar[bool] = False

    @property
    def countdown(self) -> CountdownTask:
        return CountdownTask(self.num_numbers, self.max_number, self.max_target, self.division)

    def __post_init__(self):
        _check_integer("num_numbers", self.num_numbers, 2)
        self.countdown  # noqa: B018  (the countdown options' own checks)

    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        row = self.countdown.sample_row(rng)
        numbers = [str(n) for n in row["numbers"]]
        listed = ", ".join(numbers[:-1]) + f" and {numbers[-1]}"
        operators = "+, -, × and ÷" if self.division else "+, - and ×"
        prompt = (f"Using the numbers {listed}, each exactly once, with {operators} and parentheses, write an "
                  f"expression equal to {row['target']}. {BOXED_INSTRUCTION}")
        return {"prompt": prompt, "answer": row["answer"], "numbers": row["numbers"], "target": row["target"]}

    def extract_answer(self, completion: str) -> str | None:
        """The boxed text in `countdown`'s notation: the operators as chat models write them mapped to plain ones,
        spaces dropped."""
        answer = final_answer(completion)
        if answer is None:
            return None
        for spelling, plain in _OPERATOR_SPELLINGS:
            answer = answer.replace(spelling, plain)
        return "".join(answer.split()) or None

    def is_correct(self, completion: str, row: Mapping[str, Any]) -> bool:
        answer = self.extract_answer(completion)
        if answer is None:
            return False
        # "expression = target", either way round, is the expression.
        sides = [side for side in answer.split("=") if side != str(row["target"])] if "=" in answer else [answer]
        return len(sides) == 1 and self.countdown.is_correct(sides[0], row)
