"""The multi-temperature evaluation report: JSON summary, per-question CSV, PNG plots, terminal table.

Everything is computed from two tables indexed [question][temperature][sample]: extracted answers
and correctness flags, plus the per-question results of multi-temperature voting.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from .metrics import (
    best_single_temperature,
    k_grid,
    maj_at_k,
    pass_at_all,
    single_temperature_pass_at_k,
    spread_pass_at_budget,
    voted_answer_correct,
)
from .voting import VoteResult


def summarize(
    temperatures: Sequence[float],
    answer_table: Sequence[Sequence[Sequence[Hashable | None]]],
    correct_table: Sequence[Sequence[Sequence[bool]]],
    votes: Sequence[VoteResult],
    vote_threshold: float,
    vote_round_size: int,
) -> dict[str, Any]:
    """The report's numbers (all fractions in [0, 1] except sample counts)."""
    num_questions, num_temperatures = len(correct_table), len(temperatures)
    samples = len(correct_table[0][0])
    ks = k_grid(samples)
    per_temperature = []
    for t, temperature in enumerate(temperatures):
        per_temperature.append(
            {
                "temperature": temperature,
                "accuracy": _mean(sum(q[t]) / samples for q in correct_table),
                "pass_at_k": {str(k): single_temperature_pass_at_k(correct_table, t, k) for k in ks},
                "maj_at_k": {
                    str(k): _mean(
                        maj_at_k(answers[t], correct[t], k) for answers, correct in zip(answer_table, correct_table)
                    )
                    for k in ks
                },
            }
        )
    pass_at_all_curve = [
        {
            "samples_per_temperature": k,
            "total_samples": k * num_temperatures,
            "pass_at_all": pass_at_all(correct_table, k),
        }
        for k in ks
    ]
    # At a total budget b (<= K, so that pass@b of one temperature can be estimated): the best single
    # temperature's pass@b against the same b samples spread evenly over every temperature.
    equal_budget_curve = []
    for budget in ks:
        best_temperature, best_pass = best_single_temperature(correct_table, temperatures, budget)
        equal_budget_curve.append(
            {
                "total_samples": budget,
                "spread_over_temperatures": spread_pass_at_budget(correct_table, budget),
                "best_single_temperature": best_temperature,
                "best_single_pass_at_k": best_pass,
            }
        )
    vote_correct = [
        _vote_correct(answers, correct, vote) for answers, correct, vote in zip(answer_table, correct_table, votes)
    ]
    budget = samples * num_temperatures
    return {
        "num_questions": num_questions,
        "samples_per_temperature": samples,
        "temperatures": list(temperatures),
        "per_temperature": per_temperature,
        "pass_at_all": pass_at_all(correct_table),
        "pass_at_all_curve": pass_at_all_curve,
        "best_single_temperature": {
            "temperature": equal_budget_curve[-1]["best_single_temperature"],
            "pass_at_k": equal_budget_curve[-1]["best_single_pass_at_k"],
            "total_samples": samples,
        },
        "equal_budget_curve": equal_budget_curve,
        "voting": {
            "threshold": vote_threshold,
            "round_size": vote_round_size,
            "accuracy": _mean(vote_correct),
            "mean_samples_used": _mean(vote.samples_used for vote in votes),
            "budget_per_question": budget,
            "samples_used_fraction": _mean(vote.samples_used / budget for vote in votes),
            "early_exit_rate": _mean(vote.exited_early for vote in votes),
        },
    }


def _vote_correct(answers, correct, vote: VoteResult) -> bool:
    return voted_answer_correct(
        [a for samples in answers for a in samples], [c for samples in correct for c in samples], vote.answer
    )


def _mean(values) -> float:
    values = [float(value) for value in values]
    return sum(values) / len(values)


