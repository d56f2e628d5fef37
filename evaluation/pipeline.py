"""Multi-temperature test-time-scaling evaluation (arXiv 2510.02611): sample, verify, score, report.

`evaluate` draws K samples per (question, temperature) and reports pass@k, maj@k, Pass@All and the
early-exit vote replayed on those samples; `vote` runs the early-exit vote live, generating only
the rounds it needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from thermorl.tasks import Task, math_verify_reward
from thermorl.tasks.prompt_lengths import prompt_text, prompt_token_ids
from thermorl.tasks.verify import final_answer, normalize_answer

from ..errors import UserError
from .report import print_table, summarize, write_report
from .sampling import sample_completions, seeded
from .vllm_sampling import sample_completions_vllm
from .voting import RecordedAnswers, multi_temperature_vote

# The paper's grid: 0.0 to 1.2 in steps of 0.1.
DEFAULT_TEMPERATURES = tuple(round(0.1 * i, 1) for i in range(13))
# Samples per temperature per voting round: with threshold 0.8 a first round of 4 must be unanimous.
DEFAULT_VOTE_ROUND_SIZE = 4


def parse_temperatures(spec: str) -> list[float]:
    """"0.0:1.2:0.1" (start:stop:step, stop included) or "0.2,0.6,1.0" -> a checked list of temperatures."""
    text = spec.strip()
    if not text:
        raise UserError("temperature grid is empty")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UserError(f"temperature range {spec!r} must be start:stop:step, e.g. 0.0:1.2:0.1")
        start, stop, step = (_number(part, spec) for part in parts)
        if step <= 0:
            raise UserError(f"temperature range {spec!r} needs a step > 0, got {step}")
        if stop < start:
            raise UserError(f"temperature range {spec!r} has stop {stop} < start {start}")
        count = math.floor((stop - start) / step + 1e-9) + 1
        return check_temperatures([round(start + i * step, 10) for i in range(count)])
    return check_temperatures([_number(part, spec) for part in text.split(",")])


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"temperature grid {spec!r}: {text.strip()!r} is not a number") from None


def check_temperatures(temperatures: Sequence[float]) -> list[float]:
    """Non-empty, finite, >= 0 (0 = greedy), no duplicates."""
    values = list(temperatures)
    if not values:
        raise UserError("temperature grid is empty")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"temperatures must be finite numbers >= 0, got {value!r}")
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise UserError(f"temperature grid lists {duplicates} more than once")
    return [float(value) for value in values]


class Verifier:
    """Scores completions of one question and extracts the answers that are voted on."""

    required_columns: tuple[str, ...] = ()

    def correct(self, completions: Sequence[str], row: Mapping[str, Any]) -> list[bool]:
        raise NotImplementedError

    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError


class TaskVerifier(Verifier):
    """A built-in task's strict checker and answer extraction."""

    def __init__(self, task: Task):
        self.task = task
        self.required_columns = task.checked_columns

    def correct(self, completions, row):
        return [self.task.is_correct(completion, row) for completion in completions]

    def extract_answer(self, completion):
        return self.task.extract_answer(completion)


class RewardVerifier(Verifier):
    """A TRL-style reward function `f(prompts, completions, **columns) -> list[float]`.

    A completion is correct when its reward is >= correct_threshold (1.0: a 0/1 correctness reward).
    Votes are over math-verify's reading of the final answer in the completion.
    """

    def __init__(self, reward_fn: Callable[..., list[float]], correct_threshold: float = 1.0, required_columns=()):
        self.reward_fn = reward_fn
        self.correct_threshold = correct_threshold
        self.required_columns = tuple(required_columns)

    def correct(self, completions, row):
        columns = {name: [value] * len(completions) for name, value in row.items() if name != "prompt"}
        if not isinstance(row["prompt"], str):  # conversational data: TRL passes completions as messages
            completions = [[{"role": "assistant", "content": text}] for text in completions]
        rewards = self.reward_fn(prompts=[row["prompt"]] * len(completions), completions=list(completions), **columns)
        if len(rewards) != len(completions):
            raise UserError(f"reward function returned {len(rewards)} rewards for {len(completions)} completions")
        return [reward is not None and reward >= self.correct_threshold for reward in rewards]

    def extract_answer(self, completion):
        answer = final_answer(completion)
        return None if answer is None else normalize_answer(answer)


def as_verifier(task_or_verifier, column_names: Sequence[str]) -> Verifier:
    """A Verifier from a Task, a reward function, a Verifier, or None (math-verify against an `answer` column)."""
    if isinstance(task_or_verifier, Verifier):
        verifier = task_or_verifier
    elif isinstance(task_or_verifier, Task):
        verifier = TaskVerifier(task_or_verifier)
    elif callable(task_or_verifier):
        verifier = RewardVerifier(task_or_verifier)
    elif task_or_verifier is None:
        verifier = RewardVerifier(math_verify_reward, required_columns=("answer",))
    else:
        raise ValueError(f"task_or_verifier must be a Task, a reward function or None, got {task_or_verifier!r}")
    missing = [column for column in verifier.required_columns if column not in column_names]
    if missing:
        raise UserError(
            f"the dataset has no {missing} column(s) to check answers against (columns: {list(column_names)}); "
            "add them or pass a reward function that verifies completions without them"
        )
    return verifier


def dataset_rows(dataset) -> list[dict[str, Any]]:
    rows = [dict(row) for row in dataset]
    if not rows:
        raise UserError("the evaluation dataset is empty")
    if any("prompt" not in row for row in rows):
        raise UserError(f"the evaluation dataset needs a 'prompt' column, got columns {sorted(rows[0])}")
    return rows


