"""One GRPO step on a real model on this CPU: SmolLM2-135M-Instruct (`thermorl:smollm2-135m`), 64 completions
(8 prompts x 8) of up to 64 tokens on the demo task (chat_arithmetic), SAPO loss.

Each setting runs ThermoGRPOTrainer (the registry's sapo) and TRL's own GRPOTrainer(loss_type="sapo") on the same
model, prompts, seed and settings, alternating which goes first, and prints per trainer the median seconds per
step (TRL's `step_time`, the first step left out as warm-up), completion tokens per second, and the mean reward and
loss of the steps, so a faster setting can be checked for changing what is learned. The ratio thermorl / TRL is
the overhead of thermorl's code in that setting; the ratio of a setting to `fp32` (same trainer, same run) is what
the setting buys. A generation-only line times `model.generate` of the same 64 x 64 tokens.

Settings: fp32 (float32 weights and compute), bf16 (bf16 mixed precision: float32 master weights, bfloat16 autocast
for generation and the loss forward; AMX on CPUs that have it), lora (LoRA r 16 on every projection), threads.

    OMP_NUM_THREADS=2 python benchmarks/smollm2_step.py [--steps 4] [--settings fp32,bf16,lora,lora-bf16] \
        [--threads 1,2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from thermorl.models.names import resolve_named_model
from thermorl.tasks import task_from_spec
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer

SETTINGS = {
    "fp32": dict(bf16=False, lora=False),
    "bf16": dict(bf16=True, lora=False),
    "lora": dict(bf16=False, lora=True),
    "lora-bf16": dict(bf16=True, lora=True),
}
COMPLETIONS, TOKENS = 64, 64


def make_trainer(kind: str, model_dir: str, dataset, out: str, steps: int, bf16: bool, lora: bool):
    common = dict(
        output_dir=out, use_cpu=True, bf16=bf16, gradient_checkpointing=False, max_steps=steps,
        per_device_train_batch_size=COMPLETIONS, num_generations=8, max_completion_length=TOKENS,
        learning_rate=2e-4 if lora else 2e-5, lr_scheduler_type="constant", beta=0.0, temperature=1.0,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
        loss_type="sapo", sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]) if lora else None
    task = task_from_spec("chat_arithmetic")
    trainer_class, config_class = ((ThermoGRPOTrainer, ThermoGRPOConfig) if kind == "thermorl"
                                   else (GRPOTrainer, GRPOConfig))
    return trainer_class(model=model_dir, reward_funcs=task.reward_funcs, args=config_class(**common),
                         train_dataset=dataset, peft_config=peft_config)


def run_steps(trainer) -> dict[str, float]:
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    timed = logs[1:]  # the first step warms up
    seconds = statistics.median(entry["step_time"] for entry in timed)
    tokens = statistics.mean(entry["completions/mean_length"] for entry in timed) * COMPLETIONS
    return {"seconds": seconds, "tokens_per_s": tokens / seconds,
            "reward": statistics.mean(entry["reward"] for entry in logs),
            "loss": statistics.mean(entry["loss"] for entry in logs)}


def generation_seconds(model_dir: str, dataset, bf16: bool) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
             for row in dataset.select(range(COMPLETIONS // 8)) for _ in range(8)]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=True, temperature=1.0,
                       pad_token_id=tokenizer.eos_token_id)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--settings", default="fp32,bf16,lora,lora-bf16")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    settings = args.settings.split(",")
    unknown = [name for name in settings if name not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; known: {list(SETTINGS)}")

    model_dir = resolve_named_model("thermorl:smollm2-135m")
    dataset, _ = task_from_spec("chat_arithmetic").make_splits(512, 8, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            for precision in ("fp32", "bf16"):
                if precision in settings:
                    rows.append((f"generate {COMPLETIONS}x{TOKENS}", precision, threads,
                                 {"seconds": generation_seconds(model_dir, dataset, precision == "bf16")}))
            for i, name in enumerate(settings):
                order = ["thermorl", "trl"] if i % 2 == 0 else ["trl", "thermorl"]
                for kind in order:
                    trainer = make_trainer(kind, model_dir, dataset, f"{tmp}/{name}-{kind}", args.steps,
                                           **SETTINGS[name])
                    rows.append((kind, name, threads, run_steps(trainer)))
                    del trainer

    print(f"SmolLM2-135M-Instruct, one GRPO step of {COMPLETIONS} completions x <= {TOKENS} tokens, "
          f"{args.steps} steps each (first left out)")
    print(f"{'what':<16} {'setting':<10} {'threads':>7} {'s/step':>8} {'tok/s':>7} {'reward':>7} {'loss':>8} "
          f"{'/TRL':>6} {'/fp32':>6}")
    measured = {(kind, name, threads): result for kind, name, threads, result in rows}
    for kind, name, threads, result in rows:
        if kind.startswith("generate"):
            base = measured.get((kind, "fp32", threads))
            print(f"{kind:<16} {name:<10} {threads:>7} {result['seconds']:8.1f} {'':>7} {'':>7} {'':>8} {'':>6} "
                  f"{result['seconds'] / base['seconds'] if base else float('nan'):6.2f}")
            continue
        trl, fp32 = measured.get(("trl", name, threads)), measured.get((kind, "fp32", threads))
        print(f"{kind:<16} {name:<10} {threads:>7} {result['seconds']:8.1f} {result['tokens_per_s']:7.1f} "
              f"{result['reward']:7.3f} {result['loss']:8.4f} {result['seconds'] / trl['seconds']:6.3f} "
              f"{result['seconds'] / fp32['seconds'] if fp32 else float('nan'):6.2f}")


if __name__ == "__main__":
    main()
