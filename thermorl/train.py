"""`thermorl train RECIPE`: build the dataset, rewards and model a recipe names, then run ThermoGRPOTrainer (or
ThermoADPOTrainer for a recipe with `trainer: adpo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError, refused_by_library, refusing_remote_code
from .models.warmup import TINY_MODEL_NAME

HELD_OUT_FILE = "thermorl_held_out.json"
# How a recipe lets a model folder's own Python code run (transformers' trust_remote_code; off by default).
ALLOW_REMOTE_CODE = "set `trust_remote_code: true` in the recipe, after reading that code"


def resolve_model_path(model_name_or_path: str, script_args, held_out=None) -> str:
    """`thermorl:tiny` -> the cached tiny model warmed up on the recipe's task (never on its held-out prompts);
    anything else is passed on."""
    from .console import verbose
    from .models.warmup import WarmupSettings, warm_tiny_model

    check_warmup_settings(model_name_or_path, script_args)
    if model_name_or_path != TINY_MODEL_NAME:
        return model_name_or_path
    check_tiny_model_fits(script_args)
    settings = WarmupSettings(
        task=script_args.warmup_dataset or script_args.dataset, examples=script_args.warmup_examples,
        epochs=script_args.warmup_epochs,
        model_size=script_args.tiny_model_size,
    )
    return warm_tiny_model(
        settings, held_out_prompts=list(held_out["prompt"]) if held_out is not None else [], show_logs=verbose()
    )


def warm_tiny_model_before_launch(values: dict[str, Any]) -> None:
    """A `thermorl:tiny` recipe launched on several processes: the warm-up runs here, once, in the launching
    process. In the workers it would run on every rank inside the process group (each its own SFTTrainer, waiting on
    the others' collectives); they then find it cached. `values` are validated recipe values."""
    import dataclasses

    from .recipe import ThermoScriptArguments, recipe_dataclasses

    if values.get("model_name_or_path") != TINY_MODEL_NAME:
        return
    script_fields = {f.name for f in dataclasses.fields(ThermoScriptArguments)}
    script_args = ThermoScriptArguments(**{k: v for k, v in values.items() if k in script_fields})
    config = recipe_dataclasses(script_args.trainer)[1]
    seed = values.get("seed", next(f.default for f in dataclasses.fields(config) if f.name == "seed"))
    _, held_out, _ = build_datasets(script_args, seed)
    resolve_model_path(TINY_MODEL_NAME, script_args, held_out)


def check_warmup_settings(model_name_or_path: str, script_args) -> None:
    """warmup_dataset and the other warm-up fields are the tiny model's: with any other model nothing is warmed up,
    so a warmup_dataset would be silently ignored."""
    if model_name_or_path != TINY_MODEL_NAME and script_args.warmup_dataset is not None:
        raise UserError(f"warmup_dataset '{script_args.warmup_dataset}': only model_name_or_path 'thermorl:tiny' is "
                        f"warmed up, not '{model_name_or_path}'; remove it")


def check_tiny_model_fits(script_args) -> None:
    """`thermorl:tiny` is a character-level model with no chat template, warmed up from scratch on a built-in
    task's answers: it can learn nothing from a user's dataset, so such a recipe is refused before anything runs."""
    from .models.smollm2 import SMOLLM2_MODEL_NAME
    from .tasks import TASKS, parse_task_spec, task_from_spec
    from .tasks.chat import ChatTask

    if parse_task_spec(script_args.dataset)[0] not in TASKS:
        raise UserError(
            f"model_name_or_path 'thermorl:tiny' is warmed up on built-in tasks only ({', '.join(sorted(TASKS))}), "
            f"not on dataset '{script_args.dataset}': set model_name_or_path to a hub model such as "
            "Qwen/Qwen3-0.6B or a local model folder"
        )
    if issubclass(TASKS[parse_task_spec(script_args.dataset)[0]], ChatTask):
        raise UserError(f"dataset '{script_args.dataset}' is a chat task, and model_name_or_path 'thermorl:tiny' has "
                        f"no chat template: use model_name_or_path '{SMOLLM2_MODEL_NAME}' or another chat model")
    if script_args.warmup_dataset is not None:
        task_from_spec(script_args.warmup_dataset)  # a typo or a bad option is the user's one-line error
        warm, trained = parse_task_spec(script_args.warmup_dataset)[0], parse_task_spec(script_args.dataset)[0]
        if warm != trained:
            raise UserError(f"warmup_dataset '{script_args.warmup_dataset}': must be the same built-in task as "
                            f"dataset ('{trained}'), with other options: the warm-up teaches that task's answer "
                            "format")
    if script_args.prompt_template is not None or script_args.system_prompt is not None:
        raise UserError(
            "prompt_template / system_prompt make prompts conversational, and model_name_or_path 'thermorl:tiny' "
            "has no chat template: remove them, or use a chat model"
        )


def build_datasets(script_args, seed: int, validation_examples: int = 0):
    """(train, held-out or None, task or None) for the recipe's dataset, prompts shaped by the recipe's
    prompt_column / prompt_template / system_prompt / answer_column (see tasks/data.py). A built-in task's split is
    seeded by `dataset_seed` when the recipe sets it, else by `seed`. `validation_examples` > 0 (a built-in task
    only: `thermorl bench` tuning on validation) leaves those rows out of train (Task.carve_validation)."""
    from .tasks import TASKS, load_prompt_dataset, parse_task_spec, task_from_spec
    from .tasks.data import shape_prompts

    if script_args.dataset_seed is not None:
        seed = script_args.dataset_seed

    shaping = dict(
        prompt_template=script_args.prompt_template,
        system_prompt=script_args.system_prompt,
        answer_column=script_args.answer_column,
    )
    if parse_task_spec(script_args.dataset)[0] not in TASKS:
        if validation_examples:
            raise UserError(f"validation rows are carved out of a built-in task's training rows; dataset "
                            f"'{script_args.dataset}' is not a built-in task")
        train = load_prompt_dataset(
            script_args.dataset, script_args.dataset_split, script_args.prompt_column,
            config=script_args.dataset_config, **shaping,
        )
        return train, None, None
    if script_args.dataset_config is not None:
        raise UserError(f"dataset_config is for hub datasets; '{script_args.dataset}' is a built-in task")
    task = task_from_spec(script_args.dataset)
    train, held_out = task.make_splits(script_args.num_train_examples, script_args.num_eval_examples, seed=seed)
    if validation_examples:
        train, _ = task.carve_validation(train, validation_examples)
    shape = dict(source=script_args.dataset, prompt_column=script_args.prompt_column, **shaping)
    return shape_prompts(train, **shape), shape_prompts(held_out, **shape), task


def check_dataset_size(train, training_args) -> None:
    """TRL's GRPO sampler drops an incomplete generation batch: a dataset smaller than one would end training at
    step 0 with nothing but a warning."""
    prompts_needed = training_args.generation_batch_size // training_args.num_generations
    if len(train) < prompts_needed:
        raise UserError(
            f"dataset: {len(train)} rows, but one generation batch takes {prompts_needed} prompts "
            f"(generation_batch_size {training_args.generation_batch_size} / num_generations "
            f"{training_args.num_generations}): add rows, or lower per_device_train_batch_size / steps_per_generation"
        )


def load_tokenizer(model_args, trust_remote_code: bool = False):
    """The recipe model's tokenizer (the tiny model's own for `thermorl:tiny`), without loading the model; the
    model folder's own code runs only with `trust_remote_code` (the recipe's field)."""
    from transformers import AutoTokenizer

    from .models.tiny import build_char_tokenizer

    if model_args.model_name_or_path == TINY_MODEL_NAME:
        return build_char_tokenizer()
    try:
        with refusing_remote_code(model_args.model_name_or_path, ALLOW_REMOTE_CODE, trust_remote_code):
            return AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                 trust_remote_code=trust_remote_code)
    except OSError as error:  # not a local folder, and not on the Hub (or the Hub cannot be reached)
        message = " ".join(str(error).split())  # one line
        raise UserError(f"model_name_or_path '{model_args.model_name_or_path}': {message}") from None


