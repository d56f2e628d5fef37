"""Where the reasoning testbed's policy fails: the share of sampled traces that are correct, malformed (arithmetic
slips included), dead ends (the first steps left two numbers that cannot make the target: the choice phase) or
missed (they could, and the exact last step took the other operation), on held-out prompts and on as many training
prompts.

By default it scores the testbed recipe's warmed-up policy (built and cached on the first run); --model scores a
trained one (a folder `thermorl train` wrote). Held-out and training prompts scoring alike is what an unbiased
split looks like (docs/testbed.md, "The split").

    python benchmarks/testbed_failures.py                          # the warmed-up policy, T = 1, 4 samples each
    python benchmarks/testbed_failures.py --model outputs/testbed --temperature 0.6
Any other `--field value` overrides the recipe, as in `thermorl train`.
"""

import argparse
import collections

import torch

from thermorl.evaluation import load_policy
from thermorl.evaluation.sampling import sample_completions
from thermorl.recipe import load_recipe
from thermorl.recipe_inputs import build_datasets, resolve_model_path

OUTCOMES = ("correct", "malformed", "dead end", "missed")


def outcome_counts(model, tokenizer, task, rows, temperature: float, samples: int, max_new_tokens: int):
    completions = sample_completions(model, tokenizer, [row["prompt"] for row in rows], [temperature], samples,
                                     max_new_tokens, batch_size=256, seed=0, progress=False)
    counts = collections.Counter(task.outcome(completion, row)
                                 for row, per_temperature in zip(rows, completions)
                                 for completion in per_temperature[0])
    return {name: counts[name] for name in OUTCOMES}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="testbed")
    parser.add_argument("--model", help="a trained policy's folder (default: the recipe's warmed-up policy)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=4)
    args, overrides = parser.parse_known_args(argv)

    torch.set_num_threads(1)
    model_args, training_args, script_args = load_recipe(args.recipe, overrides)
    train, held_out, task = build_datasets(script_args, training_args.seed)
    if not hasattr(task, "outcome"):
        raise SystemExit(f"the recipe's dataset {script_args.dataset!r} is not countdown_steps")
    path = args.model or resolve_model_path(model_args.model_name_or_path, script_args, held_out)
    model, tokenizer = load_policy(path, device="cpu", dtype="float32")
    result = {}
    for name, rows in (("held-out", held_out), ("training", train.select(range(min(len(train), len(held_out)))))):
        result[name] = outcome_counts(model, tokenizer, task, [dict(row) for row in rows], args.temperature,
                                      args.samples, training_args.max_completion_length)
    print(f"{path}, T={args.temperature:g}, {args.samples} samples per prompt, {len(held_out)} prompts each")
    print(f"| prompts | {' | '.join(OUTCOMES)} |\n|---|{'---|' * len(OUTCOMES)}")
    for name, counts in result.items():
        print(f"| {name} | " + " | ".join(f"{counts[o] / sum(counts.values()):.3f}" for o in OUTCOMES) + " |")
    return result


if __name__ == "__main__":
    main()