def score(verifier: Verifier, rows, completions) -> tuple[list, list]:
    """(answer_table, correct_table) [question][temperature][sample]; each distinct completion is verified once."""
    answer_table, correct_table = [], []
    for row, per_temperature in zip(rows, completions):
        distinct = list(dict.fromkeys(text for samples in per_temperature for text in samples))
        verdicts = dict(zip(distinct, verifier.correct(distinct, row)))
        answers = {text: verifier.extract_answer(text) for text in distinct}
        answer_table.append([[answers[text] for text in samples] for samples in per_temperature])
        correct_table.append([[verdicts[text] for text in samples] for samples in per_temperature])
    return answer_table, correct_table


def check_settings(vote_threshold: float, **counts: int) -> None:
    """Every count an integer >= 1 and the vote threshold in (0, 1]; UserError naming the first offender."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0.0 < vote_threshold <= 1.0:
        raise UserError(f"vote_threshold must be in (0, 1], got {vote_threshold}")


def evaluate(
    model,
    tokenizer,
    dataset,
    task_or_verifier=None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    samples: int = 8,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    vote_threshold: float = 0.8,
    vote_round_size: int = DEFAULT_VOTE_ROUND_SIZE,
    out_dir: str | Path | None = None,
    progress: bool = True,
    show_table: bool = False,
    metadata: Mapping[str, Any] | None = None,
    backend: str = "hf",
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Report dict of a multi-temperature evaluation (see report.summarize); files too if out_dir is given.

    backend "hf": `model` is a Hugging Face model, sampled with batched `generate` (batch_size rows per call);
    "vllm": `model` is a vLLM `LLM` (tokenizer: its `get_tokenizer()`), every sample in one engine call, each
    request seeded from `seed` (see vllm_sampling.py).

    dataset: rows with a "prompt" (text or chat messages) and whatever the verifier reads.
    task_or_verifier: a thermorl Task, a TRL-style reward function, or None for math-verify against
    the dataset's "answer" column. chat_template_kwargs: the training recipe's, for conversational prompts (rendered
    as TRL's GRPOTrainer renders them). The early-exit vote is replayed on the samples drawn, in rounds of
    vote_round_size (at most `samples`). metadata (model, task, ...) is stored in report["config"].
    """
    temperatures = check_temperatures(temperatures)
    check_settings(
        vote_threshold,
        samples=samples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        vote_round_size=vote_round_size,
    )
    vote_round_size = min(vote_round_size, samples)
    rows = dataset_rows(dataset)
    verifier = as_verifier(task_or_verifier, list(rows[0]))
    chat_template_kwargs = dict(chat_template_kwargs or {})

    if backend == "vllm":
        prompt_ids = [prompt_token_ids(row["prompt"], tokenizer, chat_template_kwargs) for row in rows]
        completions = sample_completions_vllm(model, prompt_ids, temperatures, samples, max_new_tokens, seed)
    elif backend == "hf":
        prompts = [prompt_text(row["prompt"], tokenizer, chat_template_kwargs) for row in rows]
        completions = sample_completions(
            model, tokenizer, prompts, temperatures, samples, max_new_tokens,
            batch_size=batch_size, seed=seed, progress=progress,
        )
    else:
        raise UserError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    answer_table, correct_table = score(verifier, rows, completions)
    votes = multi_temperature_vote(
        RecordedAnswers(answer_table), len(rows), len(temperatures), samples, vote_round_size, vote_threshold
    )
    report = summarize(temperatures, answer_table, correct_table, votes, vote_threshold, vote_round_size)
    report["config"] = {
        **(metadata or {}), "backend": backend, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed
    }
    if out_dir is not None:
        report["files"] = write_report(Path(out_dir), report, rows, completions, answer_table, correct_table, votes)
    if show_table:
        print_table(report)
    return report


def vote(
    model,
    tokenizer,
    dataset,
    task_or_verifier=None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    max_samples: int = 8,
    *,
    round_size: int = DEFAULT_VOTE_ROUND_SIZE,
    threshold: float = 0.8,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Live multi-temperature voting: rounds of `round_size` samples per temperature, only for open questions.

    Returns accuracy, samples used and the per-question VoteResults (plus whether each was correct).
    """
    temperatures = check_temperatures(temperatures)
    check_settings(
        threshold, max_samples=max_samples, round_size=round_size, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    rows = dataset_rows(dataset)
    verifier = as_verifier(task_or_verifier, list(rows[0]))
    prompts = [prompt_text(row["prompt"], tokenizer) for row in rows]
    # The first completion that gave each answer, per question, to verify the voted answer at the end.
    witnesses: list[dict[Any, str]] = [{} for _ in rows]

    def draw(questions, count):
        completions = sample_completions(
            model, tokenizer, [prompts[q] for q in questions], temperatures, count, max_new_tokens,
            batch_size=batch_size, seed=None, progress=False,
        )
        batch = []
        for question, per_temperature in zip(questions, completions):
            answers = [[verifier.extract_answer(text) for text in samples] for samples in per_temperature]
            for samples, sample_answers in zip(per_temperature, answers):
                for text, answer in zip(samples, sample_answers):
                    witnesses[question].setdefault(answer, text)
            batch.append(answers)
        return batch

    with seeded(seed, model.device):
        results = multi_temperature_vote(draw, len(rows), len(temperatures), max_samples, round_size, threshold)
    correct = [
        result.answer is not None and verifier.correct([witnesses[q][result.answer]], rows[q])[0]
        for q, result in enumerate(results)
    ]
    budget = max_samples * len(temperatures)
    return {
        "accuracy": sum(correct) / len(rows),
        "mean_samples_used": sum(result.samples_used for result in results) / len(rows),
        "budget_per_question": budget,
        "results": [{"vote": result, "correct": is_correct} for result, is_correct in zip(results, correct)],
    }


