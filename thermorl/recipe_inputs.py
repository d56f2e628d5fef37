"""What a recipe names, resolved and checked before anything trains: the model (`thermorl:tiny` warmed up on the
recipe's task), the dataset and its held-out rows, the tokenizer and the reward functions. `thermorl train`, `check`,
`eval`, `bench` and quickstart all go through these, so a recipe mistake is the same one line from each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError, refusing_remote_code
from .models.warmup import TINY_MODEL_NAME

HELD_OUT_FILE = "thermorl_held_out.json"
# How a recipe lets a model folder's own Python code run (transformers' trust_remote_code; off by default).
ALLOW_REMOTE_CODE = "set `trust_remote_code: true` in the recipe, after reading that code"


def resolve_model_path(model_name_or_path: str, script_args, held_out=None) -> str:
    """`thermorl:tiny` -> the cached tiny model warmed up on the recipe's task; with `warmup_dataset`, SmolLM2 (by
    now its converted folder; check_model_takes_task allowed no other model) -> the cached SmolLM2 warmed up on that
    task's worked solutions. Neither warm-up sees the held-out prompts. Anything else is passed on."""
    from .console import verbose
    from .models.warmup import ChatWarmupSettings, WarmupSettings, warm_chat_model, warm_tiny_model

    held_out_prompts = list(held_out["prompt"]) if held_out is not None else []
    # Unset warm-up fields keep each model's own defaults.
    sizes = {key: value for key, value in (("examples", script_args.warmup_examples),
                                           ("epochs", script_args.warmup_epochs)) if value is not None}
    if model_name_or_path == TINY_MODEL_NAME:
        settings = WarmupSettings(task=script_args.warmup_dataset or script_args.dataset,
                                  model_size=script_args.tiny_model_size, **sizes)
        return warm_tiny_model(settings, held_out_prompts=held_out_prompts, show_logs=verbose())
    if script_args.warmup_dataset is not None:
        settings = ChatWarmupSettings(task=script_args.warmup_dataset, **sizes)
        # A chat task's rows are generated as text and become one user message (after any system prompt).
        texts = [prompt if isinstance(prompt, str) else prompt[-1]["content"] for prompt in held_out_prompts]
        return warm_chat_model(settings, held_out_prompts=texts, show_logs=verbose())
    return model_name_or_path


def warm_up_before_launch(values: dict[str, Any]) -> None:
    """A recipe whose model is warmed up (`thermorl:tiny`; SmolLM2 with `warmup_dataset`), launched on several
    processes: the warm-up runs here, once, in the launching process. In the workers it would run on every rank
    inside the process group (each its own SFTTrainer, waiting on the others' collectives); they then find it
    cached. `values` are validated recipe values."""
    import dataclasses

    from .models.names import resolve_named_model
    from .models.smollm2 import SMOLLM2_MODEL_NAME
    from .recipe import ThermoScriptArguments, recipe_dataclasses

    model = values.get("model_name_or_path")
    if model != TINY_MODEL_NAME and not (model == SMOLLM2_MODEL_NAME and values.get("warmup_dataset")):
        return
    script_fields = {f.name for f in dataclasses.fields(ThermoScriptArguments)}
    script_args = ThermoScriptArguments(**{k: v for k, v in values.items() if k in script_fields})
    check_model_takes_task(model, script_args)
    config = recipe_dataclasses(script_args.trainer)[1]
    seed = values.get("seed", next(f.default for f in dataclasses.fields(config) if f.name == "seed"))
    _, held_out, _ = build_datasets(script_args, seed)
    resolve_model_path(resolve_named_model(model), script_args, held_out)


def check_model_takes_task(model_name_or_path: str | None, script_args) -> None:
    """The recipe's model can learn its dataset: checked once, where a recipe's values become configs
    (`recipe.recipe_configs`; the launcher's warm-up has its own values). Only `thermorl:tiny` and SmolLM2 are warmed
    up, so warm-up fields with another model would be silently ignored; and the tiny model is a character-level model with
    no chat template, warmed up from scratch on a built-in task's answers: it can learn nothing from a user's dataset
    or a chat task, so such a recipe is refused before anything runs."""
    from .models.smollm2 import SMOLLM2_MODEL_NAME
    from .tasks import TASKS, parse_task_spec
    from .tasks.chat import ChatTask

    if model_name_or_path != TINY_MODEL_NAME:
        _check_chat_warmup(model_name_or_path, script_args)
        return
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
        _check_warmup_task(script_args)
    if script_args.prompt_template is not None or script_args.system_prompt is not None:
        raise UserError(
            "prompt_template / system_prompt make prompts conversational, and model_name_or_path 'thermorl:tiny' "
            "has no chat template: remove them, or use a chat model"
        )


def _check_warmup_task(script_args):
    """The warm-up's task, checked: valid (a typo or a bad option is the user's one line) and the same built-in task
    as `dataset`."""
    from .tasks import parse_task_spec, task_from_spec

    try:
        task = task_from_spec(script_args.warmup_dataset)
    except UserError as error:
        raise UserError(f"warmup_dataset '{script_args.warmup_dataset}': {error}") from None
    warm, trained = parse_task_spec(script_args.warmup_dataset)[0], parse_task_spec(script_args.dataset)[0]
    if warm != trained:
        raise UserError(f"warmup_dataset '{script_args.warmup_dataset}': must be the same built-in task as "
                        f"dataset ('{trained}'), with other options: the warm-up teaches that task's answer "
                        "format")
    return task


def _check_chat_warmup(model_name_or_path: str | None, script_args) -> None:
    """Other models than the tiny one: SmolLM2 warmed up on a chat task's worked solutions, or no warm-up at all.
    (warmup_examples / warmup_epochs alone stay allowed: the tiny model's recipes set them, and a user who swaps in
    another model keeps the recipe.)"""
    from .models.smollm2 import SMOLLM2_MODEL_NAME
    from .tasks import TASKS
    from .tasks.chat import ChatTask

    if script_args.warmup_dataset is None:
        return
    if model_name_or_path != SMOLLM2_MODEL_NAME:
        raise UserError(f"warmup_dataset '{script_args.warmup_dataset}': only model_name_or_path 'thermorl:tiny' "
                        f"and '{SMOLLM2_MODEL_NAME}' are warmed up, not '{model_name_or_path}'; remove it")
    task = _check_warmup_task(script_args)
    if not (isinstance(task, ChatTask) and task.worked_solutions):
        with_solutions = [name for name, cls in TASKS.items() if issubclass(cls, ChatTask) and cls.worked_solutions]
        raise UserError(f"warmup_dataset '{script_args.warmup_dataset}': {SMOLLM2_MODEL_NAME} is warmed up on "
                        f"worked solutions, which only {', '.join(with_solutions)} has")


def build_datasets(script_args, seed: int, validation_examples: int = 0):
    """(train, held-out or None, task or None) for the recipe's dataset, prompts shaped by the recipe's
    prompt_column / prompt_template / system_prompt / answer_column (see tasks/prompt_shaping.py). A built-in task's split is
    seeded by `dataset_seed` when the recipe sets it, else by `seed`. `validation_examples` > 0 (a built-in task
    only: `thermorl bench` tuning on validation) leaves those rows out of train (Task.carve_validation)."""
    from .tasks import TASKS, load_prompt_dataset, parse_task_spec, task_from_spec
    from .tasks.prompt_shaping import shape_prompts

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
    from .tasks.prompt_shaping import is_conversational_prompt

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
    from .tasks.prompt_lengths import check_prompt_lengths

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
