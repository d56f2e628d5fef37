"""The trainer a recipe builds: ThermoGRPOTrainer, or ThermoADPOTrainer for `trainer: adpo`, from the recipe's
configs, its checked dataset, rewards and model (recipe_inputs.py)."""

from __future__ import annotations

from typing import Any

from .errors import refused_by_library, refusing_remote_code
from .models.warmup import TINY_MODEL_NAME
from .recipe_inputs import (
    ALLOW_REMOTE_CODE,
    build_datasets,
    check_chat_template,
    check_dataset_size,
    check_prompts_fit,
    load_tokenizer,
    recipe_reward_funcs,
    resolve_model_path,
)


def build_trainer(model_args, training_args, script_args, callbacks: list | None = None, validation_examples: int = 0):
    if script_args.trainer == "adpo":
        return build_adpo_trainer(model_args, training_args, script_args, callbacks, validation_examples)
    from .trainers import ThermoGRPOTrainer

    train, held_out, task = build_datasets(script_args, training_args.seed, validation_examples)
    check_dataset_size(train, training_args)
    reward_funcs = recipe_reward_funcs(script_args, task)
    if model_args.model_name_or_path != TINY_MODEL_NAME:
        tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
        check_chat_template(tokenizer, model_args.model_name_or_path, train)
        check_prompts_fit(tokenizer, model_args, training_args, script_args, train)
    return _constructed(ThermoGRPOTrainer, model_args, training_args, script_args, held_out, train, callbacks,
                        reward_funcs=reward_funcs)


def build_adpo_trainer(model_args, training_args, script_args, callbacks: list | None = None,
                       validation_examples: int = 0):
    """ThermoADPOTrainer on preference data: a file or hub dataset in TRL's pairwise or thermorl's listwise format
    (see trainers/adpo.py), or a built-in task turned into pairs, its answer preferred to another prompt's."""
    from .trainers import ThermoADPOTrainer
    from .trainers.adpo import preference_pairs_from_task

    train, held_out, task = build_datasets(script_args, training_args.seed, validation_examples)
    if task is not None:
        train = preference_pairs_from_task(task, train, seed=training_args.seed)
    return _constructed(ThermoADPOTrainer, model_args, training_args, script_args, held_out, train, callbacks)


def _constructed(trainer_class, model_args, training_args, script_args, held_out, train, callbacks, **kwargs):
    """`trainer_class` on the recipe's model (`thermorl:tiny` warmed up here, never on `held_out`), with its
    loading options, LoRA and the train set."""
    from trl import get_peft_config

    training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), **_model_init_kwargs(model_args)}
    # The trainers' own checks of the settings (TRL's, e.g. sync_ref_model with beta 0) are the recipe's.
    with refused_by_library("recipe"), refusing_remote_code(model_args.model_name_or_path, ALLOW_REMOTE_CODE,
                                                               training_args.trust_remote_code):
        return trainer_class(
            model=resolve_model_path(model_args.model_name_or_path, script_args, held_out),
            args=training_args,
            train_dataset=train,
            peft_config=get_peft_config(model_args),
            callbacks=callbacks,
            **kwargs,
        )


def _model_init_kwargs(model_args) -> dict[str, Any]:
    from trl import get_quantization_config

    kwargs: dict[str, Any] = {}  # TRL adds the recipe's trust_remote_code (GRPOConfig / DPOConfig field)
    quantization = get_quantization_config(model_args)  # load_in_4bit / load_in_8bit (QLoRA)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.model_revision not in (None, "main"):
        kwargs["revision"] = model_args.model_revision
    return kwargs
