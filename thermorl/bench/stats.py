"""The statistics of `thermorl bench`: intervals over seeds, and paired comparisons of arms with their baselines.

Pure functions on plain numbers. Seeds pair two arms' runs: both start from the same policy and draw their training
order from the same seed, so the per-seed difference removes the variation they share. A comparison uses only the
seeds both arms finished. Its p-value comes from the exact sign-flip permutation test of the mean difference (under
"no difference" each difference is as likely negative as positive): all 2^n sign patterns for n <= 16 seeds, a
fixed-seed Monte-Carlo sample of them above that. Holm's step-down correction then adjusts the p-values of every
comparison in one table together.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

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


def compare_pairs(runs: Mapping[str, Mapping[int, Mapping[str, float]]], pairs: Sequence[tuple[str, str]],
                  metrics: Sequence[str]) -> list[dict]:
    """Each (arm, baseline) of `pairs` on each metric, with Holm-adjusted p-values across the whole
    table.

    `runs[arm][seed]` holds that run's metrics by name (a metric the run lacks is simply absent). A pair with no
    shared seed holding the metric is listed with "comparison": None and takes no part in the correction."""

    def by_seed(arm: str, metric: str) -> dict[int, float]:
        return {seed: values[metric] for seed, values in runs.get(arm, {}).items() if metric in values}

    table = [{"arm": arm, "baseline": baseline, "metric": metric,
              "comparison": paired_comparison(by_seed(arm, metric), by_seed(baseline, metric))}
             for arm, baseline in pairs if arm in runs and baseline in runs for metric in metrics]
    compared = [row["comparison"] for row in table if row["comparison"] is not None]
    for comparison, adjusted in zip(compared, holm([c["p"] for c in compared])):
        comparison["p holm"] = adjusted
    return table
