"""SAPO: Soft Adaptive Policy Optimization (Qwen, arXiv 2511.20347).

PPO's hard clip replaced by a smooth gate on the token ratio r = pi_theta / pi_old:

    loss = agg_t  -f(r) A,   f(r) = sigmoid(tau (r - 1)) * 4 / tau,   tau = tau_pos if A > 0 else tau_neg

The gradient weight is df/dr = w(r) = 4 p (1 - p), p = sigmoid(tau (r - 1)): w(1) = 1 (GRPO's gradient on
the first update after a rollout), decaying smoothly as r leaves 1. tau_neg > tau_pos damps negative
advantages harder. Matches TRL's `loss_type="sapo"` with `sapo_temperature_pos/neg`; `kl_bias_correction` as in
`grpo`.
"""

import torch

from .common import PolicyTerms, clamped_log_ratio, masked_mean, token_advantages
from .registry import register_loss


def sapo_gate_weight(ratio: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """SAPO's gradient weight w(r) = 4 p (1 - p), p = sigmoid(tau (r - 1)) (= sech^2(tau (r - 1) / 2))."""
    p = torch.sigmoid(tau * (ratio - 1))
    return 4 * p * (1 - p)


@register_loss("sapo", ranges={"tau_pos": "(0, inf)", "tau_neg": "(0, inf)"})
def sapo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> PolicyTerms:
    ratio = torch.exp(clamped_log_ratio(per_token_logps, old_per_token_logps))
    token_adv = token_advantages(advantages)
    tau = torch.where(token_adv > 0, tau_pos, tau_neg)
    soft_ratio = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    gate_weight = sapo_gate_weight(ratio.detach(), tau)
    metrics = {
        "sapo/gate_weight_mean": masked_mean(gate_weight, completion_mask).detach(),
        "sapo/gate_weight_below_half": masked_mean((gate_weight < 0.5).float(), completion_mask).detach(),
        "ratio/mean": masked_mean(ratio.detach(), completion_mask).detach(),
    }
    return PolicyTerms(-soft_ratio * token_adv, ratio, metrics)
