"""LossInputs: the rules one micro-batch's loss inputs are built by, each applied once (trainers/loss_inputs.py)."""

import math

import pytest
import torch

from thermorl.trainers.loss_inputs import LossInputs, loss_mask


def batch(**extra):
    return {"completion_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), "advantages": torch.tensor([1.0, -1.0]),
            **extra}


def build(rows, entropy_mask=None, weights=None):
    logps = torch.log(torch.full((2, 4), 0.5)).requires_grad_()
    entropies = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 9.0, 9.0]], requires_grad=True)
    seen = []
    inputs = LossInputs.build(rows, loss_mask(rows), logps, entropies, entropy_mask,
                              lambda old: seen.append(old) or weights)
    return inputs, logps, seen


def test_pi_old_is_the_batch_s_or_the_current_policy_detached():
    inputs, logps, seen = build(batch())
    # One update per rollout (TRL computed no pi_old): pi_theta before the update is pi_old, without its gradient.
    assert torch.equal(inputs.old_per_token_logps, logps.detach()) and not inputs.old_per_token_logps.requires_grad
    assert seen == [inputs.old_per_token_logps]  # the token weights see the same pi_old as the loss
    old = torch.full((2, 4), -3.0)
    assert build(batch(old_per_token_logps=old))[0].old_per_token_logps is old


def test_tool_outputs_leave_the_mask_and_the_entropy():
    tools = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]])
    inputs, _, _ = build(batch(tool_mask=tools))
    assert inputs.mask.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]
    assert inputs.mean_entropy.item() == pytest.approx((0.1 + 0.3 + 0.4 + 0.5) / 4)


def test_the_bonus_entropy_covers_the_tokens_the_policy_loss_acts_on():
    plain, _, _ = build(batch())
    assert plain.entropy_over_policy is plain.entropy_over_mask  # no entropy mask: one sum serves both
    high = torch.tensor([[False, True, True, True], [False, True, True, True]])
    masked, _, _ = build(batch(), entropy_mask=high)
    assert masked.entropy_over_policy.tolist() == pytest.approx([0.2 + 0.3 + 0.5, 3.0])
    assert masked.mean_entropy.item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5) / 5)  # logged over the mask
    masked.entropy_over_policy[0].backward()  # the bonus has a gradient through the entropies
    assert not math.isclose(masked.entropies.grad.abs().sum().item(), 0.0)
