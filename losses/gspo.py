"""GSPO: Group Sequence Policy Optimization (Qwen, arXiv 2507.18071).

One importance ratio per sequence, the length-normalised geometric mean of the token ratios,

    s_i = exp( (1/|y_i|) sum_t log(pi_theta(y_it) / pi_old(y_it)) ),

clipped like PPO with the paper's narrow range eps_low = 3e-4, eps_high = 4e-4 (TRL:
`importance_sampling_level="sequence"`; `delta` and `kl_bias_correction` as in `grpo`).
GSPO-token uses s_it = sg[s_i] * pi_theta(y_it) / sg[pi_theta(y_it)]
(sg = stop-gradient), which lets the advantage vary per token; when it is shared by the sequence both are
equal in value and gradient.
"""

import torch

from .common import CLIP_RANGES, PolicyTerms, clamped_log_ratio, clipped_policy_terms, masked_mean
from .registry import register_loss


def sequence_log_ratio(per_token_logps, old_per_token_logps, completion_mask) -> torch.Tensor:
    """log s_i, shape (B, 1): masked mean over the sequence of the (clamped) token log-ratios."""
    log_ratio = clamped_log_ratio(per_token_logps, old_per_token_logps)
    return masked_mean(log_ratio, completion_mask, dim=-1).unsqueeze(-1)


@register_loss("gspo", ranges=CLIP_RANGES)
def gspo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    delta: float | None = None,
) -> PolicyTerms:
    ratio = torch.exp(sequence_log_ratio(per_token_logps, old_per_token_logps, completion_mask))
    return clipped_policy_terms(
        ratio, advantages, completion_mask, eps_low=eps_low, eps_high=eps_high, delta=delta, per_sequence=True
    )


@register_loss("gspo_token", ranges=CLIP_RANGES)
def gspo_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    delta: float | None = None,
) -> PolicyTerms:
    log_seq_ratio = sequence_log_ratio(per_token_logps, old_per_token_logps, completion_mask)
    ratio = torch.exp(log_seq_ratio.detach() + per_token_logps - per_token_logps.detach())
    return clipped_policy_terms(
        ratio, advantages, completion_mask, eps_low=eps_low, eps_high=eps_high, delta=delta, per_sequence=False
    )
