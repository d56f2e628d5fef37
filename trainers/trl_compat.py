"""The TRL methods thermorl overrides or calls by their private names, with the parameters it was written against.

TRL's private methods may change in any release; `pyproject.toml` bounds TRL to the tested versions and
`check_trl_hooks` (run when `thermorl.trainers` is imported) stops with the method's name if an installed TRL
differs anyway. A new override of a TRL method adds one line to `TRL_HOOKS`.
"""

import inspect

import trl

TESTED_TRL = "1.16"

# "Class.method": its parameter names (after self) in TRL 1.16.
TRL_HOOKS = {
    "GRPOTrainer.__init__": "model, reward_funcs, args, train_dataset, eval_dataset, processing_class, "
    "reward_processing_classes, callbacks, optimizers, quantization_config, peft_config, tools, rollout_func, "
    "environment_factory",
    "GRPOTrainer._compute_loss": "model, inputs",
    "GRPOTrainer._generate_and_score_completions": "inputs",
    "GRPOTrainer._generate_single_turn": "prompt_ids, images, multimodal_fields, num_generations, has_tool_images",
    "GRPOTrainer._calculate_rewards": "inputs, prompts, completions, completion_ids_list",
    "GRPOTrainer._get_train_sampler": "dataset",
    "GRPOTrainer._save_checkpoint": "model, trial",
    "GRPOTrainer._load_optimizer_and_scheduler": "checkpoint",
    "GRPOTrainer._set_signature_columns_if_needed": "",
    "GRPOTrainer._get_output_dir": "trial",
    "GRPOTrainer.save_model": "output_dir, _internal_call",
    "GRPOTrainer._get_per_token_logps_and_entropies": "model, input_ids, attention_mask, logits_to_keep, batch_size, "
    "compute_entropy, compute_aux_loss, pixel_values, image_grid_thw, num_images, pixel_attention_mask, "
    "spatial_shapes, num_tiles, image_sizes, token_type_ids, mm_token_type_ids, image_position_ids",
    "GRPOTrainer.get_high_entropy_mask": "entropies, mask, threshold",
    "GRPOTrainer.get_off_policy_mask": "advantages, per_token_logps, sampling_per_token_logps, mask, "
    "off_policy_threshold",
    "DPOTrainer._compute_loss": "model, inputs, return_outputs",
    "DPOTrainer._prepare_dataset": "dataset, processing_class, args, dataset_name",
    "DPOTrainer._set_signature_columns_if_needed": "",
}


def _parameters(method) -> str:
    names = [name for name in inspect.signature(method).parameters if name != "self"]
    return ", ".join(names)


def check_trl_hooks(hooks: dict[str, str] = TRL_HOOKS) -> None:
    """Raise ImportError naming the TRL version and the first hooked method whose parameters changed or vanished."""
    for qualified, expected in hooks.items():
        class_name, method_name = qualified.split(".")
        method = getattr(getattr(trl, class_name, None), method_name, None)
        found = None if method is None else _parameters(method)
        if found != expected:
            now = "does not exist" if found is None else f"takes ({found})"
            raise ImportError(
                f"thermorl was written against TRL {TESTED_TRL}, whose trl.{qualified} takes ({expected}); in the "
                f"installed TRL {trl.__version__} it {now}. Install trl>={TESTED_TRL},<1.17."
            )
