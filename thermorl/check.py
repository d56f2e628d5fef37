"""`thermorl check RECIPE [--field value ...]`: resolve everything a run needs and print the plan, without training.

What a user runs before renting GPUs: the model's config and tokenizer (no weights are loaded), its chat template,
the dataset and its first prompts exactly as the model will see them (through the chat template), every reward
function called on a right and a wrong sample completion, and the launch settings. Any mistake surfaces here as the
same one-line error `thermorl train` would give. Offline it works on local model folders, data files and dataset
folders; hub names need the network (or the Hugging Face cache).
"""

from __future__ import annotations

from typing import Any

from .errors import UserError, refusing_remote_code

PROMPTS_SHOWN = 2
WRONG_COMPLETION = "I am not sure."


def recipe_values_for_this_machine(recipe: str, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The recipe with its overrides; on the CPU (no GPU here, or `use_cpu`), its GPU-only settings (bf16/fp16,
    bfloat16/float16 weights, colocated vLLM: launch_checks.gpu_only_settings) are replaced by the CPU overrides so
    the rest can be resolved, and the notes give the exact override list `thermorl train` needs on this machine."""
    from .launch_checks import cpu_overrides, gpu_only_settings, override_flags, runs_on_cpu
    from .recipe import parse_overrides, read_recipe

    values = {**read_recipe(recipe), **parse_overrides(argv)}
    if not runs_on_cpu(values):
        return values, []
    found = gpu_only_settings(values)
    if not found:
        return values, []
    overrides = cpu_overrides(values)
    notes = [f"{reason}: this plan was resolved with {override_flags({name: overrides[name]})}"
             for name, (reason, _) in found.items()]
    notes.append(f"to train on this machine (CPU), add: {override_flags(overrides)} (docs/gpu-recipes-on-cpu.md)")
    values.update(overrides)
    return values, notes


def sample_completions(row: dict[str, Any], task) -> list[str]:
    """A right completion (the reference answer, boxed after a think block as a reasoning model writes it; a
    built-in task's bare answer) and a wrong one; without a reference, two placeholder answers."""
    from .tasks.verify import gold_answer

    if "answer" not in row:
        return ["The answer is \\boxed{42}.", WRONG_COMPLETION]
    if task is not None:
        return [str(row["answer"]), WRONG_COMPLETION]
    answer = gold_answer(str(row["answer"]))
    return [f"<think>\nWorking it out.\n</think>\nThe answer is \\boxed{{{answer}}}.", WRONG_COMPLETION]


def call_rewards(reward_funcs, row: dict[str, Any], completions: list[str]) -> dict[str, list]:
    """Each reward function called as TRL's GRPOTrainer calls it, on one prompt and the sample completions."""
    from .tasks.prompt_shaping import is_conversational_prompt

    n = len(completions)
    if is_conversational_prompt(row["prompt"]):
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    columns = {key: [value] * n for key, value in row.items() if key != "prompt"}
    results = {}
    for func in reward_funcs:
        name = getattr(func, "__name__", repr(func))
        try:
            rewards = func(
                prompts=[row["prompt"]] * n, completions=completions, completion_ids=[[] for _ in range(n)],
                trainer_state=None, log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **columns,
            )
        except Exception as error:  # a user's reward function: report it as the recipe's mistake, with its name
            raise UserError(f"reward_funcs: '{name}' raised {type(error).__name__}: {error} on a sample "
                            f"completion (columns passed: {sorted(columns)})") from error
        if rewards is None or len(rewards) != n:
            raise UserError(f"reward_funcs: '{name}' returned {rewards!r} for {n} completions; it must return a "
                            "list with one float (or None) per completion")
        results[name] = list(rewards)
    return results


def model_summary(model_args, tokenizer, trust_remote_code: bool) -> list[str]:
    from transformers import AutoConfig

    from .models.tiny import TINY_CONFIG
    from .models.warmup import TINY_MODEL_NAME
    from .recipe_inputs import ALLOW_REMOTE_CODE

    name = model_args.model_name_or_path
    if name == TINY_MODEL_NAME:
        layers = TINY_CONFIG["num_hidden_layers"]
        size = f"tiny character-level Qwen2 ({layers} layers), warmed up on the task at train time"
    else:
        with refusing_remote_code(name, ALLOW_REMOTE_CODE, trust_remote_code):
            config = AutoConfig.from_pretrained(name, revision=model_args.model_revision,
                                                trust_remote_code=trust_remote_code)
        size = f"{config.model_type}, {_parameter_count(config)}, {getattr(config, 'num_hidden_layers', '?')} layers"
    template = "yes" if getattr(tokenizer, "chat_template", None) else "none"
    return [
        f"model: {name} ({size})",
        f"  tokenizer: {type(tokenizer).__name__}, {len(tokenizer)} tokens, eos {tokenizer.eos_token!r}, "
        f"chat template: {template}",
        f"  dtype: {model_args.dtype}, attention: {model_args.attn_implementation or 'default'}, "
        f"LoRA: {'r=' + str(model_args.lora_r) if model_args.use_peft else 'no'}",
    ]


def _parameter_count(config) -> str:
    """Parameters of a model built on the meta device from its config (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError):
        return "size unknown"
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"


def rendered_prompt(tokenizer, prompt, training_args) -> str:
    """The prompt text the model is given, with the recipe's chat_template_kwargs (eval renders prompts the same way)."""
    from .tasks.prompt_lengths import prompt_text

    return prompt_text(prompt, tokenizer, training_args.chat_template_kwargs)


def launch_summary(training_args, world_size: int) -> list[str]:
    from .launch_checks import vllm_installed

    args = training_args
    completions = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    prompts_per_step = completions // args.num_generations
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    lines = [
        f"launch: {world_size} process(es) (WORLD_SIZE), device {args.device.type}, bf16 {args.bf16}, "
        f"gradient checkpointing {args.gradient_checkpointing}",
        f"  per optimizer step: {completions} completions = {prompts_per_step} prompts x {args.num_generations} "
        f"generations (per_device_train_batch_size {args.per_device_train_batch_size} x gradient_accumulation_steps "
        f"{args.gradient_accumulation_steps} x {world_size} processes); "
        f"steps_per_generation {args.steps_per_generation}",
        f"  loss {_loss_description(args)}, learning_rate {args.learning_rate:g} ({scheduler}), "
        f"beta {args.beta}, max_completion_length {args.max_completion_length}, temperature {args.temperature}"
        + (f", temperature_schedule {args.temperature_schedule}" if args.temperature_schedule is not None else ""),
    ]
    if args.use_vllm:
        where = "installed" if vllm_installed() else "NOT installed here (pip install vllm on the GPU machine)"
        lines.append(f"  generation: vLLM ({args.vllm_mode}, gpu_memory_utilization "
                     f"{args.vllm_gpu_memory_utilization}); vllm {where}")
    else:
        lines.append("  generation: transformers generate")
    lines.append(f"  output_dir {args.output_dir}, save every {args.save_steps} steps, report_to {args.report_to}")
    return lines


def _loss_description(args) -> str:
    """'sapo (tau_pos=1.0, ...)': the loss the trainer runs; with policy_loss unset, the one TRL's loss_type means."""
    name, kwargs = args.resolved_policy_loss()
    settings = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    source = "" if args.policy_loss is not None else f", from TRL's loss_type '{args.loss_type}'"
    return f"{name} ({settings or 'its defaults'}{source})"


def plan(recipe: str, argv: list[str] | None = None) -> list[str]:
    """The lines `thermorl check` prints; raises UserError on the first problem."""
    import os

    from .launch_checks import check_launch
    from .recipe import load_recipe
    from .tasks.prompt_shaping import is_conversational_prompt
    from .recipe_inputs import (
        build_datasets, check_chat_template, check_dataset_size, check_prompts_fit, load_tokenizer,
        recipe_reward_funcs,
    )

    values, notes = recipe_values_for_this_machine(recipe, argv or [])
    model_args, training_args, script_args = load_recipe(values)
    if model_args.model_name_or_path is None:
        raise UserError("The recipe needs model_name_or_path (a local folder, a hub name, or 'thermorl:tiny').")
    check_launch(model_args, training_args)
    train, held_out, task = build_datasets(script_args, training_args.seed)
    check_dataset_size(train, training_args)
    reward_funcs = recipe_reward_funcs(script_args, task)
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    check_chat_template(tokenizer, model_args.model_name_or_path, train)
    check_prompts_fit(tokenizer, model_args, training_args, script_args, train)

    lines = [f"recipe: {recipe}", *model_summary(model_args, tokenizer, training_args.trust_remote_code)]
    if values.get("model_name_or_path") != model_args.model_name_or_path:  # a built-in name, resolved to its folder
        lines[1] = lines[1].replace("model: ", f"model: {values['model_name_or_path']} -> ", 1)
    source = script_args.dataset + (f" (config {script_args.dataset_config})" if script_args.dataset_config else "")
    kind = "conversational (chat template applies)" if is_conversational_prompt(train[0]["prompt"]) else "plain text"
    lines.append(f"dataset: {source}, split {script_args.dataset_split}: {len(train)} rows, columns "
                 f"{train.column_names}, prompts {kind}"
                 + (f"; {len(held_out)} held-out rows" if held_out is not None else ""))
    for i in range(min(PROMPTS_SHOWN, len(train))):
        text = rendered_prompt(tokenizer, train[i]["prompt"], training_args)
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        lines.append(f"  prompt {i} as the model sees it ({tokens} tokens):")
        lines.extend("  | " + line for line in text.split("\n"))
        if "answer" in train.column_names:
            lines.append(f"  answer {i}: {str(train[i]['answer'])[-120:]!r}")
    completions = sample_completions(dict(train[0]), task)
    lines.append(f"rewards on prompt 0 (right, wrong completion: {completions!r}):")
    for name, rewards in call_rewards(reward_funcs, dict(train[0]), completions).items():
        lines.append(f"  {name}: {rewards}")
    lines.extend(launch_summary(training_args, int(os.environ.get("WORLD_SIZE", "1"))))
    lines.extend(f"note: {note}" for note in notes)
    return lines


def check_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: thermorl check RECIPE [--field value ...]\n\nResolve the model config and tokenizer, the dataset "
              "and its first prompts as the model sees them, the reward functions (called on a sample completion) "
              "and the launch settings, and print that plan without loading weights or training.")
        return 0 if argv else 2
    print("\n".join(plan(argv[0], argv[1:])))
    return 0
