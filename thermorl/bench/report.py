"""The bench's report from the finished runs' JSONs: means and intervals over seeds, pass@1 by evaluation
temperature, paired comparisons with the baseline, the test-time-scaling table; as report.json and markdown."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .run import FINAL_METRICS, GRID_METRICS, VOTE_METRICS
from .arms import DEFAULT_SIGNALS, pairs
from .stats import compare_pairs, mean_interval


def extra_rollouts_at(run: dict[str, Any], step: int) -> float:
    """Completions a run sampled outside its training batches up to `step` (VAS re-rolls; 0 for other arms)."""
    logged = [count for at, count in run.get("extra_rollouts", []) if at <= step]
    return logged[-1] if logged else 0.0


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    """A run's final numbers by name: FINAL_METRICS, "pass@1 T=t" at each grid temperature, and the grid's
    metrics. A number the run does not hold (a run written before it existed, a vote metric where not applicable)
    is absent, so that it is reported as missing rather than failing the report."""
    metrics = dict(run.get("final") or {})
    grid = run.get("grid") or {}
    metrics.update({f"pass@1 T={t}": value for t, value in (grid.get("per temperature pass@1") or {}).items()})
    metrics.update({metric: grid[metric] for metric in GRID_METRICS if grid.get(metric) is not None})
    return metrics


def temperature_columns(temperatures: list[float] | None) -> list[str]:
    """The pass@1 metrics that compare arms at the same decoding: greedy, then each grid temperature (T=1 alone
    without a grid). Arms trained at different temperatures are on different footings at any single one."""
    return ["pass@1 greedy"] + [f"pass@1 T={t:g}" for t in (temperatures or [1.0])]


def comparable_metrics(evaluation: dict[str, Any]) -> list[str]:
    """Every metric `--compare` accepts."""
    grid = [m for m in GRID_METRICS if evaluation["temperatures"]]
    return list(dict.fromkeys([*temperature_columns(evaluation["temperatures"]), *FINAL_METRICS, *grid]))


def over_seeds(by_seed: dict[int, dict[str, float]], metric: str) -> dict[str, Any] | None:
    """mean_interval of `metric` over the seeds whose runs hold it, naming the seeds that do not; None if none does."""
    values = {seed: metrics[metric] for seed, metrics in by_seed.items() if metric in metrics}
    if not values:
        return None
    summary = mean_interval(list(values.values()))
    missing = sorted(set(by_seed) - set(values))
    return {**summary, "missing seeds": missing} if missing else summary


def aggregate(spec: dict[str, Any], out: Path, start: dict[str, float],
              compare: list[str] | None = None) -> dict[str, Any]:
    """report.json's content from the finished runs (arms with no finished run are left out). `compare`: the
    metrics of the paired comparison against the baseline (default: temperature_columns)."""
    signals = spec.get("signals", list(DEFAULT_SIGNALS))
    temperatures = spec["evaluation"]["temperatures"]
    columns = temperature_columns(temperatures)
    arms, by_arm_seed = {}, {}
    for arm in spec["arms"]:
        runs = [json.loads(p.read_text()) for seed in spec["seeds"]
                if (p := out / "runs" / arm / f"seed{seed}.json").is_file()]
        if not runs:
            continue
        by_seed = by_arm_seed[arm] = {run["seed"]: run_metrics(run) for run in runs}
        steps = [point["step"] for point in runs[0]["curve"]]
        curve = [{"step": 0, "rollouts": 0,
                  **{m: mean_interval([start[m]]) for m in ("pass@1 greedy", "pass@1 T=1")}}]
        for i, step in enumerate(steps):
            curve.append({"step": step, "rollouts": step * runs[0]["rollouts_per_step"]
                          + statistics.mean(extra_rollouts_at(run, step) for run in runs),
                          **{m: mean_interval([run["curve"][i][m] for run in runs])
                             for m in ("pass@1 greedy", "pass@1 T=1")}})
        # Steps at which every run logged a reward (one per rollout batch: every other step with
        # steps_per_generation 2), with the mean over seeds.
        reward_steps = [step for step, _ in runs[0]["reward"]]
        rewards = [[step, statistics.mean(values)]
                   for step, values in zip(reward_steps, zip(*([r for _, r in run["reward"]] for run in runs)))]
        arms[arm] = {
            "seeds": [run["seed"] for run in runs],
            "final": {m: mean_interval([run["final"][m] for run in runs]) for m in FINAL_METRICS},
            "curve": curve,
            "reward_mean_over_seeds": rewards,
            "rollouts_per_step": runs[0]["rollouts_per_step"],
            "minutes_per_run": statistics.mean(run["seconds"] for run in runs) / 60,
            "pass@1 by temperature": {column: over_seeds(by_seed, column) for column in columns},
            "signals": signal_summaries(runs, signals),
        }
        if all(run.get("grid") for run in runs):
            grid = arms[arm]["grid"] = {m: over_seeds(by_seed, m) for m in GRID_METRICS}
            grid["best single T"] = [run["grid"]["best single T"] for run in runs]
            not_applicable = [run["grid"]["vote n/a"] for run in runs if run["grid"].get("vote n/a")]
            if not_applicable:  # no vote numbers, even from runs written before vote metrics could be n/a
                grid.update({metric: None for metric in VOTE_METRICS})
                grid["vote n/a"] = not_applicable[0]
            if all(run["grid"].get("equal budget curve") for run in runs):
                grid["equal budget curve"] = equal_budget_curve([run["grid"]["equal budget curve"] for run in runs])
    baseline, compared = spec["baseline"], pairs(spec)
    # Each arm's reference: its (first) baseline's final accuracy (a baseline's own: it reaches it at its last point)
    references = {base: base for _, base in compared}
    references.update({arm: base for arm, base in reversed(compared)})
    for arm, reference in references.items():
        if arm in arms and reference in arms:
            target = arms[reference]["final"]["pass@1 T=1"]["mean"]
            reached = [p for p in arms[arm]["curve"] if p["pass@1 T=1"]["mean"] >= target]
            arms[arm]["steps_to_baseline_final"] = reached[0]["step"] if reached else None
            arms[arm]["rollouts_to_baseline_final"] = reached[0]["rollouts"] if reached else None
    compare = compare or columns
    paired = {"baseline": baseline, "metrics": compare, "comparisons": compare_pairs(by_arm_seed, compared, compare)}
    start_metrics = run_metrics({"final": {m: start[m] for m in FINAL_METRICS if m in start},
                                 "grid": start.get("grid")})
    return {"baseline": baseline, "k": spec["evaluation"]["samples"], "temperatures": temperatures,
            "split": spec["evaluation"].get("split", "held_out"), "start": start,
            "start pass@1 by temperature": {column: start_metrics.get(column) for column in columns},
            "arms": arms, "seeds": spec["seeds"], "paired": paired,
            "compared": list(dict.fromkeys(arm for arm, _ in compared)),
            "signals": signals}


def signal_summaries(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Each named training metric's mean over the run and over its last quarter (run_one's "training"), as mean and
    interval over the seeds whose runs logged it; metrics no run logged are left out."""
    summaries = {}
    for name in names:
        by_seed = {run["seed"]: run["training"][name] for run in runs if name in run.get("training", {})}
        if by_seed:
            summaries[name] = {part: over_seeds(by_seed, part) for part in ("mean", "last quarter")}
    return summaries


