"""Multi-temperature majority voting with early exit (arXiv 2510.02611; docs/algorithms.md, section 5).

Samples are drawn in rounds: every round adds `samples_per_round` answers at every temperature of
every question still open. A temperature is confident when its majority answer holds a share >=
threshold of its pool; a question exits as soon as every temperature is confident and all the
majorities agree. Questions that never exit spend the whole budget and take the majority over all
their samples.

Answers come from an answer stream: any callable `draw(questions, count)` returning, for each
requested question index, one list per temperature of `count` new answers (None = unparsable).
The generation loop is one such stream, `RecordedAnswers` (a replay of samples already drawn) another.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from ..errors import UserError
from .metrics import majority_vote

Answer = Hashable | None
AnswerStream = Callable[[Sequence[int], int], Sequence[Sequence[Sequence[Answer]]]]


@dataclass(frozen=True)
class VoteResult:
    answer: Answer
    samples_used: int
    budget: int
    exited_early: bool


def agreed_answer(pools: Sequence[Sequence[Answer]], threshold: float) -> Answer:
    """The exit rule: the common majority answer if every pool is confident and they all agree, else None."""
    majorities = [majority_vote(pool) for pool in pools]
    if all(share >= threshold for _, share in majorities) and len({answer for answer, _ in majorities}) == 1:
        return majorities[0][0]
    return None


def multi_temperature_vote(
    draw: AnswerStream,
    num_questions: int,
    num_temperatures: int,
    max_samples: int,
    samples_per_round: int,
    threshold: float = 0.8,
) -> list[VoteResult]:
    """Vote on every question, drawing rounds from `draw` until it exits or `max_samples` per temperature are used."""
    if num_temperatures < 1:
        raise UserError(f"multi_temperature_vote needs at least one temperature, got {num_temperatures}")
    if max_samples < 1 or samples_per_round < 1:
        raise UserError(
            f"max_samples and samples_per_round must be >= 1, got max_samples={max_samples}, "
            f"samples_per_round={samples_per_round}"
        )
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"vote threshold must be in (0, 1], got {threshold}")
    budget = max_samples * num_temperatures
    pools = [[[] for _ in range(num_temperatures)] for _ in range(num_questions)]
    results: list[VoteResult | None] = [None] * num_questions
    open_questions = list(range(num_questions))
    drawn = 0
    while open_questions and drawn < max_samples:
        count = min(samples_per_round, max_samples - drawn)
        batch = draw(open_questions, count)
        drawn += count
        still_open = []
        for question, per_temperature in zip(open_questions, batch, strict=True):
            if len(per_temperature) != num_temperatures or any(len(answers) != count for answers in per_temperature):
                raise ValueError(
                    f"answer stream returned the wrong shape for question {question}: expected {num_temperatures} "
                    f"lists of {count} answers, got lengths {[len(answers) for answers in per_temperature]}"
                )
            for pool, answers in zip(pools[question], per_temperature):
                pool.extend(answers)
            answer = agreed_answer(pools[question], threshold)
            if answer is None:
                still_open.append(question)
            else:
                results[question] = VoteResult(answer, drawn * num_temperatures, budget, drawn < max_samples)
        open_questions = still_open
    for question in open_questions:
        every_sample = [answer for pool in pools[question] for answer in pool]
        results[question] = VoteResult(majority_vote(every_sample)[0], budget, budget, False)
    return results


class RecordedAnswers:
    """Replays an answer table [question][temperature][sample] in sample order.

    Replaying the first m of K recorded samples is an exact draw of m samples, since the samples of one
    (question, temperature) are i.i.d.; so the vote can be scored on a full-budget run at no extra cost.
    """

    def __init__(self, answer_table: Sequence[Sequence[Sequence[Answer]]]):
        self.answer_table = answer_table
        self.cursor = [0] * len(answer_table)

    def __call__(self, questions: Sequence[int], count: int) -> list[list[list[Answer]]]:
        batch = []
        for question in questions:
            start = self.cursor[question]
            per_temperature = [list(samples[start : start + count]) for samples in self.answer_table[question]]
            if any(len(answers) < count for answers in per_temperature):
                raise ValueError(f"question {question} has fewer than {start + count} recorded samples per temperature")
            self.cursor[question] = start + count
            batch.append(per_temperature)
        return batch
