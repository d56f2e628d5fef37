"""Sample efficiency of annealed-temperature rollouts (EAD) on a built-in task, at equal training steps.

Arms (SAPO loss, same warmed-up tiny model, same steps, batch, learning rate and prompts):
  fixed-0.6 / fixed-1.0 / fixed-1.2   TRL's own `temperature` (TRL then trains the tempered policy, as verl does)
  ead                                 `temperature_schedule` (EAD rescaled to this task's short answers), TIS
  portfolio                           `temperature_portfolio` [0.6, 1.0, 1.2, ead] round-robin in each group, TIS
Each arm runs with every seed. Recorded: the training reward per step (under each arm's own sampling, so a curve
measures its rollouts rather than one common policy), and, after training, pass@1, pass@k and worst@k (all k samples
right, the paper's Worst@k) at evaluation temperatures 0.6 and 1.0, on held-out prompts and on as many training
prompts. Writes results.json and ead_sample_efficiency.png to --out.

The defaults are the quickstart's task, split, warm-up and learning rate (sums of three one-digit numbers, 300
steps), where fixed-temperature SAPO learns: ~45 min on one core. The first version of this benchmark ran
`--task arithmetic:digits=1 --steps 60 --train-prompts 160 --eval-prompts 40 --warmup-examples 160
--warmup-epochs 40 --max-new-tokens 6`, where no arm improved on the start (docs/ead.md).

    python benchmarks/ead_sample_efficiency.py --out outputs/ead_sample_efficiency
    python benchmarks/ead_sample_efficiency.py --steps 20 --seeds 0 --out /tmp/ead       # a smoke run
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from thermorl.evaluation.metrics import pass_at_k  # noqa: E402
from thermorl.evaluation.sampling import sample_completions  # noqa: E402
from thermorl.models.warmup import WarmupSettings, warm_tiny_model  # noqa: E402
from thermorl.tasks import task_from_spec  # noqa: E402
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer  # noqa: E402

# EAD's shape (hot first, cooling with the position, horizon d_s growing with the step) rescaled to answers of 1-2
# characters plus EOS: tau = 1.2, 0.55, 0.1 on tokens 0, 1, 2 at step 0; 1.2, 0.98, 0.71 at step 30. The paper's
# values (10 warm-up tokens at tau 1, horizon 20 * 25 tokens) would sample every token of these answers at tau 1.
TINY_EAD = {"type": "annealed", "tau_max": 1.2, "tau_min": 0.1, "warmup_tokens": 0, "d0": 2.0, "alpha": 0.1,
            "d_max": 8.0, "horizon_scale": 1.0}
ARMS = {
    "fixed-0.6": {"temperature": 0.6},
    "fixed-1.0": {"temperature": 1.0},
    "fixed-1.2": {"temperature": 1.2},
    "ead": {"temperature_schedule": TINY_EAD},
    "portfolio": {"temperature_portfolio": [0.6, 1.0, 1.2, TINY_EAD]},
}
EVAL_TEMPERATURES = [0.6, 1.0]
# (split, evaluation temperature, metric) shown in the plot and the printed table; k is filled in.
SHOWN = [("held_out", "1.0", "pass@1"), ("held_out", "1.0", "pass@{k}"), ("held_out", "1.0", "worst@{k}"),
         ("held_out", "0.6", "pass@1"), ("train", "1.0", "pass@1")]


def accuracy(model, tokenizer, task, rows, samples, max_new_tokens, seed):
    """{temperature: {pass@1, pass@k, worst@k}} over rows, k = samples drawn per prompt at each temperature."""
    completions = sample_completions(model, tokenizer, [row["prompt"] for row in rows], EVAL_TEMPERATURES, samples,
                                     max_new_tokens, batch_size=256, seed=seed, progress=False)
    scores = {}
    for t, temperature in enumerate(EVAL_TEMPERATURES):
        correct = [sum(task.is_correct(c, row) for c in completions[q][t]) for q, row in enumerate(rows)]
        scores[str(temperature)] = {
            "pass@1": statistics.mean(pass_at_k(samples, c, 1) for c in correct),
            f"pass@{samples}": statistics.mean(pass_at_k(samples, c, samples) for c in correct),
            f"worst@{samples}": statistics.mean(float(c == samples) for c in correct),
        }
    return scores


def evaluate_policy(model, tokenizer, task, eval_sets, args, seed):
    return {split: accuracy(model, tokenizer, task, rows, args.eval_samples, args.max_new_tokens, seed)
            for split, rows in eval_sets.items()}


def train_arm(model_dir, task, train, arm_config, seed, args, out_dir):
    config = ThermoGRPOConfig(
        output_dir=str(out_dir / "runs"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        disable_tqdm=True, logging_steps=1, seed=seed, max_steps=args.steps, learning_rate=args.learning_rate,
        lr_scheduler_type="constant", per_device_train_batch_size=args.batch_size, num_generations=args.generations,
        max_completion_length=args.max_new_tokens, beta=0.0, policy_loss="sapo",
        policy_loss_kwargs={"tau_pos": 1.0, "tau_neg": 1.05}, **arm_config,
    )
    trainer = ThermoGRPOTrainer(model=model_dir, reward_funcs=task.reward_funcs, args=config, train_dataset=train)
    trainer.remove_callback(PrinterCallback)  # one line per run instead of one per step
    trainer.train()
    return trainer.model, [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]


def mean_std(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def shown_names(k):
    return [(split, temperature, metric.format(k=k)) for split, temperature, metric in SHOWN]


def summarise(results, k):
    summary = {}
    for arm, runs in results["runs"].items():
        final_rewards = [statistics.mean(run["rewards"][-10:]) for run in runs]
        summary[arm] = {"train reward, last 10 steps": mean_std(final_rewards)}
        for split, temperature, metric in shown_names(k):
            summary[arm][f"{split} T{temperature} {metric}"] = mean_std(
                [run["eval"][split][temperature][metric] for run in runs]
            )
    return summary


def plot(results, k, path):
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.2))
    window = 10  # one step's reward is a 64-rollout estimate: smooth it
    for arm, runs in results["runs"].items():
        per_step = [statistics.mean(values) for values in zip(*(run["rewards"] for run in runs))]
        smoothed = [statistics.mean(per_step[max(0, i - window + 1) : i + 1]) for i in range(len(per_step))]
        curves.plot(range(1, len(per_step) + 1), smoothed, label=arm)
    curves.set(xlabel="training step", ylabel=f"train reward ({window}-step moving mean, mean of seeds)",
               title="Reward of each arm's own rollouts")
    curves.legend(fontsize=8)

    names = shown_names(k)
    labels = [f"{'held-out' if s == 'held_out' else 'train'}\nT{t} {m}" for s, t, m in names]
    heights = {"initial": ([results["initial"][s][t][m] for s, t, m in names], None)}
    for arm, values in results["summary"].items():
        cells = [values[f"{s} T{t} {m}"] for s, t, m in names]
        heights[arm] = ([c["mean"] for c in cells], [c["std"] for c in cells])
    width = 0.8 / len(heights)
    for i, (arm, (means, stds)) in enumerate(heights.items()):
        bars.bar([x + i * width for x in range(len(names))], means, width, yerr=stds, label=arm, capsize=2)
    bars.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], labels, fontsize=8)
    seeds = len(next(iter(results["runs"].values())))
    bars.set(ylabel="accuracy", title=f"Policies after {results['config']['steps']} steps ({seeds} seeds, ±std)")
    bars.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def print_table(results, k):
    names = shown_names(k)
    header = ["train reward"] + [f"{'ho' if s == 'held_out' else 'tr'} T{t} {m}" for s, t, m in names]
    print(f"\n{'arm':10s}" + "".join(f"{h:>17s}" for h in header))
    print(f"{'initial':10s}{'':>17s}" + "".join(f"{results['initial'][s][t][m]:17.3f}" for s, t, m in names))
    for arm, values in results["summary"].items():
        cells = [values["train reward, last 10 steps"]] + [values[f"{s} T{t} {m}"] for s, t, m in names]
        print(f"{arm:10s}" + "".join(f"{c['mean']:10.3f} ±{c['std']:5.3f}" for c in cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic:digits=1,num_operands=3,ops=+")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-new-tokens", type=int, default=5)
    parser.add_argument("--train-prompts", type=int, default=700)
    parser.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts (and training prompts scored)")
    parser.add_argument("--eval-samples", type=int, default=16, help="k of pass@k and worst@k")
    parser.add_argument("--warmup-examples", type=int, default=700)
    parser.add_argument("--warmup-epochs", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/ead_sample_efficiency")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    task = task_from_spec(args.task)
    train, held_out = task.make_splits(args.train_prompts, args.eval_prompts, seed=0)
    model_dir = warm_tiny_model(
        WarmupSettings(task=args.task, examples=args.warmup_examples, epochs=args.warmup_epochs),
        held_out_prompts=list(held_out["prompt"]),
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eval_sets = {"held_out": list(held_out), "train": list(train)[: args.eval_prompts]}
    initial = evaluate_policy(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, task, eval_sets, args, 0)
    results = {"config": vars(args), "tiny_ead_schedule": TINY_EAD, "initial": initial, "runs": {}}
    start = time.perf_counter()
    for seed in args.seeds:
        for arm in args.arms:
            model, rewards = train_arm(model_dir, task, train, ARMS[arm], seed, args, out_dir)
            scores = evaluate_policy(model, tokenizer, task, eval_sets, args, seed)
            results["runs"].setdefault(arm, []).append({"seed": seed, "rewards": rewards, "eval": scores})
            print(f"[{time.perf_counter() - start:5.0f}s] seed {seed} {arm:10s} train reward (last 10) "
                  f"{statistics.mean(rewards[-10:]):.3f}, held-out T1.0 pass@1 "
                  f"{scores['held_out']['1.0']['pass@1']:.3f}", flush=True)
    results["summary"] = summarise(results, args.eval_samples)
    results["seconds"] = time.perf_counter() - start
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.eval_samples, out_dir / "ead_sample_efficiency.png")
    print_table(results, args.eval_samples)
    print(f"\n{len(args.seeds)} seeds x {len(args.arms)} arms x {args.steps} steps in {results['seconds']:.0f}s; "
          f"wrote {out_dir / 'results.json'} and {out_dir / 'ead_sample_efficiency.png'}")


if __name__ == "__main__":
    main()
