"""VESPO: Variational Sequence-Level Soft Policy Optimization (arXiv 2602.10693), as TRL 1.16 implements it.

Hard clipping is replaced by a detached Gamma-shaped weight of the sequence importance ratio w = prod_t r_t:

    phi(w) = exp(lambda + k log w - lambda w)   (phi(1) = 1),   k, lambda = (k_pos, lambda_pos) if A >= 0 else neg
    loss = agg_t  -phi(w) A log pi_theta(y_t)

log w sums the token log-ratios (each clamped to [-20, 20]) plus, with vLLM, the log of the rollout's
importance-sampling ratio (`importance_sampling_ratio`), and is clamped to [log 1e-8, 20]. That ratio is folded
into phi, so the trainer must not also multiply the loss by it. lambda is floored at 1e-4 and a non-finite
phi becomes 0, as in TRL.
"""

import math

import torch

from .common import PolicyTerms, clamped_log_ratio, masked_mean, token_advantages
from .registry import register_loss

LOG_W_MIN = math.log(1e-8)
LOG_W_MAX = 20.0


def gamma_weights(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    importance_sampling_ratio: torch.Tensor | None,
    k_pos: float,
    lambda_pos: float,
    k_neg: float,
    lambda_neg: float,
) -> torch.Tensor:
    """phi(w) per sequence, (B, 1), detached; `log_ratio` is the (clamped) per-token log pi_theta / pi_old."""
    log_w = (log_ratio.detach() * mask).sum(-1, keepdim=True)
    if importance_sampling_ratio is not None:
        log_is = torch.log(importance_sampling_ratio.detach()).clamp(LOG_W_MIN, LOG_W_MAX)
        log_w = log_w + log_is.sum(-1, keepdim=True)
    log_w = log_w.clamp(LOG_W_MIN, LOG_W_MAX)
    nonnegative = advantages >= 0
    k = torch.where(nonnegative, k_pos, k_neg)
    lam = torch.where(nonnegative, lambda_pos, lambda_neg).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


@register_loss(
    "vespo",
    aggregation="token_mean",
    inputs=("importance_sampling_ratio",),
    ranges={"k_pos": "[0, inf)", "k_neg": "[0, inf)", "lambda_pos": "(0, inf)", "lambda_neg": "(0, inf)"},
)
def vespo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    importance_sampling_ratio: torch.Tensor | None = None,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> PolicyTerms:
    log_ratio = clamped_log_ratio(per_token_logps, old_per_token_logps)
    # phi needs one advantage per sequence: the sign of a per-token advantage's sequence mean picks its shape
    token_adv = token_advantages(advantages)
    sequence_adv = token_adv if token_adv.size(-1) == 1 else masked_mean(token_adv, completion_mask, -1)[:, None]
    mask = completion_mask.to(per_token_logps.dtype)
    phi = gamma_weights(
        log_ratio, sequence_adv, mask, importance_sampling_ratio, k_pos, lambda_pos, k_neg, lambda_neg
    )
    metrics = {"vespo/phi_seq_mean": phi.mean().detach()}
    return PolicyTerms(-phi * token_adv * per_token_logps, torch.exp(log_ratio), metrics)
