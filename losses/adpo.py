"""ADPO: Anchored Direct Preference Optimization (arXiv 2510.18913), online group form.

For the P responses of one prompt, with sequence log-probs l_i (token SUM, as in the authors' code
wk222/TRL-ADPO) and anchor log-probs l_i^anc (pi_old's, the on-policy anchor):

    u_i = (l_i - l_i^anc) / tau_anc,   p = softmax(u),   q = softmax(A / beta_r)   (within the group)
    loss = mean over groups of  -sum_i w_i q_i log p_i

(A centred by its group mean, as the authors write it, gives the same q: softmax is shift-invariant.)
w_i is the sequence's mean token weight (1 without token weights). The gradient on l_i is
(p_i - q_i) / tau_anc; the optimum is pi* ~ pi_anc q^tau_anc. With P = 2, q = (1, 0) and tau_anc = 1/beta this
is DPO's -log sigmoid(beta Delta).

KL choice: with beta != 0 `losses.policy_loss` adds beta times the k3 KL to the reference, aggregated on its own
(the `aggregation`, default seq_mean_token_mean, governs only this term): each group's loss gets
beta * (mean KL of its sequences), all groups being of equal size.

Adaptive tau (paper's per-prompt rule): tau = clamp(tau_anc (1 + tau_alpha H + tau_beta (1 - H)(1 - R)),
tau_min, tau_max), H the group's mean token entropy / log V, R the group's mean reward clamped to [0, 1].
tau_beta = 0.5 is the authors' default (wk222/verlm `adaptive_tau_beta`).
"""

import math

import torch

from ..errors import UserError
from .common import GroupPolicyTerms, masked_mean, sequence_advantages
from .registry import register_loss


def anchored_listwise_loss(
    seq_logps: torch.Tensor,
    anchor_seq_logps: torch.Tensor,
    target_probs: torch.Tensor,
    tau_anc: float | torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-group ADPO loss -sum_i w_i q_i log softmax((l - l_anc) / tau_anc)_i; inputs (G, P), output (G,).

    `tau_anc` is a float or broadcasts against (G, P) (e.g. (G, 1) for one temperature per group).
    """
    log_p = torch.log_softmax((seq_logps - anchor_seq_logps) / tau_anc, dim=-1)
    terms = target_probs * log_p
    if weights is not None:
        terms = terms * weights
    return -terms.sum(-1)


def adaptive_anchor_temperature(
    tau_anc: float,
    normalized_entropy: torch.Tensor,
    mean_reward: torch.Tensor,
    tau_alpha: float,
    tau_beta: float,
    tau_min: float,
    tau_max: float,
) -> torch.Tensor:
    """Per-group tau = clamp(tau_anc (1 + alpha H + beta (1 - H)(1 - R)), tau_min, tau_max), H and R in [0, 1].

    High entropy (an unsure model) and confident failure both widen the trust region.
    """
    h = normalized_entropy.clamp(0.0, 1.0)
    r = mean_reward.clamp(0.0, 1.0)
    return (tau_anc * (1 + tau_alpha * h + tau_beta * (1 - h) * (1 - r))).clamp(tau_min, tau_max)


def _group_order(group_ids: torch.Tensor | None, batch_size: int, group_size: int) -> torch.Tensor:
    """Row permutation that puts each group's members next to each other, checking every group is whole."""
    if group_size < 1:
        raise UserError(f"ADPO group_size must be >= 1, got {group_size}")
    whole_groups = "ADPO needs whole groups (all group_size responses of a prompt) in each micro-batch"
    if group_ids is None:
        if batch_size % group_size:
            raise UserError(f"{whole_groups}: {batch_size} rows is not a multiple of group_size={group_size}")
        return torch.arange(batch_size)
    ids, counts = torch.unique(group_ids, return_counts=True)
    if (counts != group_size).any():
        partial = {int(i): int(c) for i, c in zip(ids, counts) if c != group_size}
        raise UserError(f"{whole_groups}: group_size={group_size} but these group ids have {partial} members")
    return torch.argsort(group_ids, stable=True)


ADPO_INPUTS = ("group_size", "token_weights", "group_ids", "entropies", "rewards", "vocab_size")


def _check_tau_bounds(params: dict) -> None:
    if params["tau_min"] > params["tau_max"]:
        raise UserError(f"tau_min={params['tau_min']} must not exceed tau_max={params['tau_max']}")


ADPO_RANGES = {
    "tau_anc": "(0, inf)",
    "beta_r": "(0, inf)",
    "tau_alpha": "[0, inf)",
    "tau_beta": "[0, inf)",
    "tau_min": "(0, inf)",
    "tau_max": "(0, inf)",
}


@register_loss("adpo", group_level=True, inputs=ADPO_INPUTS, ranges=ADPO_RANGES, check=_check_tau_bounds)
def adpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    group_size: int,
    token_weights: torch.Tensor | None = None,
    tau_anc: float = 0.8,
    beta_r: float = 0.5,
    group_ids: torch.Tensor | None = None,
    adaptive_tau: bool = False,
    tau_alpha: float = 1.0,
    tau_beta: float = 0.5,
    tau_min: float = 0.1,
    tau_max: float = 5.0,
    entropies: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> GroupPolicyTerms:
    mask = completion_mask.to(per_token_logps.dtype)
    order = _group_order(group_ids, per_token_logps.shape[0], group_size).to(per_token_logps.device)

    def grouped(per_sequence: torch.Tensor) -> torch.Tensor:
        return per_sequence[order].view(-1, group_size)

    seq_logps = grouped((per_token_logps * mask).sum(-1))
    anchor_seq_logps = grouped((old_per_token_logps.detach() * mask).sum(-1))
    target_probs = torch.softmax(grouped(sequence_advantages(advantages.detach(), mask)) / beta_r, dim=-1)
    weights = None if token_weights is None else grouped(masked_mean(token_weights.detach(), mask, dim=-1))

    if adaptive_tau:
        needed = {"entropies": entropies, "rewards": rewards, "vocab_size": vocab_size}
        missing = [key for key, value in needed.items() if value is None]
        if missing:
            raise ValueError(f"ADPO adaptive_tau=True needs {', '.join(missing)}")
        normalized_entropy = grouped(masked_mean(entropies.detach(), mask, dim=-1)).mean(-1) / math.log(vocab_size)
        mean_reward = grouped(rewards.detach().to(mask.dtype)).mean(-1)
        tau = adaptive_anchor_temperature(
            tau_anc, normalized_entropy, mean_reward, tau_alpha, tau_beta, tau_min, tau_max
        ).unsqueeze(-1)
    else:
        tau = torch.full_like(seq_logps[:, :1], tau_anc)

    per_group_loss = anchored_listwise_loss(seq_logps, anchor_seq_logps, target_probs, tau, weights)
    with torch.no_grad():
        policy_probs = torch.softmax((seq_logps - anchor_seq_logps) / tau, dim=-1)
        metrics = {
            "adpo/tau": tau.mean().detach(),
            "adpo/target_entropy": torch.special.entr(target_probs).sum(-1).mean().detach(),
            "adpo/policy_entropy": torch.special.entr(policy_probs).sum(-1).mean().detach(),
        }
    return GroupPolicyTerms(per_group_loss, metrics)
