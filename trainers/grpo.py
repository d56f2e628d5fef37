"""ThermoGRPOConfig and ThermoGRPOTrainer: TRL's GRPOTrainer with its policy loss taken from thermorl's loss
registry, and thermorl's rollout, prompt-sampling, entropy and checkpoint components.

Generation, rewards, advantages, reference model, PEFT, vLLM and logging stay TRL's. The trainer overrides each TRL
hook it needs once, in the order of one training step (the class docstring), and delegates to its components; what
a rollout produces (group ids, rewards, behaviour log-probs) travels in TRL's batch to `_compute_loss`, which hands
log-probs, advantages and masks to a pure function from `thermorl.losses`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer, is_conversational

from ..errors import UserError
from ..losses import get_loss, loss_inputs, validate_loss_kwargs
from .annealed import AnnealedRolloutArguments, RolloutTempering, SampledRollout
from .annealed_vllm import vllm_setup
from .atomic_checkpoint import AtomicCheckpoints, final_save_has_one_writer
from .entropy_bonus import EntropyBonus
from .json_fields import json_field
from .loss_inputs import LossInputs, loss_mask
from .metrics import QueuedMetrics
from .reward_guard import guard_reward_funcs
from .trl_loss import check_no_trl_loss_fields, policy_loss_from_trl
from .trl_surface import disown_adaptive_entropy, drop_pending_logs, keep_signature_column, metric_buffer
from .variance_aware import (
    PROMPT_INDEX_COLUMN,
    VarianceAwarePrompts,
    VarianceAwareSamplingArguments,
    split_prompt_indices,
)

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
        self.policy_loss_kwargs = json_field("policy_loss_kwargs", self.policy_loss_kwargs, "a mapping (or its JSON string)")
        if self.policy_loss_kwargs is not None and not isinstance(self.policy_loss_kwargs, dict):
            raise UserError(f"policy_loss_kwargs must be a mapping of the loss's parameters, got {self.policy_loss_kwargs!r}")
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


@dataclass
class Rollout:
    """What one generate-and-score call leaves besides TRL's batch, filled by the TRL hooks it runs through."""

    sampled: SampledRollout | None = None  # `_generate_single_turn` under a temperature schedule
    rewards: torch.Tensor | None = None  # `_calculate_rewards`: the weighted reward sum of every process's rows
    completion_ids: list | None = None  # `_calculate_rewards`: this process's completion ids


