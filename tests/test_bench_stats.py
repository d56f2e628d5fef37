"""thermorl/bench/stats.py: the paired sign-flip test, Holm's correction and the paired comparison, against values
worked out by hand."""

import itertools
import math
import statistics

import pytest

from thermorl.bench.stats import (
    EXACT_MAX_SEEDS,
    compare_pairs,
    holm,
    mean_interval,
    paired_comparison,
    sign_flip_p_value,
)


@pytest.mark.parametrize(
    "differences, p",
    [
        # The 8 sign patterns of (1, 2, 3) sum to +-6, +-4, +-2, +-0: only +-6 reach |6|.
        ([1, 2, 3], 2 / 8),
        # Observed |1 - 2 + 3| = 2: +-6, +-4, +-2 reach it, +-0 (twice) do not.
        ([1, -2, 3], 6 / 8),
        # Every pattern of (1, 1) is 2, 0, 0 or -2 in absolute value: two of four reach 2.
        ([1, 1], 2 / 4),
        ([1, 1, 1, 1], 2 / 16),
        # One seed can never be significant; nor can no difference at all.
        ([0.4], 1.0),
        ([0.0, 0.0, 0.0], 1.0),
        # Sums equal in exact arithmetic count as ties (0.1 + 0.2 != 0.3 in floats).
        ([0.1, 0.2, -0.3], 1.0),
    ],
)
def test_sign_flip_p_value_by_hand(differences, p):
    assert sign_flip_p_value(differences) == pytest.approx(p)


def test_sign_flip_p_value_is_exact_up_to_16_seeds_and_a_fixed_seed_monte_carlo_above():
    def enumerated(differences):
        observed = abs(sum(differences))
        patterns = list(itertools.product((-1, 1), repeat=len(differences)))
        return sum(abs(sum(s * abs(d) for s, d in zip(signs, differences))) >= observed - 1e-9
                   for signs in patterns) / len(patterns)

    twelve = [0.03, -0.01, 0.02, 0.05, 0.00, 0.04, -0.02, 0.01, 0.03, 0.02, -0.01, 0.06]
    assert sign_flip_p_value(twelve) == pytest.approx(enumerated(twelve))
    assert EXACT_MAX_SEEDS == 16
    seventeen = [*twelve, 0.02, -0.03, 0.01, 0.04, -0.01]
    monte_carlo = sign_flip_p_value(seventeen)
    assert monte_carlo == sign_flip_p_value(seventeen)  # the same differences, the same p
    assert monte_carlo == pytest.approx(enumerated(seventeen), abs=0.005)
    # Every seed better by the same amount: the exact p would be 2 / 2^20; the Monte-Carlo estimate never says 0.
    assert 0 < sign_flip_p_value([0.1] * 20) <= 2 / 100_001


def test_holm_on_a_known_list():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_paired_comparison_uses_only_the_seeds_both_arms_finished():
    arm = {0: 0.5, 1: 0.6, 2: 0.4, 3: 0.9}  # seed 3: the baseline has no run
    baseline = {0: 0.4, 1: 0.4, 2: 0.5, 4: 0.1}  # seed 4: the arm has none
    comparison = paired_comparison(arm, baseline)
    differences = [0.1, 0.2, -0.1]
    assert comparison["seeds"] == [0, 1, 2]
    assert comparison["mean difference"] == pytest.approx(statistics.mean(differences))
    assert comparison["ci95"] == pytest.approx(4.303 * statistics.stdev(differences) / math.sqrt(3))
    assert (comparison["wins"], comparison["losses"], comparison["ties"]) == (2, 1, 0)
    # |0.1 + 0.2 - 0.1| = 0.2; the patterns give +-0.4, +-0.2, +-0.2, +-0: six of eight reach 0.2.
    assert comparison["p"] == pytest.approx(0.75)
    assert paired_comparison({0: 0.5}, {1: 0.5}) is None


