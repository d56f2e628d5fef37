"""The statistics of `thermorl bench`: intervals over seeds, and paired comparisons of arms with their baselines.

Pure functions on plain numbers. Seeds pair two arms' runs: both start from the same policy and draw their training
order from the same seed, so the per-seed difference removes the variation they share. A comparison uses only the
seeds both arms finished. Its p-value comes from the exact sign-flip permutation test of the mean difference (under
"no difference" each difference is as likely negative as positive): all 2^n sign patterns for n <= 16 seeds, a
fixed-seed Monte-Carlo sample of them above that.

Which rows get a p-value: an arms file declares its confirmatory comparisons (metric, arm, baseline) before it runs;
Holm's step-down correction runs over that family only, and every other row is exploratory, reported without a
p-value. A declared row with fewer than MIN_CONFIRMATORY_SEEDS seeds shared by its two arms is exploratory too: it
still counts in the family's size (as p = 1, never rejected), so that the correction of the others does not get
lighter because a row could not be tested. An arms file without a declared family keeps the legacy table: a p-value
on every row, Holm-adjusted across the whole table (a family chosen after the runs: labelled as such).

Beside the seed-level test, a prompt-level paired bootstrap: the held-out prompts are resampled with replacement (the
same draw for both arms and every seed, so the pairing by prompt and by seed is kept) and the mean difference
recomputed, BOOTSTRAP_REPLICATES times from BOOTSTRAP_SEED; its 2.5% and 97.5% percentiles are the interval. It says
how much the difference depends on which prompts were drawn, for these seeds; the seed-level interval and test say
how much it depends on the seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
# Up to this many differences every sign pattern is enumerated (2^16 = 65 536 patterns).
EXACT_MAX_SEEDS = 16
MONTE_CARLO_PATTERNS = 100_000
MONTE_CARLO_SEED = 0
# Sums of floats that are equal in exact arithmetic may differ in the last bits: such a tie counts as "as extreme".
_TIE_TOLERANCE = 1e-9
# A declared comparison with fewer seeds is reported as exploratory (issue 33: 3-seed rows read as findings).
MIN_CONFIRMATORY_SEEDS = 10
BOOTSTRAP_REPLICATES = 10_000
BOOTSTRAP_SEED = 0


def mean_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and the half-width of its 95% Student-t interval (0 for one value: no interval)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": 0.0, "n": len(values)}
    quantile = _T975[len(values) - 2] if len(values) - 1 <= len(_T975) else 1.96
    return {"mean": mean, "ci95": quantile * statistics.stdev(values) / math.sqrt(len(values)), "n": len(values)}


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired sign-flip permutation test: the share of sign patterns whose |sum| is at
    least the observed |sum|. Exact for up to EXACT_MAX_SEEDS differences; above, MONTE_CARLO_PATTERNS random
    patterns (seed MONTE_CARLO_SEED, so the same differences give the same p) with the observed pattern counted in,
    (1 + hits) / (1 + patterns), which never reports p = 0."""
    if not differences:
        raise ValueError("sign_flip_p_value needs at least one difference")
    magnitudes = np.abs(np.asarray(differences, dtype=float))
    observed = abs(float(np.sum(differences)))
    n = len(magnitudes)
    if n <= EXACT_MAX_SEEDS:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        sums = np.abs((1 - 2 * bits) @ magnitudes)
        return float(np.mean(sums >= observed - _TIE_TOLERANCE))
    signs = np.random.default_rng(MONTE_CARLO_SEED).choice([-1.0, 1.0], size=(MONTE_CARLO_PATTERNS, n))
    hits = int(np.sum(np.abs(signs @ magnitudes) >= observed - _TIE_TOLERANCE))
    return (1 + hits) / (1 + MONTE_CARLO_PATTERNS)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest (from 0) is multiplied by
    (m - i), then made non-decreasing in that order and capped at 1."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_comparison(arm: Mapping[int, float], baseline: Mapping[int, float]) -> dict | None:
    """arm - baseline over the seeds both have ({seed: value} each): mean difference and its 95% t-interval,
    wins / losses / ties per seed, and the sign-flip p-value (not yet corrected); None when no seed is shared."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    differences = [arm[seed] - baseline[seed] for seed in seeds]
    interval = mean_interval(differences)
    return {
        "seeds": seeds,
        "mean difference": interval["mean"],
        "ci95": interval["ci95"],
        "wins": sum(d > 0 for d in differences),
        "losses": sum(d < 0 for d in differences),
        "ties": sum(d == 0 for d in differences),
        "p": sign_flip_p_value(differences),
    }


def prompt_bootstrap(arm: Mapping[int, Sequence[float]], baseline: Mapping[int, Sequence[float]],
                     seeds: Sequence[int]) -> dict:
    """The prompt-level paired bootstrap of arm - baseline over `seeds` ({seed: per-prompt scores} each, the same
    prompts in the same order): the mean difference (equal to the seed-level one) and the 95% percentile interval of
    BOOTSTRAP_REPLICATES resamples of the prompts, drawn once (rng.integers, seed BOOTSTRAP_SEED) for every seed."""
    differences = np.mean([np.asarray(arm[seed], dtype=float) - np.asarray(baseline[seed], dtype=float)
                           for seed in seeds], axis=0)  # per prompt, over seeds
    prompts = len(differences)
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, prompts, size=(BOOTSTRAP_REPLICATES, prompts))
    replicates = differences[draws].mean(axis=1)
    low, high = np.percentile(replicates, [2.5, 97.5])
    return {"mean difference": float(differences.mean()), "ci95": [float(low), float(high)], "prompts": prompts,
            "replicates": BOOTSTRAP_REPLICATES, "seed": BOOTSTRAP_SEED}


def compare_pairs(runs: Mapping[str, Mapping[int, Mapping[str, float]]], pairs: Sequence[tuple[str, str]],
                  metrics: Sequence[str], confirmatory: Sequence[Mapping[str, str]] | None = None,
                  prompt_scores: Callable[[str, int, str], Sequence[float] | None] | None = None,
                  not_pre_declared: Mapping[tuple[str, str, str], str] | None = None) -> list[dict]:
    """The paired table: each declared confirmatory comparison (in its order), then each (arm, baseline) of `pairs`
    on each metric not declared.

    `runs[arm][seed]` holds that run's metrics by name (a metric the run lacks is simply absent). Each row's
    "role": "confirmatory" (a p-value, Holm-adjusted over the declared family), "exploratory" (no p-value; "why"
    says why when it was declared) or, with `confirmatory` None (no declared family), "legacy": every row a p-value,
    Holm-adjusted across the table. A row with no shared seed holding the metric has "comparison": None.
    `prompt_scores(arm, seed, metric)`: that run's per-prompt scores for the metric, None where it has none; with
    it, each comparison gets "prompt bootstrap" (prompt_bootstrap), or None with "prompt bootstrap n/a" saying why.
    `not_pre_declared`: declared rows (arm, baseline, metric) whose runs were made before the declaration, with the
    reason: exploratory, counted in the family's size like a row with too few seeds."""

    def by_seed(arm: str, metric: str) -> dict[int, float]:
        return {seed: values[metric] for seed, values in runs.get(arm, {}).items() if metric in values}

    declared = [(row["arm"], row["baseline"], row["metric"]) for row in confirmatory or []]
    exploratory = [(arm, baseline, metric) for arm, baseline in pairs for metric in metrics
                   if (arm, baseline, metric) not in declared]
    table = []
    for arm, baseline, metric in [*declared, *exploratory]:
        if (arm, baseline, metric) not in declared and not (arm in runs and baseline in runs):
            continue
        comparison = paired_comparison(by_seed(arm, metric), by_seed(baseline, metric))
        row = {"arm": arm, "baseline": baseline, "metric": metric, "comparison": comparison}
        if confirmatory is None:
            row["role"] = "legacy"
        elif (arm, baseline, metric) not in declared:
            row["role"] = "exploratory"
        elif (arm, baseline, metric) in (not_pre_declared or {}):
            row["role"], row["why"] = "exploratory", not_pre_declared[arm, baseline, metric]
        elif comparison is None or len(comparison["seeds"]) < MIN_CONFIRMATORY_SEEDS:
            row["role"] = "exploratory"
            row["why"] = (f"declared confirmatory, but {len(comparison['seeds']) if comparison else 0} seed(s) "
                          f"< {MIN_CONFIRMATORY_SEEDS}")
        else:
            row["role"] = "confirmatory"
        if comparison is not None and row["role"] == "exploratory":
            del comparison["p"]
        if comparison is not None and prompt_scores is not None:
            _add_prompt_bootstrap(comparison, {seed: prompt_scores(arm, seed, metric) for seed in comparison["seeds"]},
                                  {seed: prompt_scores(baseline, seed, metric) for seed in comparison["seeds"]})
        table.append(row)
    tested = [row["comparison"] for row in table if row["role"] in ("legacy", "confirmatory") and row["comparison"]]
    # A declared family's size is what was declared: the rows not tested count as p = 1.
    untested = len(declared) - len(tested) if confirmatory is not None else 0
    for comparison, adjusted in zip(tested, holm([c["p"] for c in tested] + [1.0] * untested)):
        comparison["p holm"] = adjusted
    return table


def _add_prompt_bootstrap(comparison: dict, arm: Mapping[int, Sequence[float] | None],
                          baseline: Mapping[int, Sequence[float] | None]) -> None:
    missing = [seed for seed in comparison["seeds"] if arm[seed] is None or baseline[seed] is None]
    lengths = {len(scores) for scores in (*arm.values(), *baseline.values()) if scores is not None}
    if missing:
        comparison["prompt bootstrap"] = None
        comparison["prompt bootstrap n/a"] = f"no per-prompt scores for this metric at seed(s) {missing}"
    elif len(lengths) != 1:
        comparison["prompt bootstrap"] = None
        comparison["prompt bootstrap n/a"] = f"the runs scored different numbers of prompts {sorted(lengths)}"
    else:
        comparison["prompt bootstrap"] = prompt_bootstrap(arm, baseline, comparison["seeds"])
