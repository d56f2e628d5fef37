"""LossInputs: what one micro-batch's policy loss, entropy bonus and metrics read, built once per micro-batch.

`ThermoGRPOTrainer._loss_inputs` builds it from TRL's batch and the policy's forward pass. Every rule that used to be
applied where a value was needed lives here once: which tokens the loss acts on, what pi_old is when TRL did not
compute it, TRL's entropy mask, and the entropy sums the bonus and the logged entropy share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def loss_mask(batch) -> torch.Tensor:
    """The tokens a loss acts on: the completion's, less the tool outputs' where the batch has a tool mask."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]


def entropy_sums(entropies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[sum of `entropies` over `mask`, token count]: the mean's parts, kept apart so processes and micro-batches add."""
    return torch.stack([(entropies * mask).sum(), mask.sum().to(entropies.dtype)])


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch's loss inputs, (B, T) per token unless noted.

    per_token_logps       log pi_theta of the sampled tokens (with gradient)
    old_per_token_logps   log pi_old: the batch's, or with none there the current ones detached (TRL computes pi_old
                          only for several updates per rollout; with one, pi_theta before the update is pi_old)
    advantages            (B,) or (B, T)
    mask                  `loss_mask`
    entropies             the policy's token entropies
    entropy_mask          TRL's top_entropy_quantile mask (the loss acts on high-entropy tokens only), None when off
    token_weights         the product of the per-token multipliers on the policy loss (EAD's TIS, TRL's masks and
                          vLLM IS ratio), detached; None when there are none
    entropy_over_mask     `entropy_sums` over `mask` (the logged entropy)
    entropy_over_policy   `entropy_sums` over the tokens the policy loss acts on, mask x entropy_mask (the bonus's)
    """

    per_token_logps: torch.Tensor
    old_per_token_logps: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    entropies: torch.Tensor
    entropy_mask: torch.Tensor | None
    token_weights: torch.Tensor | None
    entropy_over_mask: torch.Tensor
    entropy_over_policy: torch.Tensor

    @classmethod
    def build(cls, batch, mask, per_token_logps, entropies, entropy_mask, token_weights) -> LossInputs:
        """From TRL's micro-batch, its `loss_mask` and the forward pass; `token_weights(old_per_token_logps)` gives
        the weights."""
        old = batch.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        over_mask = entropy_sums(entropies, mask)
        over_policy = over_mask if entropy_mask is None else entropy_sums(entropies, mask * entropy_mask)
        return cls(per_token_logps, old, batch["advantages"], mask, entropies, entropy_mask,
                   token_weights(old), over_mask, over_policy)

    @property
    def mean_entropy(self) -> torch.Tensor:
        """The mean token entropy over `mask`."""
        return self.entropy_over_mask[0] / self.entropy_over_mask[1].clamp(min=1.0)