def find_held_out(model_path: str | Path) -> Path | None:
    """The held-out record of the run a model folder comes from: in the folder (a training output_dir, or a model
    exported from one) or its parent (a checkpoint-N folder); None if there is none."""
    for folder in (Path(model_path), Path(model_path).parent):
        if (folder / HELD_OUT_FILE).is_file():
            return folder / HELD_OUT_FILE
    return None


def check_chat_template(tokenizer, model_name_or_path: str, train) -> None:
    """Conversational prompts need the model's tokenizer to have a chat template; checked before the model loads."""
    from .tasks.data import is_conversational_prompt

    if is_conversational_prompt(train[0]["prompt"]) and getattr(tokenizer, "chat_template", None) is None:
        raise UserError(
            f"model_name_or_path: the tokenizer of '{model_name_or_path}' has no chat template, but the prompts are "
            "conversational (from system_prompt, prompt_template or the dataset's messages): use a chat model, "
            "or give string prompts (no system_prompt / prompt_template)"
        )


def model_max_positions(model_name_or_path: str, revision: str | None = None, trust_remote_code: bool = False
                        ) -> int | None:
    """The positions a model's config gives its (text) model; None when it names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name_or_path, revision=revision,
                                        trust_remote_code=trust_remote_code).get_text_config()
    return getattr(config, "max_position_embeddings", None)


def check_prompts_fit(tokenizer, model_args, training_args, script_args, train) -> None:
    """Every prompt, as the model sees it, leaves room for max_completion_length in the model's positions."""
    from .tasks.data import check_prompt_lengths

    if model_args.model_name_or_path == TINY_MODEL_NAME:  # trains on built-in tasks only, whose prompts it fits
        return
    with refusing_remote_code(model_args.model_name_or_path, ALLOW_REMOTE_CODE, training_args.trust_remote_code):
        positions = model_max_positions(model_args.model_name_or_path, model_args.model_revision,
                                        training_args.trust_remote_code)
    check_prompt_lengths(
        train, script_args.dataset, tokenizer, positions,
        training_args.max_completion_length, "max_completion_length", training_args.chat_template_kwargs,
    )


