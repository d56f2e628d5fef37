"""`thermorl train RECIPE`: build the dataset, rewards and model a recipe names, then run ThermoGRPOTrainer (or
ThermoADPOTrainer for a recipe with `trainer: adpo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint


def resolve_model_path(model_name_or_path: str, script_args, held_out=None) -> str:
    """`thermorl:tiny` -> the cached tiny model warmed up on the recipe's task (never on its held-out prompts);
    anything else is passed on."""
    from .models.warmup import TINY_MODEL_NAME, WarmupSettings, warm_tiny_model

    if model_name_or_path != TINY_MODEL_NAME:
        return model_name_or_path
    settings = WarmupSettings(
        task=script_args.dataset, examples=script_args.warmup_examples, epochs=script_args.warmup_epochs,
        model_size=script_args.tiny_model_size,
    )
    return warm_tiny_model(settings, held_out_prompts=list(held_out["prompt"]) if held_out is not None else [])


def build_datasets(script_args, seed: int):
    """(train, held-out or None, task or None) for the recipe's dataset; a built-in task's split is seeded by
    `dataset_seed` when the recipe sets it, else by `seed`."""
    from .tasks import TASKS, load_prompt_dataset, parse_task_spec, task_from_spec

    if script_args.dataset_seed is not None:
        seed = script_args.dataset_seed

    if parse_task_spec(script_args.dataset)[0] not in TASKS:
        return load_prompt_dataset(script_args.dataset, script_args.dataset_split, script_args.prompt_column), None, None
    task = task_from_spec(script_args.dataset)
    train, held_out = task.make_splits(script_args.num_train_examples, script_args.num_eval_examples, seed=seed)
    return train, held_out, task


def build_trainer(model_args, training_args, script_args, callbacks: list | None = None):
    if script_args.trainer == "adpo":
        return build_adpo_trainer(model_args, training_args, script_args, callbacks)
    from trl import get_peft_config

    from .tasks import resolve_reward_funcs
    from .trainers import ThermoGRPOTrainer

    train, held_out, task = build_datasets(script_args, training_args.seed)
    if script_args.reward_funcs:
        reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
    elif task is not None:
        reward_funcs = task.reward_funcs
    else:
        raise ValueError(f"Dataset '{script_args.dataset}' is not a built-in task: name its reward_funcs in the recipe.")

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        **_model_init_kwargs(model_args),
    }
    return ThermoGRPOTrainer(
        model=resolve_model_path(model_args.model_name_or_path, script_args, held_out),
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )


def build_adpo_trainer(model_args, training_args, script_args, callbacks: list | None = None):
    """ThermoADPOTrainer on preference data: a file or hub dataset in TRL's pairwise or thermorl's listwise format
    (see trainers/adpo.py), or a built-in task turned into pairs, its answer preferred to another prompt's."""
    from trl import get_peft_config

    from .trainers import ThermoADPOTrainer
    from .trainers.adpo import preference_pairs_from_task

    train, held_out, task = build_datasets(script_args, training_args.seed)
    if task is not None:
        train = preference_pairs_from_task(task, train, seed=training_args.seed)
    training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), **_model_init_kwargs(model_args)}
    return ThermoADPOTrainer(
        model=resolve_model_path(model_args.model_name_or_path, script_args, held_out),
        args=training_args,
        train_dataset=train,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )


def _model_init_kwargs(model_args) -> dict[str, Any]:
    from trl import get_quantization_config

    kwargs: dict[str, Any] = {}
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


def resume_checkpoint(training_args) -> str | None:
    """TrainingArguments' `resume_from_checkpoint`: a checkpoint folder, or 'latest' for the newest in output_dir."""
    requested, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    if requested != "latest":
        return requested
    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def train(model_args, training_args, script_args, callbacks: list | None = None):
    """Run training; returns the trainer (its state holds the log history)."""
    if not training_args.model_init_kwargs and model_args.model_name_or_path is None:
        raise ValueError("The recipe needs model_name_or_path (a local folder, a hub name, or 'thermorl:tiny').")
    # Issue 6: launch settings checked against the machine; W&B offline (and says so) when no API key is set.
    from .launch_checks import check_launch
    from .tracking import prepare_reporting

    check_launch(model_args, training_args)
    callbacks = [*(callbacks or []), *prepare_reporting(training_args)]
    trainer = build_trainer(model_args, training_args, script_args, callbacks)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    return trainer
