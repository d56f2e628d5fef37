"""Samples/second: one batched `generate` over all temperatures vs one `generate` call per temperature.

Both paths draw the same budget (K samples at each of T temperatures for each question, greedy
decoded once) from the same model, with every completion forced to exactly --max-new-tokens tokens
(min_new_tokens) so they do the same amount of decoding work.

    python benchmarks/multi_temperature_generate.py                  # tiny random model, 13 temperatures
    python benchmarks/multi_temperature_generate.py --model PATH --samples 16 --max-new-tokens 64
"""

import argparse
import copy
import statistics
import tempfile

import torch

from thermorl.evaluation.model_loading import load_policy
from thermorl.evaluation.pipeline import parse_temperatures
from thermorl.evaluation.sampling import sample_completions
from thermorl.models.tiny import build_tiny_model
from thermorl.tasks import get_task

from timing import seconds  # benchmarks/timing.py, beside this script


def per_temperature_loop(model, tokenizer, prompts, temperatures, samples, max_new_tokens):
    """The baseline: for each question and temperature, one generate call with the built-in temperature."""
    configs = {}
    for temperature in temperatures:
        config = copy.deepcopy(model.generation_config)
        if temperature == 0:
            config.update(do_sample=False, top_k=None, top_p=None, temperature=None, max_new_tokens=max_new_tokens)
        else:
            config.update(do_sample=True, top_k=0, top_p=1.0, temperature=temperature, max_new_tokens=max_new_tokens)
        configs[temperature] = config
    for prompt in prompts:
        for temperature in temperatures:
            rows = 1 if temperature == 0 else samples
            encoded = tokenizer([prompt] * rows, return_tensors="pt", add_special_tokens=False).to(model.device)
            model.generate(**encoded, generation_config=configs[temperature])


def batched(model, tokenizer, prompts, temperatures, samples, max_new_tokens, batch_size):
    sample_completions(
        model, tokenizer, prompts, temperatures, samples, max_new_tokens,
        batch_size=batch_size, seed=None, progress=False,
    )


def timed(functions, repeats):
    """Median seconds of each function; runs are interleaved so that a change in machine load hits both."""
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, record in zip(functions, times):
            record.append(seconds(function))
    return [statistics.median(record) for record in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path or name (default: a fresh tiny model)")
    parser.add_argument("--temperatures", default="0.0:1.2:0.1")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per generate call of the batched path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    temperatures = parse_temperatures(args.temperatures)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_policy(args.model or build_tiny_model(tmp))
    model.generation_config.min_new_tokens = args.max_new_tokens
    prompts = get_task("arithmetic").make_dataset(args.questions, seed=0)["prompt"]
    sampled = sum(1 if t == 0 else args.samples for t in temperatures) * len(prompts)

    def run_loop():
        per_temperature_loop(model, tokenizer, prompts, temperatures, args.samples, args.max_new_tokens)

    def run_batched():
        batched(model, tokenizer, prompts, temperatures, args.samples, args.max_new_tokens, args.batch_size)

    with torch.no_grad():
        run_loop(), run_batched()  # warm-up
        loop_seconds, batched_seconds = timed([run_loop, run_batched], args.repeats)
    print(
        f"device {model.device}, {len(temperatures)} temperatures x {args.samples} samples x {len(prompts)} questions "
        f"({sampled} sequences, greedy once), {args.max_new_tokens} new tokens each, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"loop (one generate per temperature): {sampled / loop_seconds:8.1f} samples/s  ({loop_seconds:.2f} s)")
    print(f"batched (one generate, per-row T):   {sampled / batched_seconds:8.1f} samples/s  ({batched_seconds:.2f} s)")
    print(f"speed-up: {loop_seconds / batched_seconds:.2f}x")


if __name__ == "__main__":
    main()
