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

from ..errors import UserError
from ..losses import get_loss, loss_inputs, validate_loss_kwargs
from .annealed import AnnealedRolloutArguments, AnnealedRolloutMixin
from .atomic_checkpoint import AtomicCheckpointMixin
from .metrics import log_mean_metrics
from .reward_guard import guard_reward_funcs
from .trl_loss import check_no_trl_loss_fields, policy_loss_from_trl
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
    """GRPOConfig plus thermorl's fields. The policy loss is `policy_loss` with `policy_loss_kwargs`, or, with
    `policy_loss` unset, the one TRL's `loss_type`, `epsilon*`, `delta`, `sapo_temperature_*`, `vespo_*`,
    `importance_sampling_level` and `use_bias_correction_kl` choose (TRL's GRPOTrainer computes the same loss)."""

    policy_loss: str | None = field(
        default=None,
        metadata={
            "help": "Policy loss from thermorl's registry: grpo, gspo, gspo_token, sapo, cispo, vespo or adpo. "
            "Unset: TRL's loss_type and its fields choose the loss, as in TRL's GRPOTrainer."
        },
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
        # TRL accepts a negative beta and trains on: it rewards drifting from the reference model. (A negative epsilon
        # is refused by the loss mapping.)
        if self.beta < 0:
            raise UserError(f"beta {self.beta}: the KL coefficient must be >= 0 (0 turns the KL term off)")
        # transformers would refuse these at the first generation, naming its own fields (do_sample, max_new_tokens).
        if not self.temperature > 0:
            raise UserError(
                f"temperature: must be > 0, got {self.temperature}: GRPO learns from sampled rollouts (greedy ones "
                "give a group identical completions and no advantage); for near-greedy rollouts use a small "
                "temperature such as 0.1."
            )
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise UserError(
                f"max_completion_length: must be >= 1 (the most tokens a completion may have), got "
                f"{self.max_completion_length}."
            )
        if isinstance(self.policy_loss_kwargs, str):
            self.policy_loss_kwargs = json.loads(self.policy_loss_kwargs)
        self.policy_loss_kwargs = dict(self.policy_loss_kwargs or {})
        if self.policy_loss is None:
            if self.policy_loss_kwargs:
                raise UserError("policy_loss_kwargs is set but policy_loss is not: name the loss they belong to.")
            policy_loss_from_trl(self)  # refuses unsupported or invalid TRL loss settings now, not at step 1
        else:
            get_loss(self.policy_loss)
            check_no_trl_loss_fields(self)
            if "beta" in self.policy_loss_kwargs:  # the trainer passes its own beta: two values would collide
                raise UserError(
                    "policy_loss_kwargs sets 'beta': the KL coefficient is TRL's field beta (it also loads the "
                    "reference model); set beta instead."
                )
            self.policy_loss_kwargs = validate_loss_kwargs(self.policy_loss, self.policy_loss_kwargs)

    def resolved_policy_loss(self) -> tuple[str, dict[str, Any]]:
        """(registry loss name, its parameters): thermorl's own fields, else what TRL's loss fields mean."""
        if self.policy_loss is None:
            return policy_loss_from_trl(self)
        return self.policy_loss, self.policy_loss_kwargs


class ThermoGRPOTrainer(AtomicCheckpointMixin, AnnealedRolloutMixin, VarianceAwareSamplingMixin, GRPOTrainer):
    """A GRPOTrainer whose loss is a `thermorl.losses` registry loss: `args.policy_loss`, or the one TRL's loss
    fields mean (`ThermoGRPOConfig.resolved_policy_loss`)."""

    _tag_names = ["trl", "grpo", "thermorl"]

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: ThermoGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        """TRL's GRPOTrainer signature (checked by `trl_compat`); `reward_funcs` may be None when an environment
        supplies the reward, and TRL refuses a run with no reward source."""
        if args is None:
            args = ThermoGRPOConfig(output_dir="thermorl-output")
        if not isinstance(args, ThermoGRPOConfig):
            raise TypeError(f"ThermoGRPOTrainer needs a ThermoGRPOConfig, got {type(args).__name__}.")
        if reward_funcs is not None:
            reward_funcs = guard_reward_funcs(reward_funcs if isinstance(reward_funcs, list) else [reward_funcs])
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            tools=tools,
            rollout_func=rollout_func,
            environment_factory=environment_factory,
        )
        self.policy_loss_name, self.policy_loss_kwargs = args.resolved_policy_loss()
        self.policy_loss_fn = get_loss(self.policy_loss_name)
        self._loss_inputs = set(loss_inputs(self.policy_loss_name))

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
            "max_completion_length": self.max_completion_length,
            "tokens_per_micro_batch": self._tokens_per_micro_batch(inputs),
            "importance_sampling_ratio": inputs.get("importance_sampling_ratio") if self._vllm_is_correction else None,
        }
        return {k: v for k, v in available.items() if k in self._loss_inputs}

    @property
    def _vllm_is_correction(self) -> bool:
        # Under a temperature schedule the vLLM log-probs are the annealed behaviour policy's: ead_correction corrects
        # per token, where TRL's sequence-level ratio would mask or clip whole annealed sequences.
        return self.use_vllm and self.vllm_importance_sampling_correction and self.rollout_schedules is None

    def _tokens_per_micro_batch(self, inputs) -> torch.Tensor | None:
        """The generation batch's loss tokens per process and micro-batch (TRL's dapo/cispo/vespo normaliser; the
        division by gradient accumulation steps happens in `_compute_loss`, as for every loss)."""
        if "num_items_in_batch" not in inputs:
            return None
        tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        return tokens / self.args.steps_per_generation if self.model.training else tokens

    def _token_weights(self, inputs, per_token_logps, entropies, mask) -> torch.Tensor | None:
        """Per-token multipliers on the policy loss: the rollout's own correction (e.g. EAD's truncated importance
        sampling) and TRL's options (entropy mask, vLLM IS, OPSM)."""
        weights = []
        rollout_weights = self._rollout_token_weights(inputs, per_token_logps, mask)
        if rollout_weights is not None:
            weights.append(rollout_weights)
        if self.top_entropy_quantile < 1.0:
            weights.append(self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile))
        loss_takes_is_ratio = "importance_sampling_ratio" in self._loss_inputs  # vespo folds it into its weight
        if self._vllm_is_correction and "importance_sampling_ratio" in inputs and not loss_takes_is_ratio:
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
            **self.policy_loss_kwargs,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The '{self.policy_loss_name}' loss is {loss.item()} at global step {self.state.global_step}; "
                "no update was applied. Check rewards, learning rate and dtype."
            )

        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self._entropy_bonus_enabled:
            metrics["policy_loss"] = loss.item()
            loss = loss - self._entropy_bonus(entropies, mask, mode)
        loss = loss / accumulation  # TRL turns off the Trainer's own gradient-accumulation scaling
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            metrics["aux_loss"] = aux_loss.item()

        entropy = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
        log_mean_metrics(self, mode, {"entropy": entropy.item(), **metrics})
        return loss

    def _entropy_bonus(self, entropies, mask, mode) -> torch.Tensor:
        """TRL's entropy regularisation, coef * mean token entropy (over the tokens the policy loss acts on), with
        its adaptive coefficient (Skywork-OR1): TRL writes it inside its `_compute_loss`, so it is restated here,
        state and metric included (TRL saves and restores the adaptive state with each checkpoint)."""
        if self.top_entropy_quantile < 1.0:
            mask = mask * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        mean_entropy = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
        # the coefficient and gate from the end of the previous optimizer step, the same for the whole window
        if self.use_adaptive_entropy:
            coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
        else:
            coef = self.entropy_coef
        if self.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * mask).sum(), mask.sum()]).detach()
            window = stats if self._entropy_window_stats is None else self._entropy_window_stats + stats
            self._entropy_window_stats = window
            if self.accelerator.sync_gradients:  # optimizer-step boundary: update the coefficient for the next step
                totals = self.accelerator.reduce(window, reduction="sum")
                world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
                step = self.args.entropy_coef_delta
                if world_entropy <= self.args.entropy_target:
                    self.entropy_coef = min(self.entropy_coef + step, self.args.entropy_coef_max)
                else:
                    self.entropy_coef = max(self.entropy_coef - step, self.args.entropy_coef_min)
                self._last_world_entropy = world_entropy
                self._entropy_window_stats = None
        if mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        return coef * mean_entropy
