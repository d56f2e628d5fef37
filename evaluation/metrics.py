"""Test-time-scaling metrics over samples drawn at several temperatures (arXiv 2510.02611).

A "correct table" is indexed [question][temperature][sample] -> bool; an "answer table" has the
same layout with the extracted answer (None when no answer could be parsed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

from ..errors import UserError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., arXiv 2107.03374).

    1 - C(n-c, k) / C(n, k), evaluated as 1 - prod_{i=n-c+1}^{n} (1 - k/i) so that no
    binomial coefficient is ever formed (they overflow floats for n in the hundreds).
    """
    if n < 1:
        raise ValueError(f"pass_at_k needs n >= 1 samples, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    all_k_subsets_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_k_subsets_wrong *= 1.0 - k / i
    return 1.0 - all_k_subsets_wrong


def k_grid(max_k: int) -> list[int]:
    """1, 2, 4, ... up to max_k, always ending at max_k itself."""
    if max_k < 1:
        raise ValueError(f"k_grid needs max_k >= 1, got {max_k}")
    ks = [1]
    while ks[-1] * 2 < max_k:
        ks.append(ks[-1] * 2)
    if ks[-1] != max_k:
        ks.append(max_k)
    return ks


def majority_vote(answers: Sequence[Hashable | None]) -> tuple[Hashable | None, float]:
    """Most frequent non-None answer and its share of ALL the samples (None counts in the denominator).

    Unparsable samples never win but do dilute the share, so a pool that is mostly unparsable is not
    confident. Ties go to the answer seen first. All-None or empty pools give (None, 0.0).
    """
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None, 0.0
    answer, count = counts.most_common(1)[0]
    return answer, count / len(answers)


def voted_answer_correct(answers: Sequence[Hashable | None], correct: Sequence[bool], voted: Hashable | None) -> bool:
    """Correctness of a voted answer, read from the first sample that produced it; None is wrong."""
    if len(answers) != len(correct):
        raise ValueError(f"need one correctness flag per answer, got {len(answers)} answers and {len(correct)} flags")
    if voted is None:
        return False
    return bool(correct[list(answers).index(voted)])


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> bool:
    """Whether the majority answer of the first k samples is correct (one question, one temperature)."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k needs 1 <= k <= {len(answers)}, got k={k}")
    return voted_answer_correct(answers[:k], correct[:k], majority_vote(answers[:k])[0])


def pass_at_all(correct_table: Sequence[Sequence[Sequence[bool]]], k: int | None = None) -> float:
    """Fraction of questions solved by at least one of k samples at EVERY temperature ("Pass@All").

    k=None uses all samples: a question counts if any temperature has any correct sample. For k < n
    the unbiased estimate per question is 1 - prod_t C(n_t - c_t, k) / C(n_t, k), exact because
    samples at different temperatures are drawn independently.
    """
    if not correct_table:
        raise ValueError("pass_at_all needs at least one question")
    solved = 0.0
    for question in correct_table:
        all_temperatures_fail = 1.0
        for samples in question:
            n = len(samples)
            all_temperatures_fail *= 1.0 - pass_at_k(n, sum(map(bool, samples)), n if k is None else k)
        solved += 1.0 - all_temperatures_fail
    return solved / len(correct_table)


def single_temperature_pass_at_k(
    correct_table: Sequence[Sequence[Sequence[bool]]], temperature_index: int, k: int
) -> float:
    """Mean over questions of pass@k at one temperature."""
    total = 0.0
    for question in correct_table:
        samples = question[temperature_index]
        total += pass_at_k(len(samples), sum(map(bool, samples)), k)
    return total / len(correct_table)


def best_single_temperature(
    correct_table: Sequence[Sequence[Sequence[bool]]], temperatures: Sequence[float], budget: int
) -> tuple[float, float] | None:
    """(temperature, pass@budget) of the best single temperature spending `budget` samples per question.

    None when budget exceeds the samples drawn per temperature: pass@k cannot be estimated beyond n.
    """
    if budget > _samples_per_temperature(correct_table):
        return None
    scores = [single_temperature_pass_at_k(correct_table, t, budget) for t in range(len(temperatures))]
    best = max(range(len(temperatures)), key=scores.__getitem__)
    return float(temperatures[best]), scores[best]


def spread_pass_at_budget(correct_table: Sequence[Sequence[Sequence[bool]]], budget: int) -> float:
    """Pass rate when `budget` samples per question are spread evenly over all T temperatures.

    Each temperature gets m = budget // T samples and a uniformly random r = budget % T of them one
    more; the per-question failure probability is the exact average over those subsets,
    E_S[prod_{t in S} q_t(m+1) prod_{t not in S} q_t(m)] with q_t(k) = C(n-c_t, k) / C(n, k),
    computed with the elementary-symmetric recursion instead of enumerating subsets. This is the
    multi-temperature side of an equal-budget comparison with a single temperature's pass@budget.
    """
    num_temperatures = len(correct_table[0])
    per_temperature, extra = divmod(budget, num_temperatures)
    if budget < 1 or per_temperature + (extra > 0) > _samples_per_temperature(correct_table):
        raise UserError(
            f"budget {budget} cannot be spread over {num_temperatures} temperatures with "
            f"{_samples_per_temperature(correct_table)} samples each"
        )

    def all_fail(samples, k):
        return 1.0 if k == 0 else 1.0 - pass_at_k(len(samples), sum(map(bool, samples)), k)

    solved = 0.0
    for question in correct_table:
        # subset_sums[j]: sum over j-subsets S of the temperatures seen so far of their failure product.
        subset_sums = [1.0] + [0.0] * extra
        for samples in question:
            base = all_fail(samples, per_temperature)
            for j in range(extra, 0, -1):
                subset_sums[j] = subset_sums[j] * base + subset_sums[j - 1] * all_fail(samples, per_temperature + 1)
            subset_sums[0] *= base
        solved += 1.0 - subset_sums[extra] / math.comb(num_temperatures, extra)
    return solved / len(correct_table)


def _samples_per_temperature(correct_table) -> int:
    return min(len(samples) for question in correct_table for samples in question)