def test_compare_pairs_corrects_across_the_whole_table():
    runs = {  # arm -> seed -> that run's metrics
        "base": {seed: {"pass@1 greedy": 0.1 * (seed + 1), "pass@1 T=1": 0.1} for seed in range(4)},
        "hot": {seed: {"pass@1 greedy": 0.1 * (seed + 2), "pass@1 T=1": t1}
                for seed, t1 in enumerate([0.2, 0.0, 0.1, 0.3])},
        "new": {7: {"pass@1 greedy": 0.9}},  # no seed shared with the baseline; no T=1 number at all
    }
    table = compare_pairs(runs, [("hot", "base"), ("new", "base")], ["pass@1 greedy", "pass@1 T=1"])
    assert [(row["arm"], row["metric"]) for row in table] == [
        ("hot", "pass@1 greedy"), ("hot", "pass@1 T=1"), ("new", "pass@1 greedy"), ("new", "pass@1 T=1")]
    greedy, hot_t1 = table[0]["comparison"], table[1]["comparison"]
    assert greedy["p"] == pytest.approx(2 / 16)  # +0.1 on all four seeds
    assert greedy["wins"] == 4
    # Differences +0.1, -0.1, 0, +0.2, |sum| 0.2: the signs of (0.1, 0.1, 0.2) give |sums| 0.4, 0, 0.2, 0.2, 0.2,
    # 0.2, 0, 0.4 (six of eight reach 0.2), and the zero's sign doubles each: 12 of 16.
    assert hot_t1["p"] == pytest.approx(12 / 16)
    assert (hot_t1["wins"], hot_t1["losses"], hot_t1["ties"]) == (2, 1, 1)
    assert [greedy["p holm"], hot_t1["p holm"]] == pytest.approx(holm([2 / 16, 12 / 16]))
    assert table[2]["comparison"] is None and table[3]["comparison"] is None


def test_compare_pairs_gives_each_arm_its_own_baseline():
    """An arms file's pairs (sapo-s4 against grpo-s4, sapo-s8 against grpo-s8): each difference is against the arm's
    own baseline, one Holm correction over the table, and a pair whose arm has no runs is left out."""
    runs = {"grpo-s4": {0: {"m": 0.5}, 1: {"m": 0.4}}, "sapo-s4": {0: {"m": 0.6}, 1: {"m": 0.6}},
            "grpo-s8": {0: {"m": 0.1}, 1: {"m": 0.3}}, "sapo-s8": {0: {"m": 0.2}, 1: {"m": 0.2}}}
    table = compare_pairs(runs, [("sapo-s4", "grpo-s4"), ("sapo-s8", "grpo-s8"), ("sapo-s2", "grpo-s2")], ["m"])
    assert [(row["arm"], row["baseline"]) for row in table] == [("sapo-s4", "grpo-s4"), ("sapo-s8", "grpo-s8")]
    s4, s8 = (row["comparison"] for row in table)
    assert s4["mean difference"] == pytest.approx(0.15) and s4["wins"] == 2
    assert s8["mean difference"] == pytest.approx(0.0) and (s8["wins"], s8["losses"]) == (1, 1)
    assert [s4["p holm"], s8["p holm"]] == pytest.approx(holm([s4["p"], s8["p"]]))


def test_mean_interval_is_the_one_bench_uses():
    from thermorl.bench import report

    assert report.mean_interval is mean_interval
    assert mean_interval([0.7]) == {"mean": 0.7, "ci95": 0.0, "n": 1}


def test_prompt_bootstrap_against_hand_cases_and_a_direct_computation():
    import numpy as np

    from thermorl.bench.stats import BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED, prompt_bootstrap

    # Two prompts whose seed-averaged differences are 0 and 1: a resample's mean is 0, 0.5 or 1 (with probabilities
    # 1/4, 1/2, 1/4), so the 2.5% and 97.5% percentiles of 10 000 replicates are 0 and 1.
    two = prompt_bootstrap({0: [1.0, 1.0], 1: [0.0, 1.0]}, {0: [1.0, 0.0], 1: [0.0, 0.0]}, [0, 1])
    assert two["mean difference"] == pytest.approx(0.5) and two["ci95"] == [0.0, 1.0] and two["prompts"] == 2
    # Every prompt differs by the same amount: every resample gives it.
    assert prompt_bootstrap({3: [0.5] * 7}, {3: [0.25] * 7}, [3])["ci95"] == pytest.approx([0.25, 0.25])

    # Direct computation: the per-prompt difference averaged over seeds, the same fixed-seed draws, each replicate's
    # mean summed by hand, and numpy's percentile by hand (linear between the sorted replicates at q * (B - 1)).
    rng = np.random.default_rng(7)
    arm = {seed: rng.integers(0, 9, size=31) / 8 for seed in (0, 1, 2)}
    baseline = {seed: rng.integers(0, 9, size=31) / 8 for seed in (0, 1, 2, 5)}  # seed 5: not in the comparison
    result = prompt_bootstrap(arm, baseline, [0, 1, 2])
    per_prompt = [sum(arm[s][p] - baseline[s][p] for s in (0, 1, 2)) / 3 for p in range(31)]
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, 31, size=(BOOTSTRAP_REPLICATES, 31))
    replicates = sorted(sum(per_prompt[i] for i in row) / 31 for row in draws.tolist())

    def percentile(q):
        position = q * (len(replicates) - 1)
        below = int(position)
        return replicates[below] + (position - below) * (replicates[below + 1] - replicates[below])

    assert result["ci95"] == pytest.approx([percentile(0.025), percentile(0.975)], abs=1e-12)
    assert result["ci95"][0] < result["mean difference"] < result["ci95"][1]
    # Its point estimate is the seed-level mean difference: each seed's metric is its mean over the prompts.
    seed_level = paired_comparison({s: float(np.mean(arm[s])) for s in arm}, {s: float(np.mean(baseline[s]))
                                                                             for s in (0, 1, 2)})
    assert result["mean difference"] == pytest.approx(seed_level["mean difference"], abs=1e-12)


