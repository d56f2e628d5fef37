"""Pieces shared by every policy loss: what a loss returns, log-ratio clamp, masked means, KL penalty, token
aggregation.

Per-token tensors are (B, T); `mask` is the completion mask (bool or 0/1) of the same shape.
"""

from dataclasses import dataclass

import torch

from ..errors import UserError

# verl clamps log-ratios to this range: exp(20) ~ 5e8 stays finite in fp32 and in its backward pass.
LOG_RATIO_CLAMP = 20.0

# Valid ranges of the clip parameters: 1 - eps_low must stay a positive ratio; a cap delta <= 1 would cut every
# ratio above 1, which is no longer clipping.
CLIP_RANGES = {"eps_low": "[0, 1)", "eps_high": "[0, inf)", "delta": "(1, inf)"}


@dataclass
class PolicyTerms:
    """What a token-level loss returns; `losses.policy_loss` weights, adds the KL penalty and aggregates.

    `per_token_loss`: (B, T), the policy term of each token. `ratio`: the importance ratio pi_theta / pi_old, (B, T)
    or (B, 1) per sequence, with its gradient: the KL term's bias correction multiplies by it.
    """

    per_token_loss: torch.Tensor
    ratio: torch.Tensor
    metrics: dict[str, torch.Tensor]


@dataclass
class GroupPolicyTerms:
    """What a group-level loss (one term per prompt's group, e.g. ADPO's listwise loss) returns: `per_group_loss`
    (G,), already weighted; `losses.policy_loss` takes its mean and adds the KL penalty."""

    per_group_loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


AGGREGATIONS = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "seq_mean_token_sum",
    "batch_token_mean",
)


def clamped_log_ratio(per_token_logps: torch.Tensor, base_per_token_logps: torch.Tensor) -> torch.Tensor:
    """log(pi / pi_base) per token, clamped to [-20, 20]; the base log-probs are treated as constants."""
    return (per_token_logps - base_per_token_logps.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the masked entries (along `dim`, or all of them); 0 where nothing is masked in."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per sequence, (B,): itself if given as (B,), its masked token mean if (B, T)."""
    return advantages if advantages.dim() == 1 else masked_mean(advantages, mask, dim=-1)


def token_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages shaped to broadcast against (B, T): (B,) -> (B, 1); (B, T) unchanged."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def k3_kl(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate k3 = exp(d) - d - 1, d = log pi_ref - log pi (TRL's estimator)."""
    log_ratio = -clamped_log_ratio(per_token_logps, ref_per_token_logps)
    return torch.exp(log_ratio) - log_ratio - 1


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise UserError(f"Unknown aggregation {aggregation!r}; valid aggregations: {', '.join(AGGREGATIONS)}")


def aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str,
    *,
    max_completion_length: int | None = None,
    tokens_per_micro_batch: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    token_mean: sum over all masked tokens / their count (TRL "bnpo").
    seq_mean_token_mean: mean over each sequence's tokens, then over sequences (GRPO paper, TRL "grpo").
    seq_mean_token_sum_norm: each sequence's token sum / max_completion_length, then mean (Dr. GRPO,
        arXiv 2503.20783; TRL "dr_grpo"). Without `max_completion_length` the mask width T stands in for it.
    seq_mean_token_sum: each sequence's token sum, then mean (LUSPO, TRL "luspo").
    batch_token_mean: token sum / `tokens_per_micro_batch`, the optimizer step's completion tokens per micro-batch,
        so every token of the step weighs the same whatever micro-batch it lands in (DAPO, TRL "dapo").
    """
    check_aggregation(aggregation)
    masked = per_token_loss * mask.to(per_token_loss.dtype)
    if aggregation == "token_mean":
        return masked_mean(per_token_loss, mask)
    if aggregation == "seq_mean_token_mean":
        return masked_mean(per_token_loss, mask, dim=-1).mean()
    if aggregation == "seq_mean_token_sum_norm":
        return masked.sum() / (mask.shape[0] * (max_completion_length or mask.shape[-1]))
    if aggregation == "seq_mean_token_sum":
        return masked.sum(-1).mean()
    if tokens_per_micro_batch is None:
        raise ValueError("aggregation='batch_token_mean' needs tokens_per_micro_batch (supplied by the trainer)")
    return masked.sum() / tokens_per_micro_batch


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float, delta: float | None = None
) -> torch.Tensor:
    """PPO clip per token: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A).

    With `delta` the unclipped ratio is capped at delta as well (two-sided clipping, arXiv 2505.22617 via TRL's
    `delta`): a negative advantage times a huge ratio no longer gives an unbounded loss.
    """
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    if delta is not None:
        ratio = ratio.clamp(max=delta)
    return -torch.min(ratio * advantages, clipped_ratio * advantages)


def clip_metrics(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    per_sequence: bool = False,
) -> dict[str, torch.Tensor]:
    """Shares clipped (TRL's definitions): low = r < 1 - eps_low & A < 0, high = r > 1 + eps_high & A > 0.

    Shares of masked tokens, or with `per_sequence` of sequences that have tokens (each counted by the share of
    its tokens, which is 0 or 1 when ratio and advantage are per sequence).
    """
    ratio, advantages = ratio.detach(), advantages.detach()
    low = ((ratio < 1 - eps_low) & (advantages < 0)).expand(mask.shape).float()
    high = ((ratio > 1 + eps_high) & (advantages > 0)).expand(mask.shape).float()
    flags = {"clip_ratio/low": low, "clip_ratio/high": high, "clip_ratio/region": low + high}
    if not per_sequence:
        return {key: masked_mean(flag, mask).detach() for key, flag in flags.items()}
    has_tokens = mask.sum(-1) > 0
    return {key: masked_mean(masked_mean(flag, mask, dim=-1), has_tokens).detach() for key, flag in flags.items()}


def clipped_policy_terms(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    delta: float | None,
    per_sequence: bool,
) -> PolicyTerms:
    """PPO-clip terms on `ratio` ((B, T) per token, or (B, 1) per sequence), with clip and ratio metrics."""
    token_adv = token_advantages(advantages)
    # TRL counts clipping on the delta-capped ratio
    capped = ratio if delta is None else ratio.clamp(max=delta)
    metrics = clip_metrics(capped, token_adv, completion_mask, eps_low, eps_high, per_sequence=per_sequence)
    detached = ratio.detach()
    if per_sequence:  # (B, 1): one ratio per sequence that has tokens
        metrics["ratio/mean"] = masked_mean(detached[:, 0], completion_mask.sum(-1) > 0).detach()
    else:
        metrics["ratio/mean"] = masked_mean(detached.expand(completion_mask.shape), completion_mask).detach()
    return PolicyTerms(clipped_surrogate(ratio, token_adv, eps_low, eps_high, delta), ratio, metrics)