def write_held_out(output_dir: str, script_args, seed: int) -> Path | None:
    """The split settings and held-out prompts (as the task writes them) of a built-in task, in the run's output
    folder: `thermorl eval --model OUTPUT_DIR` evaluates on exactly these rows. None for other datasets."""
    import json

    from .tasks import TASKS, parse_task_spec, task_from_spec

    if parse_task_spec(script_args.dataset)[0] not in TASKS:
        return None
    _, held_out = task_from_spec(script_args.dataset).make_splits(
        script_args.num_train_examples, script_args.num_eval_examples, seed=seed
    )
    path = Path(output_dir) / HELD_OUT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset": script_args.dataset,
        "num_train_examples": script_args.num_train_examples,
        "num_eval_examples": script_args.num_eval_examples,
        "seed": seed,
        "prompts": list(held_out["prompt"]),
    }
    path.write_text(json.dumps(record, indent=1))
    return path


def recipe_reward_funcs(script_args, task) -> list:
    """The recipe's reward_funcs, or the built-in task's own."""
    from .tasks import resolve_reward_funcs

    if script_args.reward_funcs:
        return resolve_reward_funcs(script_args.reward_funcs)
    if task is not None:
        return task.reward_funcs
    raise UserError(f"Dataset '{script_args.dataset}' is not a built-in task: name its reward_funcs in the recipe.")


def build_trainer(model_args, training_args, script_args, callbacks: list | None = None, validation_examples: int = 0):
    if script_args.trainer == "adpo":
        return build_adpo_trainer(model_args, training_args, script_args, callbacks, validation_examples)
    from trl import get_peft_config

    from .trainers import ThermoGRPOTrainer

    if model_args.model_name_or_path == TINY_MODEL_NAME:
        check_tiny_model_fits(script_args)
    train, held_out, task = build_datasets(script_args, training_args.seed, validation_examples)
    check_dataset_size(train, training_args)
    reward_funcs = recipe_reward_funcs(script_args, task)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        **_model_init_kwargs(model_args),
    }
    if model_args.model_name_or_path != TINY_MODEL_NAME:
        tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
        check_chat_template(tokenizer, model_args.model_name_or_path, train)
        check_prompts_fit(tokenizer, model_args, training_args, script_args, train)
    # The trainers' own checks of the settings (TRL's, e.g. sync_ref_model with beta 0) are the recipe's.
    with refused_by_library("recipe"), refusing_remote_code(model_args.model_name_or_path, ALLOW_REMOTE_CODE,
                                                               training_args.trust_remote_code):
        return ThermoGRPOTrainer(
            model=resolve_model_path(model_args.model_name_or_path, script_args, held_out),
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train,
            peft_config=get_peft_config(model_args),
            callbacks=callbacks,
        )


