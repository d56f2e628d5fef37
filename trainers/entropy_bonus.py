"""TRL's entropy regularisation, owned by thermorl because thermorl replaces the loss TRL computes it in.

The loss becomes L_policy - coef * H, H the mean token entropy over the tokens the policy loss acts on (the entropy
mask included). With `use_adaptive_entropy` the coefficient follows Skywork-OR1's controller, as in TRL 1.16: at
every optimizer step the window's world-mean entropy is compared with `entropy_target`, and the coefficient moves by
`entropy_coef_delta` within [entropy_coef_min, entropy_coef_max]; it is applied (or not, above the target) from the
next step on, the same for every micro-batch of a window. Its state goes into each checkpoint in TRL's file and
format (`entropy_ctrl_state.json`), so a checkpoint resumes under thermorl or plain TRL alike.
"""

from __future__ import annotations

import json
import os

import torch

STATE_FILE = "entropy_ctrl_state.json"


class EntropyBonus:
    """The entropy term of the loss and, when adaptive, its controller's state."""

    def __init__(self, args, accelerator):
        self.args = args
        self.accelerator = accelerator
        self.coef = args.entropy_coef
        self.adaptive = args.use_adaptive_entropy
        self.enabled = self.coef != 0.0 or self.adaptive  # adaptive: a coefficient at its minimum may grow again
        self.last_world_entropy = float("inf")  # no measurement yet: no bonus in the first window
        self.window = None  # [entropy sum, token count] of the current accumulation window

    def __call__(self, entropy_sums: torch.Tensor, training: bool) -> tuple[torch.Tensor, dict]:
        """(coef * mean entropy, metrics to log), from [entropy sum, token count] over the tokens the policy loss acts
        on (LossInputs.entropy_over_policy); the coefficient is the one set at the last step."""
        mean_entropy = entropy_sums[0] / entropy_sums[1].clamp(min=1.0)
        coef = self.coef if not self.adaptive or self.last_world_entropy <= self.args.entropy_target else 0.0
        if self.adaptive and training:
            self._observe(entropy_sums.detach())
        step_ends = training and self.accelerator.sync_gradients
        return coef * mean_entropy, ({"entropy_coef": self.coef} if step_ends else {})

    def _observe(self, stats: torch.Tensor) -> None:
        self.window = stats if self.window is None else self.window + stats
        if not self.accelerator.sync_gradients:
            return
        # Optimizer-step boundary: the world's window entropy sets the coefficient for the next step.
        totals = self.accelerator.reduce(self.window, reduction="sum")
        world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
        step = self.args.entropy_coef_delta
        if world_entropy <= self.args.entropy_target:
            self.coef = min(self.coef + step, self.args.entropy_coef_max)
        else:
            self.coef = max(self.coef - step, self.args.entropy_coef_min)
        self.last_world_entropy = world_entropy
        self.window = None

    def save(self, checkpoint: str) -> None:
        if self.adaptive:
            with open(os.path.join(checkpoint, STATE_FILE), "w") as f:
                json.dump({"entropy_coef": self.coef, "last_world_entropy": self.last_world_entropy}, f)

    def load(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if self.adaptive and os.path.isfile(path):
            with open(path) as f:
                state = json.load(f)
            self.coef, self.last_world_entropy = state["entropy_coef"], state["last_world_entropy"]