def equal_budget_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The runs' equal-budget curves (grid_summary) averaged budget by budget: at each number of samples, the best
    single temperature's pass@k (chosen per run on the scored prompts) and the samples spread over the grid."""
    return [{"samples": points[0]["samples"],
             **{m: mean_interval([point[m] for point in points]) for m in ("best single T pass@k", "spread pass@k")}}
            for points in zip(*curves)]


def markdown(report: dict[str, Any]) -> str:
    k = report["k"]
    names = [m.replace("@k", f"@{k}") for m in FINAL_METRICS]
    scored = "validation" if report.get("split") == "validation" else "held-out"
    reference = "its baseline" if isinstance(report["baseline"], dict) else report["baseline"]
    lines = ["| arm | seeds | " + " | ".join(f"{scored} {n}" for n in names)
             + f" | steps (rollouts) to {reference}'s final T=1 pass@1 | rollouts sampled |",
             "|---|---|" + "---|" * (len(names) + 2)]
    lines.append("| start (warmed-up policy) | | " + " | ".join(f"{report['start'][m]:.3f}" for m in FINAL_METRICS)
                 + " | | |")
    for arm, values in report["arms"].items():
        cells = [f"{values['final'][m]['mean']:.3f} ± {values['final'][m]['ci95']:.3f}" for m in FINAL_METRICS]
        reached = values.get("steps_to_baseline_final", "no baseline run" if arm in report["compared"] else "")
        if reached is None:
            reached = "not reached"
        elif isinstance(reached, int):
            reached = f"{reached} ({values['rollouts_to_baseline_final']:,.0f})"
        lines.append(f"| {arm} | {len(values['seeds'])} | " + " | ".join(cells)
                     + f" | {reached} | {values['curve'][-1]['rollouts']:,.0f} |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% Student-t interval over seeds (± 0.000 with one seed: no interval).")
    if report.get("split") == "validation":
        lines.append("Scored on validation prompts (carved out of the training prompts; RL did not train on them), "
                     "for choosing settings: not the held-out result.")
    lines += ["", temperature_markdown(report), "", paired_markdown(report)]
    if any(values.get("signals") for values in report["arms"].values()):
        lines += ["", signals_markdown(report)]
    if any("grid" in values for values in report["arms"].values()):
        lines += ["", grid_markdown(report)]
    return "\n".join(lines)


def _cell(summary: dict[str, Any] | None, missing: str = "missing") -> str:
    """One mean ± interval, `missing` for a metric no run holds, and the seeds whose runs lack it."""
    if summary is None:
        return missing
    cell = f"{summary['mean']:.3f} ± {summary['ci95']:.3f}"
    return cell + (f" (seeds {summary['missing seeds']} missing)" if summary.get("missing seeds") else "")


