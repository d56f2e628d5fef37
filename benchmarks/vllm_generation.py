"""vLLM generation with a temperature schedule vs a fixed temperature, and `thermorl eval` samples/s, vLLM vs HF.

Run in the vLLM environment (scripts/test_vllm.sh builds .venv-vllm):

    .venv-vllm/bin/python benchmarks/vllm_generation.py                 # tiny model, 64 rows x 64 tokens
    .venv-vllm/bin/python benchmarks/vllm_generation.py --model PATH --rows 256 --max-new-tokens 512

1. schedule / fixed: one engine with thermorl's processor registered; the same prompts and batch sampled with the
   paper's EAD schedule (per-request extra_args, the processor active) and with a fixed temperature (no extra_args,
   vLLM's own temperature). Every completion runs --max-new-tokens tokens (ignore_eos). Arms alternate, order
   reversed every other repeat; medians compared (target <= 1.05). Also the time spent inside the processor's
   `apply` as a share of the scheduled arm: immune to the run-to-run noise of a shared machine, which the ratio is not.
2. eval samples/s: `sample_completions_vllm` (every temperature x sample in one engine call) vs the Hugging Face
   backend's batched `sample_completions` (batch 64) on the same questions and grid.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch  # noqa: E402

from thermorl.models.tiny import build_tiny_model  # noqa: E402
from thermorl.rollouts import build_schedule  # noqa: E402
from thermorl.rollouts.vllm_schedule import schedule_extra_args  # noqa: E402
from thermorl.rollouts.vllm_temperature import ScheduledTemperatureLogitsProcessor  # noqa: E402

from timing import seconds  # noqa: E402  (benchmarks/timing.py, beside this script)

PAPER_SCHEDULE = {"type": "annealed", "tau_max": 1.2, "tau_min": 0.1, "warmup_tokens": 10, "d0": 25.0, "alpha": 5.0,
                  "d_max": 40000.0, "horizon_scale": 20.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir (default: the tiny model, built locally)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eval-questions", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--skip-eval", action="store_true", help="only the generation comparison")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    inside = {"seconds": 0.0}
    timed_apply = ScheduledTemperatureLogitsProcessor.apply

    def apply(self, logits):
        start = time.perf_counter()
        try:
            return timed_apply(self, logits)
        finally:
            inside["seconds"] += time.perf_counter() - start

    ScheduledTemperatureLogitsProcessor.apply = apply
    model_dir = args.model or build_tiny_model(tempfile.mkdtemp() + "/tiny", seed=0)
    llm = LLM(model=model_dir, dtype="float32", logits_processors=[ScheduledTemperatureLogitsProcessor],
              logprobs_mode="processed_logprobs", max_model_len=256, gpu_memory_utilization=0.2, seed=0)
    prompts = [{"prompt_token_ids": [5 + i % 50, 6 + i % 30, 7]} for i in range(args.rows)]
    common = dict(max_tokens=args.max_new_tokens, ignore_eos=True, top_k=0, logprobs=0)
    schedule = schedule_extra_args(build_schedule(PAPER_SCHEDULE), 3)
    arms = {
        "schedule": SamplingParams(temperature=1.0, extra_args=schedule, **common),
        "fixed": SamplingParams(temperature=1.0, **common),
    }
    llm.generate(prompts, arms["fixed"], use_tqdm=False)  # warm-up
    times = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name in (list(arms) if repeat % 2 == 0 else list(reversed(arms))):
            times[name].append(seconds(lambda p=arms[name]: llm.generate(prompts, p, use_tqdm=False)))
    median = {name: statistics.median(values) for name, values in times.items()}
    share = inside["seconds"] / sum(times["schedule"])
    print(f"generation, {args.rows} rows x {args.max_new_tokens} tokens, {args.repeats} repeats (median s): "
          f"schedule {median['schedule']:.3f}, fixed {median['fixed']:.3f}, "
          f"ratio {median['schedule'] / median['fixed']:.3f} (target <= 1.05); processor {100 * share:.1f}% of the "
          "scheduled arm")

    if args.skip_eval:
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thermorl.evaluation.sampling import sample_completions
    from thermorl.evaluation.vllm_sampling import sample_completions_vllm

    temperatures = [round(0.1 * i, 1) for i in range(13)]
    questions = [f"{i * 37 % 100} + {i}=" for i in range(args.eval_questions)]
    count = args.eval_questions * (1 + (len(temperatures) - 1) * args.eval_samples)  # greedy decoded once
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    question_ids = [tokenizer(question)["input_ids"] for question in questions]
    vllm_seconds = seconds(lambda: sample_completions_vllm(llm, question_ids, temperatures, args.eval_samples,
                                                           args.max_new_tokens))
    hf_seconds = seconds(lambda: sample_completions(hf, tokenizer, questions, temperatures, args.eval_samples,
                                                    args.max_new_tokens, batch_size=64, progress=False))
    print(f"eval, {args.eval_questions} questions x 13 temperatures x {args.eval_samples} samples x "
          f"{args.max_new_tokens} tokens: vLLM {count / vllm_seconds:.1f} samples/s, HF batched "
          f"{count / hf_seconds:.1f} samples/s, ratio {hf_seconds / vllm_seconds:.2f}x")


if __name__ == "__main__":
    main()
