"""The bench's report from the finished runs' JSONs: means and intervals over seeds, pass@1 by evaluation
temperature, paired comparisons with the baseline, the test-time-scaling table; as report.json and markdown."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..evaluation.metrics import pass_at_k
from .run import FINAL_METRICS, GRID_METRICS, VOTE_METRICS
from .arms import DEFAULT_SIGNALS, pairs
from .stats import MIN_CONFIRMATORY_SEEDS, compare_pairs, mean_interval


def extra_rollouts_at(run: dict[str, Any], step: int) -> float:
    """Completions a run sampled outside its training batches up to `step` (VAS re-rolls; 0 for other arms)."""
    logged = [count for at, count in run.get("extra_rollouts", []) if at <= step]
    return logged[-1] if logged else 0.0


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    """A run's final numbers by name: FINAL_METRICS, "pass@1 T=t" at each grid temperature, and the grid's
    metrics; where the run was scored at its last N checkpoints (evaluation.last_checkpoints), each of them also as
    its mean over those checkpoints (last_checkpoints_metric). A number the run does not hold (a run written before
    it existed, a vote metric where not applicable) is absent, so that it is reported as missing rather than failing
    the report."""
    metrics = _checkpoint_metrics(run)
    records = [*map(_checkpoint_metrics, run.get("checkpoints") or []), metrics]
    if len(records) > 1:
        metrics.update({last_checkpoints_metric(metric, len(records)): statistics.fmean(r[metric] for r in records)
                        for metric in list(metrics) if all(metric in r for r in records)})
    return metrics


def _checkpoint_metrics(record: dict[str, Any]) -> dict[str, float]:
    """One scored checkpoint's numbers by name (a run JSON's final one, or one of its "checkpoints")."""
    metrics = dict(record.get("final") or {})
    grid = record.get("grid") or {}
    metrics.update({f"pass@1 T={t}": value for t, value in (grid.get("per temperature pass@1") or {}).items()})
    metrics.update({metric: grid[metric] for metric in GRID_METRICS if grid.get(metric) is not None})
    return metrics


def last_checkpoints_metric(metric: str, checkpoints: int) -> str:
    """The name of `metric`'s mean over a run's last `checkpoints` scored checkpoints."""
    return f"{metric} (mean of last {checkpoints})"


def prompt_scores(run: dict[str, Any], metric: str) -> list[float] | None:
    """The run's per-prompt scores whose mean over prompts is `metric` (from its stored prompt outcomes; for a mean
    over checkpoints, the per-prompt mean over them), or None: a run written before outcomes were stored, or a
    metric that is not a mean of per-prompt scores (the best single temperature is chosen over all prompts; votes
    need the answers)."""
    records = [*(run.get("checkpoints") or []), run]
    suffix = last_checkpoints_metric("", len(records))
    if len(records) > 1 and metric.endswith(suffix):
        metric = metric.removesuffix(suffix)
    else:
        records = [run]
    per_checkpoint = [_outcome_scores(record.get("prompt_outcomes"), metric) for record in records]
    if any(scores is None for scores in per_checkpoint):
        return None
    return [statistics.fmean(scores) for scores in zip(*per_checkpoint)]


def _outcome_scores(outcomes: dict[str, Any] | None, metric: str) -> list[float] | None:
    if outcomes is None:
        return None
    counts, k = outcomes["correct"], outcomes["samples"]
    if metric == "pass@1 greedy":
        return [float(c) for c in counts["greedy"]]
    if metric.startswith("pass@1 T=") and metric.removeprefix("pass@1 ") in counts:
        return [pass_at_k(k, c, 1) for c in counts[metric.removeprefix("pass@1 ")]]
    if metric == "pass@k T=1":
        return [pass_at_k(k, c, k) for c in counts["T=1"]]
    if metric == "worst@k T=1":
        return [float(c == k) for c in counts["T=1"]]
    if metric == "pass@all":
        by_temperature = [value for key, value in counts.items() if key != "greedy"]
        return [float(any(per_prompt)) for per_prompt in zip(*by_temperature)]
    return None


def temperature_columns(temperatures: list[float] | None) -> list[str]:
    """The pass@1 metrics that compare arms at the same decoding: greedy, then each grid temperature (T=1 alone
    without a grid). Arms trained at different temperatures are on different footings at any single one."""
    return ["pass@1 greedy"] + [f"pass@1 T={t:g}" for t in (temperatures or [1.0])]


def comparable_metrics(evaluation: dict[str, Any]) -> list[str]:
    """Every metric `--compare` (and an arms file's `confirmatory`) accepts: the final ones and, with
    evaluation.last_checkpoints N > 1, each one's mean over the last N checkpoints."""
    grid = [m for m in GRID_METRICS if evaluation["temperatures"]]
    final = list(dict.fromkeys([*temperature_columns(evaluation["temperatures"]), *FINAL_METRICS, *grid]))
    last = evaluation.get("last_checkpoints", 1)
    return final + ([last_checkpoints_metric(metric, last) for metric in final] if last > 1 else [])


def over_seeds(by_seed: dict[int, dict[str, float]], metric: str) -> dict[str, Any] | None:
    """mean_interval of `metric` over the seeds whose runs hold it, naming the seeds that do not; None if none does."""
    values = {seed: metrics[metric] for seed, metrics in by_seed.items() if metric in metrics}
    if not values:
        return None
    summary = mean_interval(list(values.values()))
    missing = sorted(set(by_seed) - set(values))
    return {**summary, "missing seeds": missing} if missing else summary


def aggregate(spec: dict[str, Any], out: Path, start: dict[str, float], compare: list[str] | None = None,
              start_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json's content from the finished runs (arms with no finished run are left out). `compare`: the
    metrics of the exploratory paired rows (default: temperature_columns, and their means over the last
    checkpoints where scored); the arms file's `confirmatory` rows come first. `start_weights`: start.json's record
    of the start model's weights (run.start_weights; None where not recorded)."""
    signals = spec.get("signals", list(DEFAULT_SIGNALS))
    temperatures = spec["evaluation"]["temperatures"]
    columns = temperature_columns(temperatures)
    last = spec["evaluation"].get("last_checkpoints", 1)
    last_columns = [last_checkpoints_metric(column, last) for column in columns] if last > 1 else []
    arms, by_arm_seed, loaded = {}, {}, {}
    for arm in spec["arms"]:
        runs = [json.loads(p.read_text()) for seed in spec["seeds"]
                if (p := out / "runs" / arm / f"seed{seed}.json").is_file()]
        if not runs:
            continue
        loaded[arm] = {run["seed"]: run for run in runs}
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
        if last_columns:
            arms[arm][f"mean of last {last} checkpoints"] = {
                metric: over_seeds(by_seed, metric)
                for metric in [*last_columns, *(last_checkpoints_metric(m, last) for m in FINAL_METRICS)]}
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
    compare = compare or [*columns, *last_columns]
    family = family_status(spec, loaded)
    prompt_sets = sorted({run["prompt_outcomes"]["prompts_sha256"] for runs in loaded.values()
                          for run in runs.values() if run.get("prompt_outcomes")})

    def scores_of(arm: str, seed: int, metric: str) -> list[float] | None:
        return prompt_scores(loaded[arm][seed], metric)

    comparisons = compare_pairs(by_arm_seed, compared, compare, spec.get("confirmatory"),
                                scores_of if len(prompt_sets) <= 1 else None, family["not pre-declared"])
    paired = {"baseline": baseline, "metrics": compare, "comparisons": comparisons}
    start_metrics = run_metrics({"final": {m: start[m] for m in FINAL_METRICS if m in start},
                                 "grid": start.get("grid")})
    return {"baseline": baseline, "k": spec["evaluation"]["samples"], "temperatures": temperatures,
            "split": spec["evaluation"].get("split", "held_out"), "last checkpoints": last, "start": start,
            "start weights": start_weights, "runs' start weights": recorded_values(loaded, "start_weights", "sha256"),
            "environments": recorded_values(loaded, "environment"),
            "prompt sets": len(prompt_sets), "family": {k: v for k, v in family.items() if k != "not pre-declared"},
            "start pass@1 by temperature": {column: start_metrics.get(column) for column in columns},
            "arms": arms, "seeds": spec["seeds"], "paired": paired,
            "compared": list(dict.fromkeys(arm for arm, _ in compared)),
            "signals": signals}


def family_status(spec: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The arms file's confirmatory family (None: a legacy file that declares none), and the declared rows that were
    not declared when their runs started: each run JSON records the family of its plan, so a row added after some
    of its runs were made (or taken from another bench's runs) is exploratory, with the runs named."""
    declared = spec.get("confirmatory")
    late = {}
    for row in declared or []:
        arm, baseline = row["arm"], row["baseline"]
        shared = sorted(set(runs.get(arm, {})) & set(runs.get(baseline, {})))
        unrecorded = [f"{name} seed {seed}" for name in (arm, baseline) for seed in shared
                      if row not in (runs[name][seed].get("confirmatory") or [])]
        if unrecorded:
            late[arm, baseline, row["metric"]] = (
                f"declared after runs were made: {len(unrecorded)} run(s) do not record it "
                f"({', '.join(unrecorded[:3])}{', ...' if len(unrecorded) > 3 else ''})")
    return {"declared": declared, "minimum seeds": MIN_CONFIRMATORY_SEEDS, "not pre-declared": late}


def recorded_values(runs: dict[str, dict[int, dict[str, Any]]], field: str, part: str | None = None) -> list[dict]:
    """The distinct values of a run JSON field (or of one part of it) over the runs, each with the runs that hold
    it; runs written before the field existed are grouped under the value None."""
    groups: list[dict[str, Any]] = []
    for arm, by_seed in runs.items():
        for seed, run in by_seed.items():
            value = run.get(field)
            value = value.get(part) if part is not None and value is not None else value
            group = next((g for g in groups if g["value"] == value), None)
            if group is None:
                groups.append(group := {"value": value, "runs": []})
            group["runs"].append(f"{arm} seed {seed}")
    return groups


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
    lines = [*header_markdown(report), "", "| arm | seeds | " + " | ".join(f"{scored} {n}" for n in names)
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


def header_markdown(report: dict[str, Any]) -> list[str]:
    """What the numbers rest on: the start model's weights, the runs' environment, and which comparisons are
    confirmatory. Reports from before a record existed say so instead of guessing."""
    lines = []
    weights = report.get("start weights")
    if weights is None:
        lines.append("Start model weights: not recorded (this bench's start.json was written before the bench "
                     "recorded them).")
    elif weights["sha256"] is None:
        lines.append(f"Start model weights: no hash ({weights['why']}): {weights['path']}.")
    else:
        lines.append(f"Start model weights: SHA-256 {weights['sha256']} ({weights['path']}).")
    for group in report.get("runs' start weights", []):
        count = f"{len(group['runs'])} run(s)"
        if group["value"] is None:
            lines.append(f"{count} written before runs recorded their start weights.")
        elif weights and group["value"] == weights["sha256"]:
            lines.append(f"{count} record these start weights.")
        elif weights is None:  # nothing to compare with: say what they record, not that it differs
            lines.append(f"{count} started from weights SHA-256 {group['value']}: " + ", ".join(group["runs"]) + ".")
        else:
            lines.append(f"**{count} started from other weights**, SHA-256 {group['value']}: "
                         + ", ".join(group["runs"]) + ".")
    for group in report.get("environments", []):
        count = f"{len(group['runs'])} run(s)"
        env = group["value"]
        if env is None:
            lines.append(f"Environment: not recorded by {count} (written before runs recorded it).")
            continue
        commit = f" (commit {env['thermorl_commit'][:12]})" if env.get("thermorl_commit") else ""
        lines.append(f"Environment of {count}: torch {env['torch']}, transformers {env['transformers']}, trl "
                     f"{env['trl']}, thermorl {env['thermorl']}{commit}, Python {env['python']}, CPU {env['cpu']} "
                     f"({env['cpu_count']} logical), torch threads {env['torch_threads']}"
                     + (f", GPU {env['cuda']}" if env.get("cuda") else "") + ".")
    if len(report.get("environments", [])) > 1:
        lines.append("The runs were made in different environments (above): their numbers may not be exchangeable.")
    family = report.get("family") or {"declared": None}
    if family["declared"] is None:
        lines.append("Comparisons: legacy table. This arms file declares no confirmatory family, so every paired row "
                     "has a p-value, Holm-adjusted across the whole table: a family chosen after the runs. Read every "
                     "row as exploratory.")
    else:
        count = len(family["declared"])
        lines.append(f"Comparisons: {count} confirmatory, declared in the arms file before its runs; Holm's correction "
                     f"runs over those {count}. Every other row is exploratory and has no p-value. A declared row with "
                     f"fewer than {family['minimum seeds']} seeds, or declared after its runs were made, is "
                     "exploratory whatever the file says (the table says why) and counts in the family as p = 1.")
    if report.get("last checkpoints", 1) > 1:
        last = report["last checkpoints"]
        lines.append(f"Each run is scored on its final checkpoint and as the mean over its last {last} evaluated "
                     f"checkpoints (\"(mean of last {last})\" rows and metrics).")
    if report.get("prompt sets", 0) > 1:
        lines.append("The runs scored different prompt sets: no prompt-level bootstrap.")
    return [f"- {line}" for line in lines]


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
    last = report.get("last checkpoints", 1)
    for arm, values in report["arms"].items():
        by_temperature = values.get("pass@1 by temperature", {})
        lines.append(f"| {arm} | {len(values['seeds'])} | "
                     + " | ".join(_cell(by_temperature.get(c)) for c in columns) + " |")
        if last > 1:
            means = values[f"mean of last {last} checkpoints"]
            lines.append(f"| {arm}, mean of last {last} checkpoints | {len(values['seeds'])} | "
                         + " | ".join(_cell(means.get(last_checkpoints_metric(c, last))) for c in columns) + " |")
    return "\n".join(lines)


def paired_markdown(report: dict[str, Any]) -> str:
    """The paired comparison of every arm with its baseline, seed by seed, and prompt by prompt."""
    paired = report["paired"]
    legacy = (report.get("family") or {"declared": None})["declared"] is None
    family = ("Holm-adjusted across every row of this table (legacy: no declared family)" if legacy else
              "Holm-adjusted over the declared confirmatory rows only; exploratory rows have no p-value")
    lines = ["Paired differences, arm - its baseline, over the seeds both finished: mean ± 95% t-interval over seeds, "
             "seeds won / lost / tied, p from the exact sign-flip permutation test over seeds (Monte-Carlo above 16 "
             f"seeds), {family}; and the 95% prompt-level paired bootstrap interval (the scored prompts resampled, "
             "the same draw for both arms and every seed: how much the difference depends on the prompts drawn, for "
             "these seeds):", "",
             "| arm | baseline | metric | seeds | difference | won / lost / tied | p | p (Holm) | prompt bootstrap 95% "
             "| role |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    reasons = {}  # why a row has no prompt bootstrap, each once
    for row in paired["comparisons"]:
        comparison = row["comparison"]
        role = row.get("role", "legacy") + (f": {row['why']}" if row.get("why") else "")
        if comparison is None:
            lines.append(f"| {row['arm']} | {row['baseline']} | {row['metric']} | none shared | missing | | | | "
                         f"| {role} |")
            continue
        p_values = (f"{comparison['p']:.3f} | {comparison['p holm']:.3f}" if "p" in comparison else "— | —")
        bootstrap = comparison.get("prompt bootstrap")
        if bootstrap is not None:
            interval = "[{:+.3f}, {:+.3f}]".format(*bootstrap["ci95"])
        else:
            interval = "n/a" if "prompt bootstrap n/a" in comparison else "missing"
            if "prompt bootstrap n/a" in comparison:
                reasons[comparison["prompt bootstrap n/a"].split(" at seed(s)")[0]] = None
        lines.append(f"| {row['arm']} | {row['baseline']} | {row['metric']} | {len(comparison['seeds'])} | "
                     f"{comparison['mean difference']:+.3f} ± {comparison['ci95']:.3f} | "
                     f"{comparison['wins']} / {comparison['losses']} / {comparison['ties']} | {p_values} | "
                     f"{interval} | {role} |")
    if not paired["comparisons"]:
        lines.append("| (no arm and its baseline both have a finished run) | | | | | | | | | |")
    if reasons:
        lines += ["", "Prompt bootstrap n/a: " + "; ".join(reasons) + " (runs written before per-prompt outcomes were "
                  "stored, or a metric that is not a mean over prompts: the best single temperature, the spread, "
                  "votes)."]
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
