"""ADPO on offline preference data (arXiv 2510.18913): pairwise (hard or soft labels) and listwise targets.

A prompt's P candidates y_1..y_P have policy sequence log-probs l_i (token sums) and anchor log-probs l_i^anc (a fixed
reference model, its EMA, or a periodic copy of the policy). The loss is the group loss of `adpo.py`
(`anchored_listwise_loss`) with the target q read from the data instead of from advantages:

    p = softmax((l - l^anc) / tau_anc),   loss = mean over prompts of  -sum_i q_i log p_i

- pairwise: P = 2 (chosen, rejected) and q = (q_c, 1 - q_c), q_c = P(chosen is preferred) in [0, 1]:
  loss = softplus(Delta / tau_anc) - q_c Delta / tau_anc, Delta = (l_c - l_r) - (l_c^anc - l_r^anc).
  With q_c = 1 and tau_anc = 1/beta it is DPO's -log sigmoid(beta Delta) (arXiv 2305.18290).
- listwise: q = softmax(scores / beta_r) over any number of scored candidates (higher score = better).

The gradient on l_i is (p_i - q_i) / tau_anc. These functions take per-prompt (G, P) tensors, not the per-token
(B, T) tensors of the GRPO-family registry, hence no registration there.
"""

import torch

from ..errors import UserError
from .adpo import anchored_listwise_loss


def pairwise_target_probs(preference_probability: torch.Tensor) -> torch.Tensor:
    """(B,) P(chosen preferred) -> (B, 2) target over (chosen, rejected); 1 is DPO's hard label."""
    in_range = (preference_probability >= 0) & (preference_probability <= 1)  # NaN is out of range too
    if not in_range.all():
        raise UserError(f"preference_probability must lie in [0, 1], got {preference_probability[~in_range].tolist()}")
    return torch.stack([preference_probability, 1 - preference_probability], dim=-1)


def score_target_probs(scores: torch.Tensor, beta_r: float) -> torch.Tensor:
    """(G, P) candidate scores -> target q = softmax(scores / beta_r) per prompt; beta_r > 0 (ThermoADPOConfig checks
    it where it is set)."""
    if not torch.isfinite(scores).all():
        raise UserError(f"scores must be finite, got {scores.tolist()}")
    return torch.softmax(scores / beta_r, dim=-1)


def adpo_preference_loss(
    seq_logps: torch.Tensor,
    anchor_seq_logps: torch.Tensor,
    target_probs: torch.Tensor,
    tau_anc: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over prompts of -sum_i q_i log softmax((l - l^anc) / tau_anc)_i; inputs (G, P) -> (loss, metrics).

    Metrics: the entropies of q and p, and win_mass, the mass p puts on q's best candidates (the paper's WinMass).
    tau_anc > 0: ThermoADPOConfig checks it where it is set.
    """
    if seq_logps.dim() != 2 or seq_logps.size(-1) < 2:
        raise ValueError(f"seq_logps must be (prompts, candidates >= 2), got shape {tuple(seq_logps.shape)}")
    if anchor_seq_logps.shape != seq_logps.shape or target_probs.shape != seq_logps.shape:
        raise ValueError(
            f"seq_logps {tuple(seq_logps.shape)}, anchor_seq_logps {tuple(anchor_seq_logps.shape)} and "
            f"target_probs {tuple(target_probs.shape)} must have the same shape"
        )
    anchor_seq_logps, target_probs = anchor_seq_logps.detach(), target_probs.detach()
    loss = anchored_listwise_loss(seq_logps, anchor_seq_logps, target_probs, tau_anc).mean()
    with torch.no_grad():
        policy_probs = torch.softmax((seq_logps - anchor_seq_logps) / tau_anc, dim=-1)
        best = target_probs == target_probs.max(dim=-1, keepdim=True).values
        metrics = {
            "adpo/target_entropy": torch.special.entr(target_probs).sum(-1).mean().detach(),
            "adpo/policy_entropy": torch.special.entr(policy_probs).sum(-1).mean().detach(),
            "adpo/win_mass": (policy_probs * best).sum(-1).mean().detach(),
        }
    return loss, metrics