def signals_markdown(report: dict[str, Any]) -> str:
    """The training metrics the arms file names (`signals`): over the whole run / over its last quarter."""
    names = [name for name in report["signals"] if any(name in v.get("signals", {}) for v in report["arms"].values())]
    lines = ["Training signals, logged by the trainer at every step: mean over the run / over its last quarter (mean "
             "± 95% t-interval over seeds; \"not logged\" where the arm's trainer does not log it):", "",
             "| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for arm, values in report["arms"].items():
        cells = []
        for name in names:
            signal = values.get("signals", {}).get(name)
            cells.append("not logged" if signal is None else f"{_cell(signal['mean'])} / {_cell(signal['last quarter'])}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def temperature_markdown(report: dict[str, Any]) -> str:
    """pass@1 by evaluation temperature: every arm decoded the same way, greedy and at each grid temperature."""
    columns = list(report["start pass@1 by temperature"])
    lines = ["pass@1 by evaluation temperature (every arm's policy decoded alike; a fixed-T arm trains softmax(z/T), "
             "EAD and the portfolio the T=1 policy, so compare arms column by column, not each at its own T):", "",
             "| arm | seeds | " + " | ".join(column.removeprefix("pass@1 ") for column in columns) + " |",
             "|---|---|" + "---|" * len(columns),
             "| start (warmed-up policy) | | " + " | ".join(
                 "missing" if (value := report["start pass@1 by temperature"][c]) is None else f"{value:.3f}"
                 for c in columns) + " |"]
    for arm, values in report["arms"].items():
        by_temperature = values.get("pass@1 by temperature", {})
        lines.append(f"| {arm} | {len(values['seeds'])} | "
                     + " | ".join(_cell(by_temperature.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def paired_markdown(report: dict[str, Any]) -> str:
    """The paired comparison of every arm with its baseline, seed by seed."""
    paired = report["paired"]
    lines = ["Paired differences, arm - its baseline, over the seeds both finished: mean ± 95% t-interval, "
             "seeds won / lost / tied, p from the exact sign-flip permutation test (Monte-Carlo above 16 seeds), "
             "Holm-adjusted across every row of this table:", "",
             "| arm | baseline | metric | seeds | difference | won / lost / tied | p | p (Holm) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in paired["comparisons"]:
        comparison = row["comparison"]
        if comparison is None:
            lines.append(f"| {row['arm']} | {row['baseline']} | {row['metric']} | none shared | missing | | | |")
            continue
        lines.append(f"| {row['arm']} | {row['baseline']} | {row['metric']} | {len(comparison['seeds'])} | "
                     f"{comparison['mean difference']:+.3f} ± {comparison['ci95']:.3f} | "
                     f"{comparison['wins']} / {comparison['losses']} / {comparison['ties']} | "
                     f"{comparison['p']:.3f} | {comparison['p holm']:.3f} |")
    if not paired["comparisons"]:
        lines.append("| (no arm and its baseline both have a finished run) | | | | | | | |")
    return "\n".join(lines)


def grid_markdown(report: dict[str, Any]) -> str:
    """The test-time-scaling table: each arm's policy sampled k times at every temperature of the grid."""
    k, temperatures = report["k"], report["temperatures"]
    grid_size = len(temperatures)
    headers = [f"best single T, pass@{k}", f"{k} samples spread over the grid", f"Pass@All ({k} per T)",
               f"vote on all {k * grid_size}", "early-exit vote", "samples saved by early exit"]
    lines = [f"Across temperatures {', '.join(f'{t:g}' for t in temperatures)} ({k} samples at each):", "",
             "| arm | " + " | ".join(headers) + " | best single T (per seed) |", "|---|" + "---|" * (len(headers) + 1)]
    not_applicable = None
    if "grid" in report["start"]:
        start = report["start"]["grid"]
        not_applicable = start.get("vote n/a")
        lines.append("| start (warmed-up policy) | " + " | ".join(
            "n/a" if start.get(m) is None else f"{start[m]:.3f}" for m in GRID_METRICS)
                     + f" | {start['best single T']:g} |")
    for arm, values in report["arms"].items():
        if "grid" not in values:
            continue
        grid = values["grid"]
        not_applicable = not_applicable or grid.get("vote n/a")
        cells = [_cell(grid[m], "n/a" if m in VOTE_METRICS and grid.get("vote n/a") else "missing")
                 for m in GRID_METRICS]
        best = ", ".join(f"{t:g}" for t in grid["best single T"])
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {best} |")
    if not_applicable:
        lines += ["", f"Vote columns n/a: {not_applicable}."]
    curves = {arm: values["grid"]["equal budget curve"] for arm, values in report["arms"].items()
              if "equal budget curve" in values.get("grid", {})}
    if curves:
        budgets = [point["samples"] for point in next(iter(curves.values()))]
        lines += ["", "pass@K at equal budget, K samples per prompt: best single temperature (chosen per run on the "
                  "scored prompts, which favours it) / K spread evenly over the grid:", "",
                  "| arm | " + " | ".join(f"K={k}" for k in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for arm, curve in curves.items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{p['best single T pass@k']['mean']:.3f} / {p['spread pass@k']['mean']:.3f}" for p in curve) + " |")
    return "\n".join(lines)
