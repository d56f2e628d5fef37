"""`thermorl quickstart`: the offline main job.

Warm up the tiny model on a built-in task (cached), measure its accuracy on held-out prompts, train it with SAPO
on the CPU through the same recipe path as any run, measure again, and say where everything went. The demo replaces
its own folder (outputs/quickstart) on every run; given another `--output_dir`, it refuses one that holds a run, as
`thermorl train` does, unless `--overwrite_output_dir true`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import UserError

# Greedy shows what the policy knows; temperature 1 is the distribution RL samples from and sharpens.
ACCURACY_TEMPERATURES = (0.0, 1.0)
SAMPLES_PER_PROMPT = 4


def held_out_accuracy(model_path: str, held_out, task, max_new_tokens: int, seed: int) -> dict[str, float]:
    from .evaluation import evaluate, load_policy

    model, tokenizer = load_policy(model_path, device="cpu", dtype="float32")
    report = evaluate(
        model, tokenizer, held_out, task,
        temperatures=ACCURACY_TEMPERATURES, samples=SAMPLES_PER_PROMPT,
        max_new_tokens=max_new_tokens, batch_size=256, seed=seed, progress=False,
    )
    return {f"T={row['temperature']:g}": row["accuracy"] for row in report["per_temperature"]}


def quickstart(overrides: list[str] | dict | None = None) -> dict | None:
    from . import threads
    from .recipe import parse_overrides, recipe_configs, resolve_recipe
    from .run_dir import refuse_other_run
    from .recipe_inputs import build_datasets, resolve_model_path
    from .train import train

    started = time.perf_counter()
    overrides = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    if not {"output_dir", "overwrite_output_dir"} & overrides.keys():
        overrides["overwrite_output_dir"] = True  # the demo's own folder: the previous demo run is replaced
    recipe_values = resolve_recipe("quickstart", overrides)
    model_args, training_args, script_args = recipe_configs(recipe_values)
    _, held_out, task = build_datasets(script_args, training_args.seed)
    if task is None:
        raise UserError("quickstart measures accuracy with a built-in task's verifier; set dataset to one.")
    if training_args.resume_from_checkpoint is None:  # said now, not after the warm-up and the first measurement
        refuse_other_run(training_args.output_dir, script_args.overwrite_output_dir)

    threads.use_fastest_before_warmup(model_args, training_args, script_args.tiny_model_size)
    print(f"[1/4] Tiny model warmed up on '{script_args.dataset}' (cached after the first run)...", flush=True)
    start_model = resolve_model_path(model_args.model_name_or_path, script_args, held_out)
    new_tokens = training_args.max_completion_length
    print(f"[2/4] Accuracy on {len(held_out)} held-out prompts before RL...", flush=True)
    before = held_out_accuracy(start_model, held_out, task, new_tokens, training_args.seed)
    print("      " + ", ".join(f"{k}: {v:.1%}" for k, v in before.items()), flush=True)

    print(f"[3/4] Training with '{training_args.policy_loss}' for {training_args.max_steps} steps on the CPU...", flush=True)
    model_args.model_name_or_path = start_model
    trainer = train(model_args, training_args, script_args, recipe_values=recipe_values)
    if trainer is None:  # a resumed run that was complete: train() said so
        return None
    reward_curve = [(e["step"], e["reward"]) for e in trainer.state.log_history if "reward" in e]

    print("[4/4] Accuracy on the same held-out prompts after RL...", flush=True)
    after = held_out_accuracy(training_args.output_dir, held_out, task, new_tokens, training_args.seed)
    print("      " + ", ".join(f"{k}: {v:.1%}" for k, v in after.items()), flush=True)

    result = {
        "task": script_args.dataset,
        "policy_loss": training_args.policy_loss,
        "steps": trainer.state.global_step,
        "held_out_prompts": len(held_out),
        "accuracy_before": before,
        "accuracy_after": after,
        "reward_curve": reward_curve,
        "start_model": start_model,
        "output_dir": training_args.output_dir,
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }
    out = Path(training_args.output_dir)
    (out / "quickstart_result.json").write_text(json.dumps(result, indent=2))
    _print_summary(result, out)
    return result


def _print_summary(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Held-out accuracy, {result['held_out_prompts']} prompts x {SAMPLES_PER_PROMPT} samples")
    table.add_column("decoding")
    table.add_column("before RL", justify="right")
    table.add_column("after RL", justify="right")
    for key, value in result["accuracy_before"].items():
        label = "greedy" if key == "T=0" else f"sampled, {key}"
        table.add_row(label, f"{value:.1%}", f"{result['accuracy_after'][key]:.1%}")
    console = Console()
    console.print(table)
    first, last = result["reward_curve"][0][1], result["reward_curve"][-1][1]
    console.print(f"Training reward: {first:.3f} at step {result['reward_curve'][0][0]} -> {last:.3f} at step "
                  f"{result['reward_curve'][-1][0]}")
    console.print(f"Checkpoint: {out} (loads with AutoModelForCausalLM.from_pretrained)")
    console.print(f"Metrics: {out / 'trainer_state.json'} (log_history), summary: {out / 'quickstart_result.json'}")
    console.print(f"Took {result['minutes']} minutes.")
