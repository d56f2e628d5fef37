"""Variance-aware prompt sampling vs uniform sampling where many prompts start all-wrong or all-right.

Default setting (`--setting quickstart`, where uniform sampling learns): the quickstart's model (warmed up on sums
of three one-digit numbers, the same cache) is trained with SAPO at the quickstart's learning rate (5e-5, 300 steps)
on a mix of two difficulties: sums of three one-digit numbers (the quickstart's task; drawn with their own seed, so
some are among the quickstart's held-out prompts, which does not matter here: the metric is the pass rate on the
training prompts; at T=1 many come back all-wrong in 16 samples, none all-right) and sums of four (never
seen in the warm-up: almost all-wrong). `--setting addition` is the first version of this benchmark: the model warmed up on 2-digit addition,
2- and 3-digit additions, learning rate 1e-4 and 60 steps, where no arm learned (docs/vas.md).
Each arm (see ARMS) runs the same number of steps for each seed.
Measured per run:
  - zero-variance share: TRL's frac_reward_zero_std, the share of groups in the training batches whose rewards are
    all equal (no gradient from them), averaged over the run and over its last quarter;
  - training reward (what the sampled batches scored: VAS picks harder prompts, so it is not a skill measure);
  - the final policy's pass rate over the whole prompt set, `--eval-samples` completions per prompt at T=1, every
    prompt weighted equally (a fair "reward after equal steps"), and its share of prompts at pass rate 0 or 1;
  - cost: wall time, and for rollout mode the re-roll's completions and tokens relative to training's.
Writes `--out`/results.json (every run) and `--out`/vas_zero_variance.png. The quickstart setting (5 arms x 3 seeds x
300 steps) takes ~45 minutes on one core; `--setting addition` ~15 minutes.

    python benchmarks/vas_zero_variance.py --seeds 0 1 2 --out outputs/vas_zero_variance
    python benchmarks/vas_zero_variance.py --setting addition --out outputs/vas_zero_variance_addition
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# Each setting: the task the model is warmed up on (and whose verifier scores every level: the row's answer
# decides), the prompt levels, the learning rate and the steps.
SETTINGS = {
    "quickstart": {"warm_task": "arithmetic:digits=1,num_operands=3,ops=+",
                   "levels": ("arithmetic:digits=1,num_operands=3,ops=+", "arithmetic:digits=1,num_operands=4,ops=+"),
                   "learning_rate": 5e-5, "steps": 300},
    "addition": {"warm_task": "arithmetic:digits=2,ops=+",
                 "levels": ("arithmetic:digits=2,ops=+", "arithmetic:digits=3,ops=+"),
                 "learning_rate": 1e-4, "steps": 60},
}
# Sampling arms: TRL's uniform RepeatSampler, VAS with the paper's VPS weights (alpha 0.8, beta 0.2) in both modes,
# and both modes with the outcome variance alone (beta 0): diverse wrong answers give all-wrong prompts TDS > 0.
ARMS = {
    "uniform": {},
    "online": {"vas_mode": "online"},
    "rollout": {"vas_mode": "rollout"},
    "online-ovs": {"vas_mode": "online", "vas_beta": 0.0},
    "rollout-ovs": {"vas_mode": "rollout", "vas_beta": 0.0},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="quickstart", choices=list(SETTINGS), help="Model, prompts, lr, steps.")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per run (default: the setting's).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--prompts-per-level", type=int, default=96, help="Prompts of each difficulty.")
    parser.add_argument("--update-interval", type=int, default=20, help="vas_update_interval (rollout mode).")
    parser.add_argument("--rollouts-per-prompt", type=int, default=8, help="vas_rollouts_per_prompt (rollout mode).")
    parser.add_argument("--eval-samples", type=int, default=16, help="Completions per prompt for the pass rates.")
    parser.add_argument("--batch-prompts", type=int, default=8, help="Prompts per step (x num_generations 8).")
    parser.add_argument("--out", default="outputs/vas_zero_variance", help="results.json, vas_zero_variance.png, runs/")
    parser.add_argument("--replot", action="store_true", help="Only redraw the PNG from `--out`/results.json.")
    return parser.parse_args(argv)


def warmed_model(setting: str) -> str:
    """The quickstart setting takes the quickstart's own warmed-up model (same cache, held-out prompts excluded)."""
    if setting == "quickstart":
        from thermorl.recipe import load_recipe
        from thermorl.train import build_datasets, resolve_model_path

        model_args, training_args, script_args = load_recipe("quickstart", [])
        _, held_out, _ = build_datasets(script_args, training_args.seed)
        return resolve_model_path(model_args.model_name_or_path, script_args, held_out)
    from thermorl.models.warmup import WarmupSettings, warm_tiny_model

    return warm_tiny_model(WarmupSettings(task=SETTINGS[setting]["warm_task"], examples=6000, epochs=4))


