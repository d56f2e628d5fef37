"""The Task interface: seeded generation of short verifiable problems and their checker.

A task generates rows {"prompt", "answer", ...task columns} from a `random.Random`; the prompts
of one dataset are distinct, and `make_splits` keeps held-out prompts out of the training set.
"""

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from datasets import Dataset

from ..errors import UserError


# Rows drawn per requested row before giving up: a task too small for the request (e.g. one-digit
# sums) would otherwise loop forever looking for new prompts.
_DRAWS_PER_ROW = 50


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a plain string, or the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    return ""


@dataclass(frozen=True)
class Task(ABC):
    name: ClassVar[str]
    # Dataset columns that `is_correct` reads from a row, besides the completion.
    checked_columns: ClassVar[tuple[str, ...]]
    # True when `sample_row` makes some prompts likelier than others (the countdown tasks build a prompt from a
    # random solution, so a prompt with many solutions, an easy one, comes up more often): see `make_splits`.
    uneven_prompts: ClassVar[bool] = False
    # True when every correct completion extracts to the same answer (arithmetic: the number), so that a majority
    # vote over samples and its early exit measure agreement on the answer. False when a problem has many correct
    # answers that vote apart (a countdown expression or trace): there the votes split over correct answers and
    # vote-based metrics say nothing about the method; `thermorl bench` reports them as not applicable.
    canonical_answers: ClassVar[bool] = True

    @abstractmethod
    def sample_row(self, rng: random.Random) -> dict[str, Any]:
        """One random problem: {"prompt": str, "answer": str, ...task columns}."""

    @abstractmethod
    def is_correct(self, completion: str, row: Mapping[str, Any]) -> bool:
        """Whether the completion solves the row's problem; never raises on garbage."""

    @abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """Normalised answer for majority voting, None if unparsable.

        is_correct(extract_answer(c), row) == is_correct(c, row) whenever it is not None.
        """

    def make_dataset(self, n: int, seed: int, exclude_prompts: Iterable[str] = ()) -> Dataset:
        """n rows with distinct prompts, none in `exclude_prompts`; the same seed gives the same rows."""
        return self.rows_dataset(self._distinct_rows(n, random.Random(seed), set(exclude_prompts)))

    def make_splits(self, n_train: int, n_eval: int, seed: int) -> tuple[Dataset, Dataset]:
        """Train rows and held-out rows whose prompts are disjoint, from the same distribution.

        Train rows are make_dataset(n_train, seed) and the held-out rows are drawn after them, except for a task
        with `uneven_prompts`: there the held-out prompts drawn after the training ones would be the rarer, harder
        ones whenever the training set takes much of the task's prompt space (2 000 of countdown_steps' 2 835
        prompts left held-out prompts with a quarter fewer solutions), so both are drawn together and split at
        random; changing n_eval then changes the training rows too.
        """
        for what, n in (("training", n_train), ("held-out", n_eval)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UserError(f"number of {what} rows must be a positive integer, got {n!r}")
        if self.uneven_prompts:
            rows = self._distinct_rows(n_train + n_eval, random.Random(seed), set())
            random.Random(f"{self.name}-split-{seed}").shuffle(rows)
            return self.rows_dataset(rows[:n_train]), self.rows_dataset(rows[n_train:])
        train_rows = self._distinct_rows(n_train, random.Random(seed), set())
        eval_rng = random.Random(f"{self.name}-eval-{seed}")
        eval_rows = self._distinct_rows(n_eval, eval_rng, {row["prompt"] for row in train_rows})
        return self.rows_dataset(train_rows), self.rows_dataset(eval_rows)

    def rows_dataset(self, rows: list[dict[str, Any]]) -> Dataset:
        """The dataset of generated rows, as a trainer reads them (a chat task makes each prompt a conversation)."""
        return Dataset.from_list(rows)

    def carve_validation(self, train: Dataset, n_validation: int) -> tuple[Dataset, Dataset]:
        """(training rows left, validation rows): n_validation rows taken at random out of `train` (the same rows
        for the same training set), for choosing settings without looking at the held-out rows. RL must then train
        on the rows left only; the held-out rows are not touched. The warm-up, which excludes only the held-out
        prompts, may have seen validation prompts (as it has the training ones)."""
        if isinstance(n_validation, bool) or not isinstance(n_validation, int) or not 1 <= n_validation < len(train):
            raise UserError(f"validation rows: must be an integer from 1 to {len(train) - 1} (they are carved out of "
                            f"the {len(train)} training rows), got {n_validation!r}")
        order = list(range(len(train)))
        random.Random(f"{self.name}-validation").shuffle(order)
        validation = sorted(order[:n_validation])
        return train.select(sorted(order[n_validation:])), train.select(validation)

    def make_sft_dataset(self, n: int, seed: int, exclude_prompts: Iterable[str] = ()) -> Dataset:
        """TRL prompt-completion rows whose completion is the stored answer (no EOS appended)."""
        rows = self._distinct_rows(n, random.Random(seed), set(exclude_prompts))
        return Dataset.from_list([{"prompt": row["prompt"], "completion": row["answer"]} for row in rows])

    @property
    def reward_funcs(self) -> list[Callable[..., list[float]]]:
        """TRL reward functions: 1.0 for a correct completion, 0.0 otherwise."""
        return [self._correctness_reward()]

    def _correctness_reward(self) -> Callable[..., list[float]]:
        def reward(prompts, completions, **columns) -> list[float]:
            missing = [column for column in self.checked_columns if column not in columns]
            if missing:
                raise UserError(
                    f"reward {reward.__name__} needs dataset columns {missing}; got {sorted(columns)}"
                )
            return [
                float(self.is_correct(completion_text(completion), {c: columns[c][i] for c in self.checked_columns}))
                for i, completion in enumerate(completions)
            ]

        reward.__name__ = f"{self.name}_correct"
        return reward

    def _distinct_rows(self, n: int, rng: random.Random, exclude: set[str]) -> list[dict[str, Any]]:
        if not isinstance(n, int) or n < 1:
            raise UserError(f"number of rows must be a positive integer, got {n!r}")
        rows: list[dict[str, Any]] = []
        seen = set(exclude)
        for _ in range(_DRAWS_PER_ROW * n):
            row = self.sample_row(rng)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
                if len(rows) == n:
                    return rows
        raise UserError(
            f"task {self!r} found only {len(rows)} distinct prompts of the {n} requested; "
            "make the task larger (more digits or numbers) or ask for fewer rows"
        )