def write_question_csv(
    path: Path,
    rows: Sequence[dict[str, Any]],
    temperatures: Sequence[float],
    answer_table,
    correct_table,
    votes: Sequence[VoteResult],
) -> None:
    """One line per question: prompt, reference, correct count per temperature, vote outcome."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["question", "prompt", "reference", "solved_any", "vote_answer", "vote_correct", "vote_samples_used"]
            + [f"correct@T={temperature:g}" for temperature in temperatures]
        )
        for index, (row, answers, correct, vote) in enumerate(zip(rows, answer_table, correct_table, votes)):
            writer.writerow(
                [
                    index,
                    row["prompt"],
                    row.get("answer", ""),
                    int(any(any(samples) for samples in correct)),
                    "" if vote.answer is None else vote.answer,
                    int(_vote_correct(answers, correct, vote)),
                    vote.samples_used,
                ]
                + [sum(samples) for samples in correct]
            )


def write_samples_jsonl(path: Path, temperatures, completions, answer_table, correct_table) -> None:
    """Every completion with its temperature, extracted answer and correctness, for inspection."""
    with open(path, "w") as file:
        for question, (texts, answers, correct) in enumerate(zip(completions, answer_table, correct_table)):
            for t, temperature in enumerate(temperatures):
                for sample, text in enumerate(texts[t]):
                    record = {
                        "question": question,
                        "temperature": temperature,
                        "sample": sample,
                        "completion": text,
                        "answer": answers[t][sample],
                        "correct": bool(correct[t][sample]),
                    }
                    file.write(json.dumps(record) + "\n")


def plot(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """pass_at_k.png (pass@k per temperature and the Pass@All curve), equal_budget.png, accuracy_vs_temperature.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out_dir / "pass_at_k.png", out_dir / "equal_budget.png", out_dir / "accuracy_vs_temperature.png"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    count = len(report["per_temperature"])
    colors = plt.cm.coolwarm([i / max(1, count - 1) for i in range(count)])
    for row, color in zip(report["per_temperature"], colors):
        ks = [int(k) for k in row["pass_at_k"]]
        axes.plot(ks, list(row["pass_at_k"].values()), marker=".", color=color, label=f"T={row['temperature']:g}")
    curve = report["pass_at_all_curve"]
    axes.plot(
        [point["samples_per_temperature"] for point in curve],
        [point["pass_at_all"] for point in curve],
        "k-o",
        linewidth=2,
        label="Pass@All (k at every T)",
    )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("k (samples per temperature)")
    axes.set_ylabel("pass@k")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(paths[0], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    curve = report["equal_budget_curve"]
    budgets = [point["total_samples"] for point in curve]
    spread = [point["spread_over_temperatures"] for point in curve]
    axes.plot(budgets, spread, "k-o", label="spread over all temperatures")
    axes.plot(budgets, [point["best_single_pass_at_k"] for point in curve], "s--", label="best single temperature")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("samples per question (total budget)")
    axes.set_ylabel("pass rate")
    axes.set_ylim(-0.02, 1.02)
    axes.legend()
    figure.tight_layout()
    figure.savefig(paths[1], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    temperatures = [row["temperature"] for row in report["per_temperature"]]
    full = str(report["samples_per_temperature"])
    axes.plot(temperatures, [row["accuracy"] for row in report["per_temperature"]], "o-", label="accuracy (mean@K)")
    axes.plot(temperatures, [row["maj_at_k"][full] for row in report["per_temperature"]], "s--", label=f"maj@{full}")
    axes.plot(temperatures, [row["pass_at_k"][full] for row in report["per_temperature"]], "^:", label=f"pass@{full}")
    axes.set_xlabel("temperature")
    axes.set_ylabel("fraction of questions")
    axes.set_ylim(-0.02, 1.02)
    axes.legend()
    figure.tight_layout()
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    return paths


def print_table(report: dict[str, Any], console=None) -> None:
    """Per-temperature table and the multi-temperature summary lines, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ks = list(report["per_temperature"][0]["pass_at_k"])
    full = str(report["samples_per_temperature"])
    table = Table(title=f"{report['num_questions']} questions, {full} samples per temperature")
    for header in ["T", "accuracy", *[f"pass@{k}" for k in ks], f"maj@{full}"]:
        table.add_column(header, justify="right")
    for row in report["per_temperature"]:
        table.add_row(
            f"{row['temperature']:g}",
            f"{row['accuracy']:.3f}",
            *[f"{row['pass_at_k'][k]:.3f}" for k in ks],
            f"{row['maj_at_k'][full]:.3f}",
        )
    console.print(table)
    best, equal = report["best_single_temperature"], report["equal_budget_curve"][-1]
    total = report["samples_per_temperature"] * len(report["temperatures"])
    console.print(
        f"Pass@All ({total} samples per question): {report['pass_at_all']:.3f}   "
        f"best single temperature T={best['temperature']:g}: pass@{full} {best['pass_at_k']:.3f}"
    )
    console.print(
        f"Equal budget of {full} samples per question: spread over all temperatures "
        f"{equal['spread_over_temperatures']:.3f} vs best single temperature {equal['best_single_pass_at_k']:.3f}"
    )
    voting = report["voting"]
    console.print(
        f"Multi-temperature vote: accuracy {voting['accuracy']:.3f}, {voting['mean_samples_used']:.1f} of "
        f"{voting['budget_per_question']} samples per question ({voting['samples_used_fraction']:.0%}), "
        f"early exit on {voting['early_exit_rate']:.0%}"
    )


def write_report(
    out_dir: Path, report: dict[str, Any], rows, completions, answer_table, correct_table, votes
) -> dict[str, str]:
    """Write report.json, questions.csv, samples.jsonl and the plots; returns their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    temperatures = report["temperatures"]
    paths = {
        "report": out_dir / "report.json",
        "questions": out_dir / "questions.csv",
        "samples": out_dir / "samples.jsonl",
    }
    write_question_csv(paths["questions"], rows, temperatures, answer_table, correct_table, votes)
    write_samples_jsonl(paths["samples"], temperatures, completions, answer_table, correct_table)
    paths["pass_at_k_plot"], paths["equal_budget_plot"], paths["accuracy_plot"] = plot(report, out_dir)
    files = {name: str(path) for name, path in paths.items()}
    paths["report"].write_text(json.dumps({**report, "files": files}, indent=2))
    return files