def build_adpo_trainer(model_args, training_args, script_args, callbacks: list | None = None,
                       validation_examples: int = 0):
    """ThermoADPOTrainer on preference data: a file or hub dataset in TRL's pairwise or thermorl's listwise format
    (see trainers/adpo.py), or a built-in task turned into pairs, its answer preferred to another prompt's."""
    from trl import get_peft_config

    from .trainers import ThermoADPOTrainer
    from .trainers.adpo import preference_pairs_from_task

    train, held_out, task = build_datasets(script_args, training_args.seed, validation_examples)
    if task is not None:
        train = preference_pairs_from_task(task, train, seed=training_args.seed)
    training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), **_model_init_kwargs(model_args)}
    # The trainers' own checks of the settings (TRL's, e.g. sync_ref_model with beta 0) are the recipe's.
    with refused_by_library("recipe"), refusing_remote_code(model_args.model_name_or_path, ALLOW_REMOTE_CODE,
                                                               training_args.trust_remote_code):
        return ThermoADPOTrainer(
            model=resolve_model_path(model_args.model_name_or_path, script_args, held_out),
            args=training_args,
            train_dataset=train,
            peft_config=get_peft_config(model_args),
            callbacks=callbacks,
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


def train(model_args, training_args, script_args, callbacks: list | None = None,
          recipe_values: dict[str, Any] | None = None):
    """Run training; returns the trainer (its state holds the log history), or None when `resume_from_checkpoint`
    names a checkpoint already at the run's last step (said in one line; nothing is trained or written).
    `recipe_values` (from `resolve_recipe`) is kept in the output folder as thermorl_recipe.yaml, for resume and
    `thermorl eval`; a resumed run must keep the settings it was started with (run_recipe.FREE_ON_RESUME lists
    those it may change). A Ctrl-C during training becomes a KeyboardInterrupt whose message names the newest
    checkpoint and how to resume."""
    if not training_args.model_init_kwargs and model_args.model_name_or_path is None:
        raise UserError("The recipe needs model_name_or_path (a local folder, a hub name, or 'thermorl:tiny').")
    # Launch settings checked against the machine; W&B offline (and says so) when no API key is set.
    from . import threads
    from .console import log_to_run_folder, quiet_trainer
    from .launch_checks import check_launch
    from .run_dir import final_save_done, finished_at, interrupted_line, prepare_output_dir, remove_previous_run
    from .run_recipe import check_resume_settings, write_run_recipe
    from .tracking import prepare_reporting

    check_launch(model_args, training_args)
    check_warmup_settings(model_args.model_name_or_path, script_args)  # before any folder or CPU probe
    if model_args.model_name_or_path == TINY_MODEL_NAME:
        check_tiny_model_fits(script_args)
    # The output folder checked (no run or model overwritten, `latest` must exist and be complete) and locked for
    # this run; third-party logs go to its thermorl.log, and the `thermorl` command picks the faster CPU thread
    # count for this model.
    resume_from, lock = prepare_output_dir(training_args, overwrite=script_args.overwrite_output_dir,
                                           model_name_or_path=model_args.model_name_or_path)
    final_save_only = False  # the run reached its last step, but its final save did not complete
    try:
        if resume_from is not None:
            complete = finished_at(resume_from, training_args)
            if complete is not None and final_save_done(training_args.output_dir, resume_from):
                if lock is not None:
                    lock.release()
                    print(complete, flush=True)
                return None
            final_save_only = complete is not None
            note = check_resume_settings(resume_from, recipe_values)
            if note is not None and training_args.process_index == 0:
                print(note, flush=True)
        callbacks = [*(callbacks or []), *prepare_reporting(training_args)]
        threads.use_fastest_before_warmup(model_args, training_args, script_args.tiny_model_size)
        trainer = build_trainer(model_args, training_args, script_args, callbacks)
    except BaseException:
        if lock is not None:  # a recipe mistake leaves no folder behind
            lock.release(remove_new_folder=True)
        raise
    try:
        # After the data and model are resolved, so that a recipe mistake leaves no folder behind; the records
        # kept in memory until now are written first.
        if resume_from is None and script_args.overwrite_output_dir and training_args.process_index == 0:
            remove_previous_run(training_args.output_dir)
        log_to_run_folder(training_args.output_dir)
        quiet_trainer(trainer)
        threads.use_fastest(trainer.model, training_args.per_device_train_batch_size)
        if trainer.accelerator.is_main_process:
            write_held_out(
                training_args.output_dir, script_args,
                script_args.dataset_seed if script_args.dataset_seed is not None else training_args.seed,
            )
            # A resumed run's recipe describes its final model: written with it, so that a final save that fails
            # leaves the folder's model, recipe and model card as they were.
            if recipe_values is not None and resume_from is None:
                write_run_recipe(training_args.output_dir, recipe_values)
        if final_save_only:
            load_final_state(trainer, resume_from)
        else:
            try:
                trainer.train(resume_from_checkpoint=resume_from)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(interrupted_line(training_args, trainer.state.global_step)) from None
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
        if trainer.accelerator.is_main_process and recipe_values is not None and resume_from is not None:
            write_run_recipe(training_args.output_dir, recipe_values)
        if final_save_only and lock is not None:
            print(f"The run had reached step {trainer.state.global_step}, but its final save had not completed: the "
                  f"final model is saved now from {resume_from}.", flush=True)
    finally:
        if lock is not None:
            lock.release()
    return trainer


def load_final_state(trainer, checkpoint: str) -> None:
    """The model and trainer state of a checkpoint at the run's last step, for the final save it is missing."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_callback import TrainerState

    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:  # their weights load only inside train()
        raise UserError(f"resume_from_checkpoint '{checkpoint}' is at the run's last step, but the run's final save "
                        "did not complete, and under DeepSpeed or FSDP it cannot be redone from the checkpoint: raise "
                        "max_steps by one to train on and save, or load the checkpoint folder itself")
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
