"""Prompt scores for variance-aware sampling (VAS, MMR1, arXiv 2509.21268).

    OVS(x) = P(x) (1 - P(x))                   outcome variance, P = pass rate over N rollouts
    TDS(x) = diversity of the N responses       in [0, 1]; 0 for identical responses
    VPS(x) = alpha OVS(x) + beta TDS(x)         paper: alpha = 0.8, beta = 0.2; VPS in [0, alpha/4 + beta]

A response is a sequence of token ids (list or 1-D tensor) or a string, which is split on whitespace.
Degenerate groups (fewer than two responses, nothing to compare) have diversity 0.
"""

import itertools
import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from ..errors import UserError

Response = Sequence[Hashable] | str | torch.Tensor


def _check_unit_interval(name: str, value: float | torch.Tensor) -> None:
    values = torch.as_tensor(value, dtype=torch.float64)
    if not bool(((values >= 0) & (values <= 1)).all()):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _tokens(response: Response) -> list:
    if isinstance(response, str):
        return response.split()
    if isinstance(response, torch.Tensor):
        return response.tolist()
    return list(response)


def _ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def outcome_variance(pass_rate: float | torch.Tensor) -> float | torch.Tensor:
    """OVS = P (1 - P), the variance of a Bernoulli(P) reward."""
    _check_unit_interval("pass_rate", pass_rate)
    return pass_rate * (1 - pass_rate)


def distinct_n(responses: Sequence[Response], n: int = 2) -> float:
    """Group distinct-n (Li et al., arXiv 1510.03055), rescaled so identical responses give 0.

    With S_i the set of n-grams of response i, D = |union S_i| / sum |S_i| lies in [1/K, 1] for the K
    responses that have an n-gram; TDS = (K D - 1) / (K - 1): 0 when all sets are equal, 1 when they are
    disjoint. Repeats inside one response do not count; responses shorter than n are ignored.
    """
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    ngram_sets = [set(_ngrams(_tokens(response), n)) for response in responses]
    ngram_sets = [ngrams for ngrams in ngram_sets if ngrams]
    if len(ngram_sets) < 2:
        return 0.0
    num_sets = len(ngram_sets)
    num_distinct = len(set().union(*ngram_sets))
    total = sum(len(ngrams) for ngrams in ngram_sets)
    return (num_sets * num_distinct - total) / (total * (num_sets - 1))


def sentence_bleu(hypothesis: Response, references: Sequence[Response], max_order: int = 4) -> float:
    """BLEU of one hypothesis against references, smoothed as BLEU+1 (Lin & Och 2004).

    Clipped n-gram precisions p_n for n = 1..max_order, uniform weights, brevity penalty against the
    closest reference length. Smoothing: p_n = (matches + 1) / (count + 1) for n >= 2 (so short
    responses are not zeroed), p_1 unsmoothed (no shared token: BLEU = 0). This is nltk's method2
    in its current form. An empty hypothesis scores 1 if some reference is empty, else 0.
    """
    hypothesis = _tokens(hypothesis)
    references = [_tokens(reference) for reference in references]
    if not hypothesis:
        return float(any(not reference for reference in references))
    log_precision_sum = 0.0
    for order in range(1, max_order + 1):
        hypothesis_counts = Counter(_ngrams(hypothesis, order))
        max_reference_counts = Counter()
        for reference in references:
            max_reference_counts |= Counter(_ngrams(reference, order))
        matches = sum(min(count, max_reference_counts[ngram]) for ngram, count in hypothesis_counts.items())
        count = max(len(hypothesis) - order + 1, 0)
        if order == 1:
            if matches == 0:
                return 0.0
            log_precision_sum += math.log(matches / count)
        else:
            log_precision_sum += math.log((matches + 1) / (count + 1))
    closest_length = min((abs(len(reference) - len(hypothesis)), len(reference)) for reference in references)[1]
    brevity_penalty = 1.0 if len(hypothesis) > closest_length else math.exp(1 - closest_length / len(hypothesis))
    return brevity_penalty * math.exp(log_precision_sum / max_order)


def inverse_self_bleu(responses: Sequence[Response], max_order: int = 4) -> float:
    """1 - self-BLEU: 1 - mean_i BLEU(y_i, {y_j : j != i}) with `sentence_bleu` (BLEU+1, orders 1..4).

    The paper uses inverse self-BLEU; MMR1's released code uses raw self-BLEU, which rewards similar groups.
    """
    if max_order < 1:
        raise UserError(f"max_order must be >= 1, got {max_order}")
    responses = list(responses)
    if len(responses) < 2:
        return 0.0
    scores = [
        sentence_bleu(response, responses[:i] + responses[i + 1 :], max_order) for i, response in enumerate(responses)
    ]
    return 1.0 - sum(scores) / len(scores)


def levenshtein(a: Response, b: Response) -> int:
    """Token-level edit distance (insertions, deletions, substitutions of cost 1)."""
    a, b = _tokens(a), _tokens(b)
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    b_tokens = np.asarray(b)
    offsets = np.arange(len(b) + 1)
    previous = offsets.copy()
    for row, token in enumerate(a, start=1):
        current = np.empty_like(previous)
        current[0] = row
        current[1:] = np.minimum(previous[:-1] + (b_tokens != token), previous[1:] + 1)
        # Insertions chain along the row: D[j] = min_{k<=j} D[k] + (j - k), one running minimum.
        previous = np.minimum.accumulate(current - offsets) + offsets
    return int(previous[-1])


def mean_edit_distance(responses: Sequence[Response]) -> float:
    """Mean over pairs of levenshtein(a, b) / max(|a|, |b|) (two empty responses: distance 0).

    Cost O(N^2 L^2) token comparisons (vectorised per row); prefer distinct_n for long responses.
    """
    tokens = [_tokens(response) for response in responses]
    if len(tokens) < 2:
        return 0.0
    distances = [
        levenshtein(a, b) / max(len(a), len(b)) if (a or b) else 0.0 for a, b in itertools.combinations(tokens, 2)
    ]
    return sum(distances) / len(distances)


DIVERSITY_MEASURES: dict[str, Callable[[Sequence[Response]], float]] = {
    "distinct_n": distinct_n,
    "inverse_self_bleu": inverse_self_bleu,
    "edit_distance": mean_edit_distance,
}


def trajectory_diversity(responses: Sequence[Response], measure: str = "distinct_n", **kwargs) -> float:
    """TDS of one group by measure name (see `DIVERSITY_MEASURES`); kwargs go to the measure (e.g. n=3)."""
    if measure not in DIVERSITY_MEASURES:
        raise UserError(f"measure must be one of {sorted(DIVERSITY_MEASURES)}, got {measure!r}")
    return DIVERSITY_MEASURES[measure](responses, **kwargs)


def variance_promotion_score(
    pass_rate: float | torch.Tensor, tds: float | torch.Tensor, alpha: float = 0.8, beta: float = 0.2
) -> float | torch.Tensor:
    """VPS = alpha P (1 - P) + beta TDS (MMR1, arXiv 2509.21268; paper alpha = 0.8, beta = 0.2)."""
    if alpha < 0 or beta < 0:
        raise UserError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    _check_unit_interval("tds", tds)
    return alpha * outcome_variance(pass_rate) + beta * tds
