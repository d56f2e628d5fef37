"""ThermoGRPOTrainer: TRL's GRPOTrainer with its policy loss taken from thermorl's loss registry.

Generation, rewards, advantages, reference model, PEFT, vLLM and logging stay TRL's. Two hooks change:
`_generate_and_score_completions` adds what group-level losses need (each row's group id), and `_compute_loss`
hands log-probs, advantages and masks to a pure function from `thermorl.losses`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from ..losses import get_loss, loss_inputs, validate_loss_kwargs
from .annealed import AnnealedRolloutArguments, AnnealedRolloutMixin
from .atomic_checkpoint import AtomicCheckpointMixin
from .metrics import log_mean_metrics
from .reward_guard import guard_reward_func
from .variance_aware import VarianceAwareSamplingArguments, VarianceAwareSamplingMixin

# Inputs TRL's forward pass may need besides ids and masks (vision-language models).
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


@dataclass
class ThermoGRPOConfig(AnnealedRolloutArguments, VarianceAwareSamplingArguments, GRPOConfig):
    """GRPOConfig plus thermorl's fields. TRL's `loss_type`, `epsilon*` and `sapo_temperature_*` are not used:
    the loss and its parameters come from `policy_loss` and `policy_loss_kwargs`."""

    policy_loss: str = field(
        default="sapo",
        metadata={"help": "Policy loss from thermorl's registry: grpo, gspo, gspo_token, sapo or adpo."},
    )
    policy_loss_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword parameters of the policy loss (e.g. {'tau_pos': 1.0, 'tau_neg': 1.05} for sapo, "
            "{'eps_low': 3e-4, 'eps_high': 4e-4} for gspo, 'aggregation'). Unset ones keep the paper defaults."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.policy_loss_kwargs, str):
            self.policy_loss_kwargs = json.loads(self.policy_loss_kwargs)
        self.policy_loss_kwargs = dict(self.policy_loss_kwargs or {})
        get_loss(self.policy_loss)
        validate_loss_kwargs(self.policy_loss, self.policy_loss_kwargs)


class ThermoGRPOTrainer(AtomicCheckpointMixin, AnnealedRolloutMixin, VarianceAwareSamplingMixin, GRPOTrainer):
    """A GRPOTrainer whose loss is `thermorl.losses.get_loss(args.policy_loss)`."""

    _tag_names = ["trl", "grpo", "thermorl"]

    def __init__(self, model, reward_funcs, args: ThermoGRPOConfig | None = None, **kwargs):
        if args is None:
            args = ThermoGRPOConfig(output_dir="thermorl-output")
        if not isinstance(args, ThermoGRPOConfig):
            raise TypeError(f"ThermoGRPOTrainer needs a ThermoGRPOConfig, got {type(args).__name__}.")
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        super().__init__(model=model, reward_funcs=[guard_reward_func(f) for f in funcs], args=args, **kwargs)
        if self._entropy_bonus_enabled:
            raise ValueError("entropy_coef (TRL's entropy bonus) is not supported by ThermoGRPOTrainer; set it to 0.")
        self.policy_loss_fn = get_loss(args.policy_loss)
        self._loss_inputs = set(loss_inputs(args.policy_loss))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # TRL keeps only advantages; ADPO's adaptive tau and VAS's online scores need the rewards themselves.
        weights = self.reward_weights.to(rewards_per_func.device)
        self._latest_rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if not torch.isfinite(batch["advantages"]).all():
            raise FloatingPointError("Non-finite advantages after reward normalisation; check the reward functions.")
        # Rows are shuffled before micro-batching, so group-level losses need each row's group explicitly.
        local_rows = batch["advantages"].size(0)
        first_row = self.accelerator.process_index * local_rows
        rows = torch.arange(first_row, first_row + local_rows, device=batch["advantages"].device)
        batch["group_ids"] = rows // self.num_generations
        batch["rewards"] = self._latest_rewards[first_row : first_row + local_rows]
        return batch

    def _loss_context(self, inputs, entropies) -> dict[str, Any]:
        """Trainer facts a loss declared at registration that it needs (e.g. ADPO's group structure)."""
        available = {
            "group_size": self.num_generations,
            "group_ids": inputs.get("group_ids"),
            "rewards": inputs.get("rewards"),
            "entropies": entropies,
            "vocab_size": getattr(self.model.config, "vocab_size", None),
        }
        return {k: v for k, v in available.items() if k in self._loss_inputs}

    def _token_weights(self, inputs, per_token_logps, entropies, mask) -> torch.Tensor | None:
        """Per-token multipliers on the policy loss: the rollout's own correction (e.g. EAD's truncated importance
        sampling) and TRL's options (entropy mask, vLLM IS, OPSM)."""
        weights = []
        rollout_weights = self._rollout_token_weights(inputs, per_token_logps, mask)
        if rollout_weights is not None:
            weights.append(rollout_weights)
        if self.top_entropy_quantile < 1.0:
            weights.append(self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile))
        # Under a temperature schedule the vLLM log-probs are the annealed behaviour policy's: ead_correction (above)
        # corrects per token, where TRL's ratio would mask or clip whole annealed sequences.
        if (
            self.use_vllm
            and self.vllm_importance_sampling_correction
            and "importance_sampling_ratio" in inputs
            and self.rollout_schedules is None
        ):
            weights.append(inputs["importance_sampling_ratio"])
        if self.off_policy_mask_threshold is not None:
            old = inputs.get("old_per_token_logps", per_token_logps.detach())
            weights.append(
                self.get_off_policy_mask(
                    advantages=inputs["advantages"].view(-1, 1) if inputs["advantages"].dim() == 1 else inputs["advantages"],
                    per_token_logps=per_token_logps,
                    sampling_per_token_logps=inputs.get("sampling_per_token_logps", old),
                    mask=mask,
                    off_policy_threshold=self.off_policy_mask_threshold,
                )
            )
        if not weights:
            return None
        product = torch.ones_like(per_token_logps)
        for weight in weights:
            product = product * weight
        return product.detach()

    def _compute_loss(self, model, inputs):
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _FORWARD_KEYS},
        )
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:  # one update per rollout: TRL skips computing pi_old
            old_per_token_logps = per_token_logps.detach()

        loss, metrics = self.policy_loss_fn(
            per_token_logps,
            old_per_token_logps,
            inputs["advantages"],
            mask,
            token_weights=self._token_weights(inputs, per_token_logps, entropies, mask),
            ref_per_token_logps=inputs.get("ref_per_token_logps"),
            beta=self.beta,
            **self._loss_context(inputs, entropies),
            **self.args.policy_loss_kwargs,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The '{self.args.policy_loss}' loss is {loss.item()} at global step {self.state.global_step}; "
                "no update was applied. Check rewards, learning rate and dtype."
            )

        mode = "train" if self.model.training else "eval"
        if mode == "train":  # TRL turns off the Trainer's own gradient-accumulation scaling
            loss = loss / self.current_gradient_accumulation_steps
        if self.aux_loss_enabled:
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer

        entropy = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
        log_mean_metrics(self, mode, {"entropy": entropy.item(), **metrics})
        return loss
