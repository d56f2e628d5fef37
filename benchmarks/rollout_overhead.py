"""Rollout time of ThermoGRPOTrainer with a temperature schedule vs TRL's own fixed temperature.

Same model, same prompts, same batch; every completion is forced to --max-new-tokens tokens (min_new_tokens) so
every arm decodes the same number of steps. Arms run in turn (order reversed every other repeat), --repeats times
each; medians are compared in this one run. Three timings:

- generate:  TRL's `_generate_single_turn`, the sampling call (processor, behaviour log-probs included);
- processor: the time spent inside the schedule's logits processor during that call (its share of the call is
             immune to the run-to-run noise of a shared machine, which the ratios are not);
- rollout:   TRL's `_generate_and_score_completions`, also rewards and, for EAD with TIS, the extra forward pass that
             computes pi_old at temperature 1 (TRL skips it when one update follows each rollout).

    python benchmarks/rollout_overhead.py                          # tiny random model, 64 rows x 64 tokens
    python benchmarks/rollout_overhead.py --model PATH --max-new-tokens 256 --threads 2
"""

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset

from thermorl.models.tiny import build_tiny_model
from thermorl.rollouts import ScheduledTemperatureProcessor
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.trl_surface import generate_and_score, generate_completions

from timing import seconds  # benchmarks/timing.py, beside this script

PAPER_SCHEDULE = {"type": "annealed", "tau_max": 1.2, "tau_min": 0.1, "warmup_tokens": 10, "d0": 25.0, "alpha": 5.0,
                  "d_max": 40000.0, "horizon_scale": 20.0}


def constant_reward(completions, **_):
    return [0.0] * len(completions)


def make_trainer(model, args, output_dir, **config):
    settings = dict(
        output_dir=output_dir, use_cpu=not torch.cuda.is_available(), bf16=False, report_to=[], save_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=args.rows, num_generations=args.generations,
        max_completion_length=args.max_new_tokens, generation_kwargs={"min_new_tokens": args.max_new_tokens}, seed=0,
    )
    dataset = Dataset.from_dict({"prompt": ["1+2="] * args.rows})
    trainer = ThermoGRPOTrainer(model=model, reward_funcs=constant_reward,
                                args=ThermoGRPOConfig(**settings, **config), train_dataset=dataset)
    trainer.model.eval()
    return trainer


class ProcessorClock:
    """Accumulates the wall time of every ScheduledTemperatureProcessor call (installed for the benchmark only)."""

    def __init__(self):
        self.total = 0.0
        call, finalize = ScheduledTemperatureProcessor.__call__, ScheduledTemperatureProcessor.finalize

        def timed(method):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    self.total += time.perf_counter() - start

            return wrapper

        ScheduledTemperatureProcessor.__call__ = timed(call)
        ScheduledTemperatureProcessor.finalize = timed(finalize)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a tiny random model)")
    parser.add_argument("--rows", type=int, default=64, help="completions per generate call")
    parser.add_argument("--generations", type=int, default=8, help="num_generations (group size)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_tiny_model(f"{scratch}/model", seed=0)
        arms = {
            "fixed 1.2 (TRL temperature)": make_trainer(model, args, scratch, temperature=1.2),
            "EAD schedule (paper defaults)": make_trainer(model, args, scratch, temperature_schedule=PAPER_SCHEDULE),
            "portfolio [0.6, 1.0, 1.2, EAD]": make_trainer(
                model, args, scratch, temperature_portfolio=[0.6, 1.0, 1.2, PAPER_SCHEDULE]
            ),
        }
        prompts = [f"{i % 10}+{i % 7}=" for i in range(args.rows // args.generations) for _ in range(args.generations)]
        prompt_ids = [list(ids) for ids in arms["fixed 1.2 (TRL temperature)"].processing_class(prompts)["input_ids"]]
        inputs = [{"prompt": prompt} for prompt in prompts]
        timings = {name: {"generate": [], "processor": [], "rollout": []} for name in arms}
        for name, trainer in arms.items():  # warm-up, untimed
            generate_completions(trainer, prompt_ids, args.generations)
        clock = ProcessorClock()
        for repeat in range(args.repeats):
            for name in list(arms)[:: 1 if repeat % 2 == 0 else -1]:
                trainer = arms[name]
                clock.total = 0.0
                timings[name]["generate"].append(
                    seconds(lambda t=trainer: generate_completions(t, prompt_ids, args.generations))
                )
                timings[name]["processor"].append(clock.total)
                timings[name]["rollout"].append(seconds(lambda t=trainer: generate_and_score(t, inputs)))

    baseline = "fixed 1.2 (TRL temperature)"
    print(f"{args.rows} rows x {args.max_new_tokens} new tokens, {args.repeats} alternating repeats, "
          f"{args.threads} thread(s), device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for phase in ("generate", "rollout"):
        reference = statistics.median(timings[baseline][phase])
        for name in arms:
            median = statistics.median(timings[name][phase])
            print(f"  {phase:9s} {name:32s} median {median * 1000:8.1f} ms   ratio vs fixed {median / reference:.3f}")
        if phase == "generate":
            for name in list(arms)[1:]:
                shares = [p / g for p, g in zip(timings[name]["processor"], timings[name]["generate"], strict=True)]
                print(f"  processor {name:32s} median {statistics.median(timings[name]['processor']) * 1000:8.1f} ms"
                      f"   share of its generate call {statistics.median(shares):.3f}")


if __name__ == "__main__":
    main()
