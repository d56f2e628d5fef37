"""Where a testbed step's time goes, and whether a generation setting makes it cheaper without changing results.

Issue 21 asks for a cheaper step first, if one exists that leaves the results unchanged. This measures the
testbed's step (`recipes/testbed.yaml` at fixed T=0.8, the study's baseline arm: 64 rollouts of up to 24 tokens
from the 0.8M warmed-up model, one GRPO update) at one thread:

- the share of the step spent in generation (TRL's `_generate_single_turn`, timed around the call);
- each candidate setting's median step time as a ratio to the default's, measured in the same run with the arms
  alternating round by round (so that a shared machine's drift hits all alike);
- whether the candidate trains the same run: the same rewards and losses at every step and the same weights at the
  end, bit for bit. A faster setting that changes them is not a free speedup (the study's runs would not reproduce).

Candidates are settings a recipe can already carry (TRL's and transformers' own): the KV cache implementation
(`cache_implementation: static`, preallocated instead of grown per token) and the attention kernel
(`attn_implementation: eager` instead of SDPA).

    OMP_NUM_THREADS=1 python benchmarks/testbed_step_options.py [--steps 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from thermorl.console import quiet_trainer
from thermorl.recipe import load_recipe
from thermorl.trainer_factory import build_trainer
from thermorl.trainers.trl_surface import timed_generation

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "testbed.yaml"
CANDIDATES = {
    "default (dynamic cache, sdpa)": {},
    "cache_implementation: static": {"cache_implementation": "static"},
    "attn_implementation: eager": {"attn_implementation": "eager"},
}


def run(overrides: dict, steps: int) -> dict:
    """Train `steps` testbed steps; step times (the first two, warming up, dropped), generation times, the logged
    rewards and losses, and the final weights."""
    with tempfile.TemporaryDirectory() as tmp:
        values = {"max_steps": steps, "output_dir": tmp, "temperature": 0.8, "disable_tqdm": True, **overrides}
        trainer = build_trainer(*load_recipe(RECIPE, values))
        quiet_trainer(trainer, show_progress=False)  # the Trainer would print every step's metric dict
        with timed_generation(trainer) as generation:
            trainer.train()
        logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
        return {"step": [entry["step_time"] for entry in logs][2:], "generation": generation[2:],
                "trace": [(entry["reward"], entry["loss"]) for entry in logs],
                "weights": [p.detach().clone() for p in trainer.model.parameters()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; {args.rounds} rounds of {args.steps} steps per setting")

    runs = {name: [] for name in CANDIDATES}
    for round_index in range(args.rounds):
        order = list(CANDIDATES) if round_index % 2 == 0 else list(reversed(CANDIDATES))
        for name in order:
            runs[name].append(run(CANDIDATES[name], args.steps))

    default = next(iter(CANDIDATES))
    reference = runs[default][0]  # every other run, the default's own repeats included, is checked against it
    baseline = statistics.median(step for measured in runs[default] for step in measured["step"])
    print(f"{'setting':32s} {'step (median)':>14s} {'ratio':>7s} {'generation share':>17s}  same run as the default's first")
    for name, measured_runs in runs.items():
        step = statistics.median(s for measured in measured_runs for s in measured["step"])
        generation = statistics.median(g for measured in measured_runs for g in measured["generation"])
        others = [measured for measured in measured_runs if measured is not reference]
        same = all(measured["trace"] == reference["trace"]
                   and all(torch.equal(a, b) for a, b in zip(measured["weights"], reference["weights"]))
                   for measured in others)
        verdict = ("the reference (no repeat to check)" if not others else
                   f"{'yes, bit for bit' if same else 'NO: rewards, losses or weights differ'} ({len(others)} run(s))")
        print(f"{name:32s} {step * 1000:11.0f} ms {step / baseline:7.3f} {generation / step:16.0%}  {verdict}")


if __name__ == "__main__":
    main()