def mixed_dataset(levels, prompts_per_level: int):
    from datasets import concatenate_datasets

    from thermorl.tasks import task_from_spec

    parts = []
    for level, spec in enumerate(levels):
        part = task_from_spec(spec).make_dataset(prompts_per_level, seed=10_000 + level)
        parts.append(part.add_column("level", [level] * len(part)))
    return concatenate_datasets(parts)


@torch.no_grad()
def pass_rates(model, tokenizer, dataset, task, samples: int, max_new_tokens: int, seed: int) -> list[float]:
    """Per-prompt share of `samples` completions at T=1 that `task`'s verifier accepts."""
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    rates = []
    for start in range(0, len(dataset), 64):
        rows = dataset.select(range(start, min(start + 64, len(dataset))))
        encoded = tokenizer(list(rows["prompt"]), return_tensors="pt", padding=True, padding_side="left")
        output = model.generate(
            **encoded, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, row in enumerate(rows):
            group = texts[i * samples : (i + 1) * samples]
            rates.append(sum(task.is_correct(text, row) for text in group) / samples)
    model.train(was_training)
    return rates


def summarize_rates(rates: list[float], levels: list[int], num_levels: int) -> dict:
    return {
        "pass_rate": statistics.fmean(rates),
        "zero_variance_prompt_share": statistics.fmean(float(r in (0.0, 1.0)) for r in rates),
        "pass_rate_by_level": [
            statistics.fmean(r for r, lv in zip(rates, levels, strict=True) if lv == level)
            for level in range(num_levels)
        ],
        "all_wrong_share": statistics.fmean(float(r == 0.0) for r in rates),
        "all_right_share": statistics.fmean(float(r == 1.0) for r in rates),
    }


def run(arm: str, seed: int, model_path: str, dataset, options, setting: dict) -> dict:
    from transformers import AutoTokenizer

    from thermorl.tasks import task_from_spec
    from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer

    vas = ARMS[arm]
    if vas:
        vas = vas | {"vas_update_interval": options.update_interval, "vas_rollouts_per_prompt": options.rollouts_per_prompt}
    args = ThermoGRPOConfig(
        output_dir=os.path.join(options.out, "runs", f"{arm}-{seed}"), use_cpu=True, bf16=False, seed=seed,
        policy_loss="sapo", learning_rate=setting["learning_rate"], lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
        max_steps=options.steps, per_device_train_batch_size=8 * options.batch_prompts, num_generations=8,
        max_completion_length=5, temperature=1.0, logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=False, disable_tqdm=True, **vas,
    )
    task = task_from_spec(setting["warm_task"])  # every level shares the arithmetic verifier: the answer decides
    trainer = ThermoGRPOTrainer(model=model_path, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rates = pass_rates(trainer.model, tokenizer, dataset, task, options.eval_samples, 5, seed=1_000 + seed)
    last_quarter = logs[-max(1, len(logs) // 4) :]
    result = {
        "arm": arm,
        "seed": seed,
        "seconds": seconds,
        "zero_std_curve": [entry["frac_reward_zero_std"] for entry in logs],
        "reward_curve": [entry["reward"] for entry in logs],
        "zero_std_mean": statistics.fmean(entry["frac_reward_zero_std"] for entry in logs),
        "zero_std_last_quarter": statistics.fmean(entry["frac_reward_zero_std"] for entry in last_quarter),
        "train_reward_mean": statistics.fmean(entry["reward"] for entry in logs),
        "train_completions": len(logs) * args.generation_batch_size,
        "train_completion_tokens": sum(entry["completions/mean_length"] for entry in logs) * args.generation_batch_size,
        "final": summarize_rates(rates, list(dataset["level"]), len(setting["levels"])),
    }
    if vas.get("vas_mode") == "rollout":
        result["rescore_completions"] = logs[-1]["vas/rescore_completions"]
        result["rescore_tokens"] = logs[-1]["vas/rescore_tokens"]
        result["rescore_seconds"] = logs[-1]["vas/rescore_seconds"]
    return result


def aggregate(runs: list[dict], arms) -> dict:
    def mean_std(values):
        values = list(values)
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    summary = {}
    uniform_seconds = {r["seed"]: r["seconds"] for r in runs if r["arm"] == "uniform"}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            "zero_std_mean": mean_std(r["zero_std_mean"] for r in mine),
            "zero_std_last_quarter": mean_std(r["zero_std_last_quarter"] for r in mine),
            "train_reward_mean": mean_std(r["train_reward_mean"] for r in mine),
            "final_pass_rate": mean_std(r["final"]["pass_rate"] for r in mine),
            "final_zero_variance_prompt_share": mean_std(r["final"]["zero_variance_prompt_share"] for r in mine),
            "seconds": mean_std(r["seconds"] for r in mine),
        }
        if "rescore_completions" in mine[0]:
            summary[arm]["rescore_to_train_completions"] = mean_std(
                r["rescore_completions"] / r["train_completions"] for r in mine
            )
            summary[arm]["rescore_to_train_tokens"] = mean_std(
                r["rescore_tokens"] / r["train_completion_tokens"] for r in mine
            )
            summary[arm]["rescore_share_of_wall_time"] = mean_std(r["rescore_seconds"] / r["seconds"] for r in mine)
        if uniform_seconds and arm != "uniform":
            summary[arm]["wall_time_vs_uniform"] = mean_std(
                r["seconds"] / uniform_seconds[r["seed"]] for r in mine if r["seed"] in uniform_seconds
            )
    return summary


def plot(runs: list[dict], summary: dict, start: dict, path: str, arms) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "uniform": "tab:gray", "online": "tab:blue", "rollout": "tab:orange", "online-ovs": "tab:cyan",
        "rollout-ovs": "tab:red",
    }
    figure, (curves, shares, rates) = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)
    window = 10
    for arm in arms:
        mine = [r["zero_std_curve"] for r in runs if r["arm"] == arm]
        mean = [statistics.fmean(values) for values in zip(*mine, strict=True)]
        smooth = [statistics.fmean(mean[max(0, i - window + 1) : i + 1]) for i in range(len(mean))]
        curves.plot(range(1, len(smooth) + 1), smooth, label=arm, color=colors[arm])
    curves.set(xlabel="step", ylabel="share of groups", title=f"Zero-variance groups ({window}-step mean)")
    curves.legend(fontsize=8)
    for axes, key, title in (
        (shares, "zero_std_mean", "Zero-variance groups, run mean"),
        (rates, "final_pass_rate", "Pass rate after training (all prompts)"),
    ):
        values = [summary[arm][key] for arm in arms]
        axes.bar(range(len(arms)), [v["mean"] for v in values], yerr=[v["std"] for v in values], capsize=3,
                 color=[colors[arm] for arm in arms])
        axes.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
        axes.set_title(title + " (sd: seeds)", fontsize=10)
    rates.axhline(start["pass_rate"], color="black", linestyle="--", linewidth=1, label="before training")
    rates.legend(fontsize=8)
    low = min(summary[arm]["zero_std_mean"]["mean"] - summary[arm]["zero_std_mean"]["std"] for arm in arms)
    shares.set_ylim(max(0.0, low - 0.1), 1.0)
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> int:
    torch.set_num_threads(1)
    options = parse_args(argv)
    out = Path(options.out)
    if options.replot:
        report = json.loads((out / "results.json").read_text())
        arms = list(report["summary"])
        plot(report["runs"], report["summary"], report["start"], str(out / "vas_zero_variance.png"), arms)
        return 0
    setting = SETTINGS[options.setting]
    options.steps = options.steps or setting["steps"]
    model_path = warmed_model(options.setting)
    dataset = mixed_dataset(setting["levels"], options.prompts_per_level)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thermorl.tasks import task_from_spec

    start_rates = pass_rates(
        AutoModelForCausalLM.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path), dataset,
        task_from_spec(setting["warm_task"]), options.eval_samples, 5, seed=999,
    )
    start = summarize_rates(start_rates, list(dataset["level"]), len(setting["levels"]))
    print(f"start: {json.dumps(start)}", flush=True)

    # One JSON per finished run, so an interrupted benchmark resumes where it stopped (same settings only).
    finished = out / "runs"
    finished.mkdir(parents=True, exist_ok=True)
    settings_key = {k: v for k, v in vars(options).items() if k not in ("seeds", "arms", "out", "replot")}
    settings_key["model"] = model_path  # a different warm-up (its cache key is in the path) invalidates the runs
    runs = []
    for seed in options.seeds:
        for arm in options.arms:
            path = finished / f"{arm}-{seed}.json"
            saved = json.loads(path.read_text()) if path.exists() else None
            if saved is not None and saved["settings"] == settings_key:
                runs.append(saved["result"])
                print(f"{arm:10s} seed {seed}: finished earlier ({path})", flush=True)
                continue
            result = run(arm, seed, model_path, dataset, options, setting)
            path.write_text(json.dumps({"settings": settings_key, "result": result}))
            runs.append(result)
            print(
                f"{arm:10s} seed {seed}: zero-variance groups {result['zero_std_mean']:.3f} "
                f"(last quarter {result['zero_std_last_quarter']:.3f}), final pass rate "
                f"{result['final']['pass_rate']:.3f}, {result['seconds']:.0f} s",
                flush=True,
            )
    summary = aggregate(runs, options.arms)
    report = {"settings": vars(options), "levels": setting["levels"], "warm_task": setting["warm_task"], "start": start,
              "summary": summary, "runs": runs}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(runs, summary, start, str(out / "vas_zero_variance.png"), options.arms)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