def _ten_seeds(differences):
    """An arm and a baseline over seeds 0..9 whose per-seed differences are `differences`."""
    return ({seed: {"m": 0.5 + d} for seed, d in enumerate(differences)},
            {seed: {"m": 0.5} for seed in range(len(differences))})


def test_holm_runs_over_the_declared_family_of_three_only():
    """Three declared rows of 10 seeds with differences of equal size: k negative seeds of 10 give |sum| 10 - 2k, and
    the patterns reaching it are counted by hand: all positive 2 / 1024; one negative (|sum| 8: 0, 1, 9 or 10
    negatives) 22 / 1024; three negative (|sum| 4: <= 3 or >= 7 negatives) 2 (1 + 10 + 45 + 120) / 1024 = 352 / 1024.
    Holm over the three: 3 x 2, 2 x 22, 1 x 352 (/ 1024). The undeclared row is exploratory, without a p-value."""
    a, base_a = _ten_seeds([0.1] * 10)
    b, base_b = _ten_seeds([0.1] * 9 + [-0.1])
    c, base_c = _ten_seeds([0.1] * 7 + [-0.1] * 3)
    runs = {"a": a, "base-a": base_a, "b": b, "base-b": base_b, "c": c, "base-c": base_c}
    family = [{"metric": "m", "arm": "b", "baseline": "base-b"}, {"metric": "m", "arm": "a", "baseline": "base-a"},
              {"metric": "m", "arm": "c", "baseline": "base-c"}]
    table = compare_pairs(runs, [("a", "base-a"), ("a", "base-c")], ["m"], family)
    assert [(row["arm"], row["baseline"], row["role"]) for row in table] == [
        ("b", "base-b", "confirmatory"), ("a", "base-a", "confirmatory"), ("c", "base-c", "confirmatory"),
        ("a", "base-c", "exploratory")]  # ("a", "base-a", "m") is declared: listed once, as confirmatory
    b_row, a_row, c_row, exploratory = (row["comparison"] for row in table)
    assert [a_row["p"], b_row["p"], c_row["p"]] == pytest.approx([2 / 1024, 22 / 1024, 352 / 1024])
    assert [a_row["p holm"], b_row["p holm"], c_row["p holm"]] == pytest.approx([6 / 1024, 44 / 1024, 352 / 1024])
    assert "p" not in exploratory and "p holm" not in exploratory
    assert exploratory["mean difference"] == pytest.approx(0.1) and exploratory["wins"] == 10


def test_a_declared_row_with_fewer_than_10_seeds_is_exploratory_and_still_counts_in_the_family():
    a, base_a = _ten_seeds([0.1] * 10)
    b, base_b = _ten_seeds([0.1] * 9 + [-0.1])
    few = {seed: {"m": 0.9} for seed in range(3)}
    runs = {"a": a, "base-a": base_a, "b": b, "base-b": base_b, "few": few}
    family = [{"metric": "m", "arm": "a", "baseline": "base-a"}, {"metric": "m", "arm": "b", "baseline": "base-b"},
              {"metric": "m", "arm": "few", "baseline": "base-a"}]
    table = compare_pairs(runs, [], ["m"], family)
    few_row = table[2]
    assert few_row["role"] == "exploratory" and few_row["why"] == "declared confirmatory, but 3 seed(s) < 10"
    assert "p" not in few_row["comparison"] and few_row["comparison"]["wins"] == 3
    # Holm over a family of 3, the untested row counting as p = 1 (over the two tested alone: 4 and 22 / 1024).
    assert [table[0]["comparison"]["p holm"], table[1]["comparison"]["p holm"]] == pytest.approx(
        [6 / 1024, 44 / 1024])
    # A declared row whose arm has no run at all: exploratory, no comparison, in the family's size as well.
    table = compare_pairs(runs, [], ["m"], [*family[:2], {"metric": "m", "arm": "gone", "baseline": "base-a"}])
    assert table[2]["comparison"] is None and table[2]["why"] == "declared confirmatory, but 0 seed(s) < 10"
    assert table[0]["comparison"]["p holm"] == pytest.approx(6 / 1024)
    # Without a declared family: the legacy table, every row a p-value, Holm across the table.
    legacy = compare_pairs(runs, [("a", "base-a"), ("few", "base-a")], ["m"])
    assert [row["role"] for row in legacy] == ["legacy", "legacy"]
    assert [row["comparison"]["p holm"] for row in legacy] == pytest.approx(holm([2 / 1024, 1 / 4]))
