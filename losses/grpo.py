"""GRPO policy loss: PPO's clipped surrogate per token (DeepSeekMath, arXiv 2402.03300).

    loss = agg_t  -min(min(r_t, delta) A, clip(r_t, 1 - eps_low, 1 + eps_high) A),   r_t = pi_theta / pi_old

eps_high > eps_low is DAPO's clip-higher (arXiv 2503.14476, eps_high = 0.28); `delta` (off by default) caps the
unclipped ratio too (two-sided clipping). Default aggregation is the GRPO paper's (mean over each response's tokens,
then over responses), TRL's `loss_type="grpo"`; TRL's dapo, bnpo, dr_grpo and luspo are this loss with another
aggregation (see `thermorl.trainers.trl_loss`).
"""

import torch

from .common import CLIP_RANGES, PolicyTerms, clamped_log_ratio, clipped_policy_terms
from .registry import register_loss


@register_loss("grpo", ranges=CLIP_RANGES)
def grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    delta: float | None = None,
) -> PolicyTerms:
    ratio = torch.exp(clamped_log_ratio(per_token_logps, old_per_token_logps))
    return clipped_policy_terms(
        ratio, advantages, completion_mask, eps_low=eps_low, eps_high=eps_high, delta=delta, per_sequence=False
    )
