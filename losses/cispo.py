"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585).

The importance weight is clipped and detached, then scales a REINFORCE term, so no token loses its gradient:

    loss = agg_t  -sg[min(r_t, ratio_cap)] A log pi_theta(y_t),   r_t = pi_theta / pi_old

TRL's `loss_type="cispo"` caps at `epsilon_high` (an absolute cap, not 1 + eps) and aggregates over the optimizer
step's tokens (`batch_token_mean`). The paper sets no lower bound and tunes only the upper one without publishing
it; the default 1.28 is verl's and Trinity-RFT's (1 + DAPO's 0.28).
"""

import torch

from .common import PolicyTerms, clamped_log_ratio, masked_mean, token_advantages
from .registry import register_loss


@register_loss("cispo", aggregation="token_mean", ranges={"ratio_cap": "(0, inf)"})
def cispo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    ratio_cap: float = 1.28,
) -> PolicyTerms:
    ratio = torch.exp(clamped_log_ratio(per_token_logps, old_per_token_logps))
    token_adv = token_advantages(advantages)
    capped = ((ratio.detach() > ratio_cap) & (token_adv > 0)).float()
    metrics = {
        "cispo/clip_ratio": masked_mean(capped, completion_mask).detach(),
        "ratio/mean": masked_mean(ratio.detach(), completion_mask).detach(),
    }
    return PolicyTerms(-ratio.clamp(max=ratio_cap).detach() * token_adv * per_token_logps, ratio, metrics)
