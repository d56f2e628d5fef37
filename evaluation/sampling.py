"""K completions per (question, temperature), every temperature in the same batched `generate` call.

Each row of a batch gets its own temperature through `ScheduledTemperatureProcessor` with one
`ConstantTemperature` per row; the built-in warpers are neutralised (temperature 1, top_k 0,
top_p 1) so that row temperature is the only change to the model's distribution, as in the
protocol of arXiv 2510.02611. Greedy (temperature 0) is deterministic, so it is decoded once per
question and repeated for the other samples.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from thermorl.rollouts.schedules import ConstantTemperature
from thermorl.rollouts.temperature_processor import ScheduledTemperatureProcessor, check_generation_config
from thermorl.tasks.prompt_lengths import prompt_text

from ..errors import UserError

Completions = list[list[list[str]]]  # [question][temperature][sample]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch for the block and restore the caller's RNG state afterwards (a no-op for seed=None)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sampling_config(model, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """The model's generation config with pure temperature sampling and the given length."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None, max_new_tokens=max_new_tokens)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    check_generation_config(config, model.generation_config)
    return config


def plan_calls(
    num_questions: int, temperatures: Sequence[float], samples: int, batch_size: int
) -> list[list[tuple[int, int, int]]]:
    """Rows (question, temperature index, sample index) grouped into generate calls of <= batch_size rows.

    The unit of packing is one sample at every temperature of a question, so every call holds all
    temperatures of the questions it covers (a unit larger than batch_size gets a call to itself).
    """
    calls, current = [], []
    for question in range(num_questions):
        for sample in range(samples):
            unit = [(question, t, sample) for t, value in enumerate(temperatures) if value > 0 or sample == 0]
            if not unit:
                continue
            if current and len(current) + len(unit) > batch_size:
                calls.append(current)
                current = []
            current.extend(unit)
    if current:
        calls.append(current)
    return calls


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    temperatures: Sequence[float],
    samples: int,
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int | None = 0,
    progress: bool = True,
) -> Completions:
    """`samples` completions of every prompt at every temperature: result[question][temperature][sample]."""
    if samples < 1:
        raise UserError(f"samples per temperature must be >= 1, got {samples}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    config = sampling_config(model, tokenizer, max_new_tokens)
    schedules = [ConstantTemperature(float(value)) for value in temperatures]
    completions: Completions = [[[""] * samples for _ in temperatures] for _ in prompts]
    calls = plan_calls(len(prompts), temperatures, samples, batch_size)
    was_training = model.training
    model.eval()
    try:
        with seeded(seed, model.device), tqdm(
            total=sum(map(len, calls)), unit="seq", desc="sampling", disable=not progress, leave=False
        ) as bar:
            for rows in calls:
                encoded = tokenizer(
                    [prompts[question] for question, _, _ in rows],
                    return_tensors="pt",
                    padding=True,
                    padding_side="left",
                    add_special_tokens=False,
                ).to(model.device)
                prompt_length = encoded["input_ids"].shape[1]
                processor = ScheduledTemperatureProcessor(
                    [schedules[t] for _, t, _ in rows], prompt_length=prompt_length, record_logprobs=False
                )
                output = model.generate(
                    **encoded, generation_config=config, logits_processor=LogitsProcessorList([processor])
                )
                texts = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
                for (question, t, sample), text in zip(rows, texts):
                    completions[question][t][sample] = text
                bar.update(len(rows))
    finally:
        model.train(was_training)
    for question in completions:
        for t, value in enumerate(temperatures):
            if value == 0:
                question[t] = [question[t][0]] * samples
    return completions
