"""The bench's figure: held-out pass@1 against steps and rollouts, training reward, final scores."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .run import FINAL_METRICS


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (by_step, by_rollouts), (rewards, bars) = axes
    k = report["k"]
    for arm, values in report["arms"].items():
        curve = values["curve"]
        for axis, x_key in ((by_step, "step"), (by_rollouts, "rollouts")):
            x = [p[x_key] for p in curve]
            mean = [p["pass@1 T=1"]["mean"] for p in curve]
            ci = [p["pass@1 T=1"]["ci95"] for p in curve]
            (line,) = axis.plot(x, mean, marker="o", markersize=3, label=arm)
            axis.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                              color=line.get_color(), alpha=0.15)
        steps, per_batch = zip(*values["reward_mean_over_seeds"]) if values["reward_mean_over_seeds"] else ((), ())
        window = max(1, len(per_batch) // 20)
        smoothed = [statistics.mean(per_batch[max(0, i - window + 1): i + 1]) for i in range(len(per_batch))]
        rewards.plot(steps, smoothed, label=arm)
    by_step.set(xlabel="training step", ylabel="held-out pass@1 at T=1", title="Held-out pass@1 (T=1) vs steps, 95% CI")
    by_rollouts.set(xlabel="rollouts (completions sampled)", ylabel="held-out pass@1 at T=1",
                    title="Held-out pass@1 (T=1) vs rollouts")
    rewards.set(xlabel="training step", ylabel="train reward (moving mean, mean of seeds)",
                title="Reward of each arm's own rollouts")
    names = [m.replace("@k", f"@{k}") for m in FINAL_METRICS]
    arms = list(report["arms"])
    width = 0.8 / (len(arms) + 1)
    bars.bar([x for x in range(len(names))], [report["start"][m] for m in FINAL_METRICS], width, label="start",
             color="lightgray")
    for i, arm in enumerate(arms, start=1):
        final = report["arms"][arm]["final"]
        bars.bar([x + i * width for x in range(len(names))], [final[m]["mean"] for m in FINAL_METRICS], width,
                 yerr=[final[m]["ci95"] for m in FINAL_METRICS], capsize=2, label=arm)
    bars.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, fontsize=9)
    bars.set(ylabel="held-out accuracy", title="After training (mean, 95% CI over seeds)")
    for axis in (by_step, by_rollouts, rewards, bars):
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    split = "validation" if report.get("split") == "validation" else "held-out"
    fig.suptitle(f"{report.get('held_out_prompts') or ''} {split} prompts, seeds {report['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
