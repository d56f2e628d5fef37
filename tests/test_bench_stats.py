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