class ThermoGRPOTrainer(GRPOTrainer):
    """A GRPOTrainer whose loss is a `thermorl.losses` registry loss: `args.policy_loss`, or the one TRL's loss
    fields mean (`ThermoGRPOConfig.resolved_policy_loss`).

    Its components, built from the config:
      tempering     RolloutTempering      EAD schedules and portfolios: sampling, behaviour log-probs, TIS weights
      prompts       VarianceAwarePrompts  VAS: the prompt sampler, its scores, re-rolls and state
      entropy_bonus EntropyBonus          the entropy term and its adaptive coefficient
      checkpoints   AtomicCheckpoints     checkpoints and the final model written staged, then renamed into place

    One training step, in the order TRL calls the hooks below:
      _get_train_sampler                  (once) prompts.build_sampler, or TRL's RepeatSampler
      _generate_and_score_completions     prompts.before_rollout (VAS re-roll); TRL generates and scores through
        _generate_single_turn               tempering.sample: TRL's generate under the schedules
        _calculate_rewards                  TRL's rewards, kept in the Rollout
                                          then the batch gets group ids, rewards and the behaviour columns, and
                                          prompts.after_rollout folds the rewards into VAS's scores
      _compute_loss                       log-probs (TRL), token weights (tempering, TRL's masks and IS ratio), the
                                          registry loss, the entropy bonus
      _save_checkpoint / _load_optimizer_and_scheduler / save_model: checkpoints, with the components' state
    """

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
        """TRL's GRPOTrainer signature (checked by `trl_surface`); `reward_funcs` may be None when an environment
        supplies the reward, and TRL refuses a run with no reward source."""
        if args is None:
            args = ThermoGRPOConfig(output_dir="thermorl-output")
        if not isinstance(args, ThermoGRPOConfig):
            raise TypeError(f"ThermoGRPOTrainer needs a ThermoGRPOConfig, got {type(args).__name__}.")
        if reward_funcs is not None:
            reward_funcs = guard_reward_funcs(reward_funcs if isinstance(reward_funcs, list) else [reward_funcs])
        prompts = VarianceAwarePrompts(args, accelerator=None)
        self._rollout: Rollout | None = None  # set only while a generate-and-score call runs
        # Generate-and-score calls so far, and how many of them the last completions table covered (see `log`).
        self._rollouts_generated = self._rollouts_in_last_table = 0
        with vllm_setup(args):
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=prompts.indexed(train_dataset),
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
        prompts.accelerator = self.accelerator
        self.prompts = prompts
        self.prompts.check_trainer(self)
        self.tempering = RolloutTempering(args, self.accelerator)
        self.tempering.check_trainer(self)
        self.entropy_bonus = EntropyBonus(args, self.accelerator)
        disown_adaptive_entropy(self)
        self.checkpoints = AtomicCheckpoints(args, self.accelerator)
        self.queued_metrics = QueuedMetrics(self.accelerator)
        self.policy_loss_name, self.policy_loss_kwargs = args.resolved_policy_loss()
        self.policy_loss_fn = get_loss(self.policy_loss_name)
        self._declared_loss_inputs = set(loss_inputs(self.policy_loss_name))

    # ---- prompts ------------------------------------------------------------------------------------

    @property
    def entropy_coef(self) -> float:
        """TRL's public `trainer.entropy_coef`: the coefficient in use, which the adaptive controller moves. The
        EntropyBonus component owns it; before the component exists (TRL's __init__, which sets and reads it, before
        even `self.args`) it is the value TRL set, the config's, which the component then starts from."""
        bonus = self.__dict__.get("entropy_bonus")
        return self.__dict__["_entropy_coef_before_components"] if bonus is None else bonus.coef

    @entropy_coef.setter
    def entropy_coef(self, value: float) -> None:
        bonus = self.__dict__.get("entropy_bonus")
        if bonus is None:
            self.__dict__["_entropy_coef_before_components"] = value
        else:
            bonus.coef = value

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.prompts.active:  # remove_unused_columns=True would drop the index column before the trainer sees it
            keep_signature_column(self, PROMPT_INDEX_COLUMN)

    def _get_train_sampler(self, dataset=None):
        if not self.prompts.active:
            return super()._get_train_sampler(dataset)
        return self.prompts.build_sampler(
            self.train_dataset if dataset is None else dataset,
            num_generations=self.num_generations,
            num_iterations=self.num_iterations,
            shuffle=self.shuffle_dataset,
        )

    # ---- one rollout --------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        prompt_indices, inputs = split_prompt_indices(inputs)
        training = self.model.training
        self._rollouts_generated += 1
        if training and self.prompts.active:
            self.prompts.before_rollout(self.state.global_step, self._sample_and_reward)
        batch, rollout = self._captured(lambda: super(ThermoGRPOTrainer, self)._generate_and_score_completions(inputs))
        if not torch.isfinite(batch["advantages"]).all():
            raise FloatingPointError("Non-finite advantages after reward normalisation; check the reward functions.")
        # Rows are shuffled before micro-batching, so group-level losses need each row's group explicitly.
        local_rows = batch["advantages"].size(0)
        first_row = self.accelerator.process_index * local_rows
        rows = torch.arange(first_row, first_row + local_rows, device=batch["advantages"].device)
        batch["group_ids"] = rows // self.num_generations
        batch["rewards"] = rollout.rewards[first_row : first_row + local_rows]
        if self.tempering.active:
            if rollout.sampled is None:
                raise RuntimeError("No rollout was sampled under the temperature schedule for this batch.")
            columns, metrics = self.tempering.behaviour_columns(batch, rollout.sampled, from_vllm=self.use_vllm)
            batch.update(columns)
            self._log(metrics)
        if training and self.prompts.active:
            metrics, totals = self.prompts.after_rollout(prompt_indices, rollout.rewards, rollout.completion_ids)
            self._log(metrics)
            metric_buffer(self, "train").update({name: [value] for name, value in totals.items()})
        return batch

    def _captured(self, generate_and_score):
        """(what `generate_and_score()` returns, the Rollout its hooks filled)."""
        self._rollout = rollout = Rollout()
        try:
            return generate_and_score(), rollout
        finally:
            self._rollout = None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        def generate():
            return super(ThermoGRPOTrainer, self)._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )

        if not self.tempering.active:
            return generate()
        result, sampled = self.tempering.sample(
            generate,
            step=self.state.global_step,
            num_rows=len(prompt_ids),
            num_generations=num_generations,
            model=None if self.use_vllm else self.accelerator.unwrap_model(self.model_wrapped),
            vllm=self.vllm_generation if self.use_vllm else None,
        )
        if self._rollout is not None:
            self._rollout.sampled = sampled
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # TRL keeps only advantages; ADPO's adaptive tau and VAS's scores need the rewards themselves.
        if self._rollout is not None:
            weights = self.reward_weights.to(rewards_per_func.device)
            self._rollout.rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
            self._rollout.completion_ids = completion_ids_list
        return rewards_per_func

    def _sample_and_reward(self, rows: list[dict], num_generations: int):
        """(every process's weighted rewards, this process's completion ids) of `num_generations` completions of
        each row, outside the training batch (VAS re-rolls), through TRL's own tokenise, generate and reward steps."""
        inputs = [row for row in rows for _ in range(num_generations)]
        prompts = [row["prompt"] for row in inputs]

        def generate_and_reward():
            prompt_ids, images, multimodal_fields = self._tokenize_prompts(prompts)
            completion_ids, _ = self._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations)
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            if is_conversational(inputs[0]):
                completions = [[{"role": "assistant", "content": text}] for text in texts]
            else:
                completions = texts
            self._calculate_rewards(inputs, prompts, completions, completion_ids)
            return completion_ids

        completion_ids, rollout = self._captured(generate_and_reward)
        # What the reward functions logged belongs to these completions, not to the training batch TRL logs next.
        drop_pending_logs(self)
        return rollout.rewards.detach().cpu(), completion_ids

    # ---- the loss -----------------------------------------------------------------------------------

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
        return {k: v for k, v in available.items() if k in self._declared_loss_inputs}

    @property
    def _vllm_is_correction(self) -> bool:
        # Under a temperature schedule the vLLM log-probs are the annealed behaviour policy's: ead_correction corrects
        # per token, where TRL's sequence-level ratio would mask or clip whole annealed sequences.
        return self.use_vllm and self.vllm_importance_sampling_correction and not self.tempering.active

    def _tokens_per_micro_batch(self, inputs) -> torch.Tensor | None:
        """The generation batch's loss tokens per process and micro-batch (TRL's dapo/cispo/vespo normaliser; the
        division by gradient accumulation steps happens in `_compute_loss`, as for every loss)."""
        if "num_items_in_batch" not in inputs:
            return None
        tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        return tokens / self.args.steps_per_generation if self.model.training else tokens

    def _token_weights(self, inputs, per_token_logps, old_per_token_logps, mask, entropy_mask) -> torch.Tensor | None:
        """Per-token multipliers on the policy loss: the rollout's own correction (e.g. EAD's truncated importance
        sampling) and TRL's options (entropy mask, vLLM IS, OPSM)."""
        weights = []
        if self.tempering.active:
            rollout_weights, metrics = self.tempering.token_weights(
                old_per_token_logps, inputs["behaviour_per_token_logps"], mask
            )
            self._log(metrics)
            if rollout_weights is not None:
                weights.append(rollout_weights)
        if entropy_mask is not None:
            weights.append(entropy_mask)
        loss_takes_is_ratio = "importance_sampling_ratio" in self._declared_loss_inputs  # vespo folds it into its weight
        if self._vllm_is_correction and "importance_sampling_ratio" in inputs and not loss_takes_is_ratio:
            weights.append(inputs["importance_sampling_ratio"])
        if self.off_policy_mask_threshold is not None:
            weights.append(
                self.get_off_policy_mask(
                    advantages=inputs["advantages"].view(-1, 1) if inputs["advantages"].dim() == 1 else inputs["advantages"],
                    per_token_logps=per_token_logps,
                    sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_per_token_logps),
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

    def _micro_batch(self, model, inputs) -> tuple[LossInputs, torch.Tensor | None]:
        """(the micro-batch's LossInputs, the router's auxiliary loss): the policy's forward pass on TRL's batch, and
        everything the loss reads built from it once."""
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _FORWARD_KEYS},
        )
        mask = loss_mask(inputs)
        entropy_mask = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        return LossInputs.build(
            inputs, mask, per_token_logps, entropies, entropy_mask,
            lambda old: self._token_weights(inputs, per_token_logps, old, mask, entropy_mask),
        ), aux_loss

    def _compute_loss(self, model, inputs):
        micro, aux_loss = self._micro_batch(model, inputs)
        loss, metrics = self.policy_loss_fn(
            micro.per_token_logps,
            micro.old_per_token_logps,
            micro.advantages,
            micro.mask,
            token_weights=micro.token_weights,
            ref_per_token_logps=inputs.get("ref_per_token_logps"),
            beta=self.beta,
            **self._loss_context(inputs, micro.entropies),
            **self.policy_loss_kwargs,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The '{self.policy_loss_name}' loss is {loss.item()} at global step {self.state.global_step}; "
                "no update was applied. Check rewards, learning rate and dtype."
            )

        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1.0
        if self.entropy_bonus.enabled:
            metrics["policy_loss"] = loss
            bonus, bonus_metrics = self.entropy_bonus(micro.entropy_over_policy, training)
            loss = loss - bonus
            self._log(bonus_metrics)
        loss = loss / accumulation  # TRL turns off the Trainer's own gradient-accumulation scaling
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            metrics["aux_loss"] = aux_loss

        self.queued_metrics.add("train" if training else "eval", {"entropy": micro.mean_entropy, **metrics})
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, whose completions table (printed, saved, sent to W&B) shows only rollouts no table showed yet:
        the Trainer's closing summary is logged at the last step again, which would repeat that step's table."""
        self.queued_metrics.flush(self)
        log_completions = self.log_completions
        self.log_completions = log_completions and self._rollouts_generated > self._rollouts_in_last_table
        try:
            super().log(logs, start_time)
        finally:
            if self.log_completions:
                self._rollouts_in_last_table = self._rollouts_generated
            self.log_completions = log_completions

    def _log(self, metrics: dict[str, float | torch.Tensor]) -> None:
        """Queue already-reduced metrics (the same on every process) for the next log line."""
        self.queued_metrics.add("train" if self.model.training else "eval", metrics, average_over_processes=False)

    # ---- checkpoints --------------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        return self.checkpoints.staging_run_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        def write():
            super(ThermoGRPOTrainer, self)._save_checkpoint(model, trial)
            if self.args.should_save:
                checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
                self.prompts.save(checkpoint)
                self.entropy_bonus.save(checkpoint)

        self.checkpoints.save_checkpoint(write, super()._get_output_dir(trial), self.state)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # The Trainer restores the rest of its training state here, after building the train dataloader (so the
        # sampler exists) and before drawing the first batch.
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.prompts.load(checkpoint)
            self.entropy_bonus.load(checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        def write(folder):
            super(ThermoGRPOTrainer, self).save_model(folder, _internal_call)

        if _internal_call:  # a checkpoint's model: staged with the checkpoint
            return write(output_dir)
        self.checkpoints.save_model(write, output_dir, final_save_has_one_writer(self))
        if os.path.abspath(output_dir or self.args.output_dir) == os.path.abspath(self.args.output_dir):
            self.create_model_card(model_name=os.path.basename(os.path.normpath(self.args.output_dir)))

    def create_model_card(self, *args, **kwargs) -> None:
        """TRL writes the model card (output_dir/README.md) as it saves each checkpoint, before the final model
        exists; it describes the final model, so it is written once that is saved (`save_model`), and a final save
        that fails leaves the card of the model that is there."""
        if self.checkpoints.staging_run_dir is None:
            super().create_model_card(*args, **kwargs)
