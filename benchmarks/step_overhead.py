"""Step-time overhead of ThermoGRPOTrainer (registry `sapo` loss) against TRL's GRPOTrainer(loss_type="sapo").

Same tiny model, data, batch and seed. Two measurements, both alternating the two trainers so machine drift hits
both alike, both reported as medians and as a ratio (target <= 1.05):
  1. whole training steps (generation + scoring + loss + backward + optimizer), from TRL's `step_time` metric;
  2. the loss hook alone (TRL's `compute_loss`, i.e. `_compute_loss`, forward + backward) on one fixed generated
     batch: where thermorl's code actually differs, so any overhead shows here undiluted by generation.

    python benchmarks/step_overhead.py [--rounds 5] [--steps 6] [--loss-repeats 30] [--model DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from thermorl.models.tiny import build_tiny_model
from thermorl.tasks import get_task
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.trl_surface import generate_and_score, loss_outside_training


def make_trainer(kind: str, model_dir: str, dataset: Dataset, out: str, steps: int, batch: int):
    common = dict(
        output_dir=out, use_cpu=True, bf16=False, gradient_checkpointing=False, max_steps=steps,
        per_device_train_batch_size=batch, num_generations=8, max_completion_length=8, learning_rate=1e-5,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
        loss_type="sapo", sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
    )
    task = get_task("arithmetic")
    if kind == "thermorl":
        args = ThermoGRPOConfig(**common)  # TRL's loss fields pick the registry's sapo
        return ThermoGRPOTrainer(model=model_dir, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
    args = GRPOConfig(**common)
    return GRPOTrainer(model=model_dir, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)


def step_times(trainer) -> list[float]:
    trainer.train()
    return [e["step_time"] for e in trainer.state.log_history if "step_time" in e][1:]  # first step warms up


def loss_hook_times(trainers: dict, repeats: int) -> dict[str, list[float]]:
    thermo = trainers["thermorl"]
    thermo.model.train()
    rows = thermo.train_dataset.select(range(8))
    batch = generate_and_score(thermo, [row for row in rows for _ in range(8)])
    times = {kind: [] for kind in trainers}
    for i in range(repeats):
        order = list(trainers) if i % 2 == 0 else list(reversed(trainers))
        for kind in order:
            trainer = trainers[kind]
            trainer.model.train()
            start = time.perf_counter()
            loss_outside_training(trainer, batch).backward()
            times[kind].append(time.perf_counter() - start)
            trainer.model.zero_grad()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--loss-repeats", type=int, default=30)
    parser.add_argument("--model", default=None, help="model directory (default: a fresh tiny model)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_model(f"{tmp}/tiny")
        dataset, _ = get_task("arithmetic").make_splits(512, 8, seed=0)
        dataset = dataset.select_columns(["prompt", "answer"])
        steps = {"thermorl": [], "trl": []}
        for r in range(args.rounds):
            for kind in (["thermorl", "trl"] if r % 2 == 0 else ["trl", "thermorl"]):
                trainer = make_trainer(kind, model_dir, dataset, f"{tmp}/{kind}", args.steps, args.batch)
                steps[kind].extend(step_times(trainer))
        trainers = {kind: make_trainer(kind, model_dir, dataset, f"{tmp}/{kind}", 1, args.batch) for kind in steps}
        hook = loss_hook_times(trainers, args.loss_repeats)

    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}, completions <= 8 tokens")
    for title, times in (("training step", steps), ("loss hook (fwd+bwd)", hook)):
        ours, theirs = statistics.median(times["thermorl"]), statistics.median(times["trl"])
        print(f"{title:>20}: thermorl {ours * 1e3:8.1f} ms | TRL {theirs * 1e3:8.1f} ms | "
              f"ratio {ours / theirs:.3f} (n={len(times['thermorl'])})")


if __name__ == "__main__":
    main()
