"""Noisy preferences: ADPO (pairwise, listwise) against TRL's DPO at equal steps, on the tiny model.

Data. The tiny model warmed up on a task (`--setting quickstart`, the default: the quickstart's model and task, sums
of three one-digit numbers, where RL from this model learns; `--setting addition`: 2-digit addition, this
benchmark's first version, docs/adpo.md) samples `--candidates` answers for each of `--prompts` training prompts at
temperature 1; the task's verifier scores them (1 right, 0 wrong) and
the prompts with both kinds are kept. For a fraction `noise` of them the labels are reversed (pairwise: chosen and
rejected swapped; listwise: scores s -> 1 - s), the same prompts for every method of a seed.

Methods, trained from the same warmed model on the same prompts per step, the same steps and learning rate:
- dpo:       trl.DPOTrainer, sigmoid loss, --beta (hard labels; one right and one wrong answer per prompt);
- adpo_pair: ThermoADPOTrainer on the same pairs with soft labels q = sigmoid((s_chosen - s_rejected) / beta_r);
- adpo_list: ThermoADPOTrainer on all the prompt's answers, q = softmax(s / beta_r).
Both ADPO runs use --tau-anc and the fixed reference anchor.

Metric: greedy accuracy of the trained policy on the task's held-out prompts (never seen by the warm-up SFT nor in
the preference data). Writes JSON and a PNG.

    python benchmarks/adpo_noisy_preferences.py [--setting quickstart] [--steps 40] [--seeds 0 1 2] [--noise 0 0.2 0.4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

# task, training rows, held-out rows, warm-up examples and epochs. `quickstart` is the quickstart recipe's split and
# warm-up, so the warmed model comes from the same cache entry; `addition` is the quickstart of an earlier version.
SETTINGS = {
    "quickstart": ("arithmetic:digits=1,num_operands=3,ops=+", 700, 256, 700, 8.0),
    "addition": ("arithmetic:digits=2,ops=+", 6000, 256, 6000, 4.0),
}
MAX_NEW_TOKENS = 5
METHODS = ("dpo", "adpo_pair", "adpo_list")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="quickstart", choices=list(SETTINGS), help="model, task and prompts")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4], help="shares of reversed labels")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--prompts", type=int, default=None,
                        help="training prompts sampled for preference data (default: all of the setting's)")
    parser.add_argument("--candidates", type=int, default=4, help="answers sampled per prompt (listwise P)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per step")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    parser.add_argument("--tau-anc", type=float, default=1.0, help="ADPO anchor temperature")
    parser.add_argument("--beta-r", type=float, default=0.5, help="ADPO score temperature")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/adpo_noisy_preferences", help="path prefix of the .json and .png")
    return parser.parse_args(argv)


def greedy_accuracy(model, tokenizer, rows, task) -> float:
    from thermorl.evaluation.sampling import sample_completions

    completions = sample_completions(
        model, tokenizer, list(rows["prompt"]), [0.0], 1, MAX_NEW_TOKENS, batch_size=256, progress=False
    )
    return sum(task.is_correct(c[0][0], row) for c, row in zip(completions, rows)) / len(rows)


def sample_preference_pool(model_dir, tokenizer, rows, task, candidates: int) -> list[dict]:
    """Prompts whose sampled answers are both right and wrong: {prompt, answers, correct (0/1 per answer)}."""
    from thermorl.evaluation import load_policy
    from thermorl.evaluation.sampling import sample_completions

    model, _ = load_policy(model_dir, device="cpu", dtype="float32")
    completions = sample_completions(
        model, tokenizer, list(rows["prompt"]), [1.0], candidates, MAX_NEW_TOKENS, batch_size=512, progress=False
    )
    pool = []
    for answers, row in zip((c[0] for c in completions), rows):
        correct = [int(task.is_correct(a, row)) for a in answers]
        if 0 < sum(correct) < len(correct):
            pool.append({"prompt": row["prompt"], "answers": answers, "correct": correct})
    return pool


def noisy_datasets(pool: list[dict], noise: float, seed: int, beta_r: float):
    """(DPO pairs, ADPO soft pairs, ADPO lists) with the labels of a `noise` share of the prompts reversed."""
    from datasets import Dataset

    rng = random.Random(f"{seed}-{noise}")
    flipped = set(rng.sample(range(len(pool)), round(noise * len(pool))))
    soft = 1 / (1 + math.exp(-1 / beta_r))  # sigmoid((1 - 0) / beta_r): q of a right-over-wrong pair
    dpo, adpo_pair, adpo_list = [], [], []
    for i, item in enumerate(pool):
        right = rng.choice([a for a, c in zip(item["answers"], item["correct"]) if c])
        wrong = rng.choice([a for a, c in zip(item["answers"], item["correct"]) if not c])
        flip = i in flipped
        dpo.append({"prompt": item["prompt"], "chosen": wrong if flip else right, "rejected": right if flip else wrong})
        q = 1 - soft if flip else soft
        adpo_pair.append({"prompt": item["prompt"], "chosen": right, "rejected": wrong, "preference_probability": q})
        scores = [float(1 - c if flip else c) for c in item["correct"]]
        adpo_list.append({"prompt": item["prompt"], "completions": item["answers"], "scores": scores})
    return Dataset.from_list(dpo), Dataset.from_list(adpo_pair), Dataset.from_list(adpo_list)


def train_once(method: str, model_dir: str, data, args, seed: int, out_dir: str):
    from trl import DPOConfig, DPOTrainer

    from thermorl.trainers import ThermoADPOConfig, ThermoADPOTrainer

    common = dict(
        output_dir=out_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
        disable_tqdm=True, logging_steps=max(1, args.steps // 4), seed=seed, learning_rate=args.learning_rate,
        lr_scheduler_type="constant", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        max_length=32, beta=args.beta,
    )
    if method == "dpo":
        trainer = DPOTrainer(model_dir, args=DPOConfig(**common), train_dataset=data)
    else:
        config = ThermoADPOConfig(**common, tau_anc=args.tau_anc, beta_r=args.beta_r)
        trainer = ThermoADPOTrainer(model_dir, args=config, train_dataset=data)
    trainer.train()
    return trainer.model


def plot(summary: dict, start_accuracy: float, noise_levels: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [100 * n for n in noise_levels]
    for method, label in (("dpo", "TRL DPO"), ("adpo_pair", "ADPO pairwise (soft)"), ("adpo_list", "ADPO listwise")):
        if method in summary:
            means = [summary[method][str(n)]["mean"] for n in noise_levels]
            stds = [summary[method][str(n)]["std"] for n in noise_levels]
            ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.axhline(start_accuracy, color="grey", linestyle="--", label="warmed start")
    ax.set_xlabel("labels reversed (%)")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    from transformers import AutoTokenizer

    from thermorl.evaluation import load_policy
    from thermorl.models.warmup import WarmupSettings, warm_tiny_model
    from thermorl.tasks import task_from_spec

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    task_spec, train_size, held_out_size, warmup_examples, warmup_epochs = SETTINGS[args.setting]
    task = task_from_spec(task_spec)
    train_rows, held_out = task.make_splits(train_size, held_out_size, seed=0)
    args.prompts = min(args.prompts or train_size, train_size)
    settings = WarmupSettings(task=task_spec, examples=warmup_examples, epochs=warmup_epochs)
    model_dir = warm_tiny_model(settings, held_out_prompts=list(held_out["prompt"]))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    start_model, _ = load_policy(model_dir, device="cpu", dtype="float32")
    start_accuracy = greedy_accuracy(start_model, tokenizer, held_out, task)
    pool = sample_preference_pool(model_dir, tokenizer, train_rows.select(range(args.prompts)), task, args.candidates)
    print(f"warmed start: {start_accuracy:.3f} greedy; {len(pool)}/{args.prompts} prompts with right and wrong answers",
          flush=True)

    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for noise in args.noise:
                datasets = dict(zip(METHODS, noisy_datasets(pool, noise, seed, args.beta_r)))
                for method in args.methods:
                    t0 = time.perf_counter()
                    model = train_once(method, model_dir, datasets[method], args, seed, scratch)
                    accuracy = greedy_accuracy(model, tokenizer, held_out, task)
                    runs.append({"method": method, "noise": noise, "seed": seed, "accuracy": accuracy,
                                 "seconds": round(time.perf_counter() - t0, 1)})
                    print(json.dumps(runs[-1]), flush=True)

    summary = {}
    for method in args.methods:
        summary[method] = {}
        for noise in args.noise:
            values = torch.tensor([r["accuracy"] for r in runs if r["method"] == method and r["noise"] == noise])
            std = values.std().item() if len(values) > 1 else 0.0
            summary[method][str(noise)] = {"mean": values.mean().item(), "std": std, "n": len(values)}
    result = {
        "task": task_spec, "model": model_dir, "start_accuracy": start_accuracy, "pool_prompts": len(pool),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "summary": summary, "runs": runs,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(summary, start_accuracy, args.noise, out.with_suffix(".png"))
    for method in args.methods:
        cells = "  ".join(f"{100 * float(n):.0f}%: {s['mean']:.3f}±{s['std']:.3f}" for n, s in summary[method].items())
        print(f"{method:10s} {cells}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} in {result['minutes']} min")


if __name__ == "__main__":
    main()
