"""`thermorl eval`: multi-temperature test-time-scaling evaluation of a model on a task or dataset.

    thermorl eval --model outputs/run/checkpoint-500 --task arithmetic --temperatures 0.0:1.2:0.1 --samples 8
    thermorl eval --model outputs/quickstart   # the run's own task, on the rows its recipe held out

    thermorl eval --model outputs/run --recipe qwen3-0.6b-gsm8k-sapo --split test   # prompts as in training

With a recipe (--recipe RECIPE [--field value ...], or the run's own OUTPUT_DIR/thermorl_recipe.yaml when --model is
a run folder or one of its checkpoints and --task is not given), the prompts, chat template and reward are the
training ones: the dataset (its --split) is loaded and shaped by the functions training uses (thermorl.recipe_inputs
build_datasets: dataset_config, prompt_column / prompt_template / system_prompt / answer_column), conversations are
rendered with the recipe's chat_template_kwargs as TRL's GRPOTrainer renders them, and the recipe's reward function
(else a built-in task's checker) scores the completions.

A built-in task is evaluated on the rows its training recipe held out: `thermorl train` records the split settings
and held-out prompts in OUTPUT_DIR/thermorl_held_out.json, found from --model (the output folder or a checkpoint in
it); without one, the recipe defaults (num_train_examples, num_eval_examples, seed) apply.

Every input is checked (temperature grid, counts, model path, dataset rows and verifier) before the
model is loaded, and a problem exits with an error naming it; the prompts' lengths, with --max-new-tokens, are
checked against the model's positions once it is loaded, before anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .console import log_to_run_folder, output_to_run_log
from .errors import UserArgumentParser, UserError, refusing_remote_code
from .evaluation.model_loading import check_model_path, load_policy
from .models.names import resolve_named_model
from .run_dir import check_model_to_evaluate
from .models.warmup import TINY_MODEL_NAME
from .evaluation.pipeline import (
    DEFAULT_VOTE_ROUND_SIZE,
    RewardVerifier,
    TaskVerifier,
    as_verifier,
    check_settings,
    evaluate,
    parse_temperatures,
)
from .evaluation.vllm_sampling import default_dtype, engine_memory, load_engine
from .tasks import TASKS, load_prompt_dataset, resolve_reward_funcs, task_from_spec
from .tasks.prompt_lengths import check_prompt_lengths, prompt_token_ids
from .recipe_inputs import HELD_OUT_FILE, find_held_out


def build_parser() -> argparse.ArgumentParser:
    parser = UserArgumentParser(
        prog="thermorl eval",
        allow_abbrev=False,  # unknown --field options are recipe overrides, never abbreviations of eval's options
        description="Sample K completions per question at every temperature of a grid (one batched generate call "
        "for all temperatures) and report pass@k, maj@k, Pass@All and early-exit multi-temperature voting.",
    )
    parser.add_argument(
        "--model", required=True, help="local model dir, Trainer checkpoint, LoRA adapter dir or Hub name"
    )
    parser.add_argument(
        "--task",
        default=None,
        help='built-in task spec ("arithmetic", "countdown:num_numbers=4"), data file or Hub dataset; default: the '
        "task of the training run in --model (its thermorl_held_out.json)",
    )
    parser.add_argument(
        "--recipe", default=None,
        help="training recipe (YAML file or built-in name; any --field value after the options overrides it) whose "
        "dataset, prompt shaping, chat_template_kwargs and reward_funcs the evaluation uses; default: the run's "
        "thermorl_recipe.yaml in --model, unless --task is given",
    )
    parser.add_argument("--temperatures", default="0.0:1.2:0.1", help="start:stop:step (stop included) or a,b,c")
    parser.add_argument("--samples", type=int, default=8, help="samples K per (question, temperature)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="completion length (default: the max_completion_length of --recipe, else of the training run --model "
        "belongs to; else 256, or less if the longest prompt leaves less of the model's positions)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="sequences per generate call (hf backend; default 64)"
    )
    parser.add_argument(
        "--backend", choices=("hf", "vllm"), default="hf",
        help="hf: batched transformers generate; vllm: every sample in one vLLM engine call",
    )
    parser.add_argument(
        "--dtype", default=None,
        help="vllm backend: model dtype (default: float32 on the CPU, where vLLM's own choice is bfloat16; vLLM's "
        "choice on a GPU)",
    )
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=None,
        help="vllm backend: share of accelerator (on CPU: host) memory vLLM reserves (default: 0.9 on a GPU; on the "
        "CPU a KV cache of 4 GiB, or half the free memory if less)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the Python code the model folder ships (its config's auto_map); only for code you have read",
    )
    parser.add_argument("--out", default="outputs/eval", help="directory for report.json, questions.csv, plots")
    parser.add_argument(
        "--num-questions", type=int, default=None,
        help="first N questions (built-in tasks: the run's held-out rows, else the recipe default num_eval_examples)",
    )
    parser.add_argument("--reward-fn", default=None, help="verifier: built-in reward name or package.module:function")
    parser.add_argument("--correct-threshold", type=float, default=1.0, help="reward counted as a correct answer")
    parser.add_argument(
        "--vote-threshold", type=float, default=0.8, help="majority share that makes a temperature confident"
    )
    parser.add_argument(
        "--vote-round-size", type=int, default=DEFAULT_VOTE_ROUND_SIZE, help="samples per temperature per voting round"
    )
    parser.add_argument(
        "--split", default="test", help="dataset split, the recipe's dataset's too (built-in tasks: held-out rows)"
    )
    parser.add_argument("--prompt-column", default=None, help="the column holding the prompts (default: prompt)")
    parser.add_argument(
        "--data-seed", type=int, default=None,
        help="seed of a built-in task's split (the training recipe's `seed`); default: the run's, else the recipe default",
    )
    parser.add_argument(
        "--num-train-examples", type=int, default=None,
        help="training rows a built-in task's held-out rows were kept apart from (the recipe's num_train_examples); "
        "default: the run's, else the recipe default",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def builtin_held_out(task_spec: str, args, record: dict | None):
    """The held-out rows of a built-in task: the rows the training recipe held out, from the same split settings
    (num_train_examples, num_eval_examples, seed) as the run in `record`, else the recipe defaults; flags win."""
    from transformers import TrainingArguments

    from thermorl.recipe import ThermoScriptArguments

    defaults = ThermoScriptArguments()
    same_task = record is not None and record["dataset"] == task_spec
    n_train = args.num_train_examples or (record["num_train_examples"] if same_task else defaults.num_train_examples)
    n_eval = args.num_questions or (record["num_eval_examples"] if same_task else defaults.num_eval_examples)
    if args.data_seed is not None:
        seed = args.data_seed
    else:
        seed = record["seed"] if same_task else TrainingArguments.__dataclass_fields__["seed"].default
    try:
        dataset = load_prompt_dataset(task_spec, split="eval", n_train=n_train, n_eval=n_eval, seed=seed)
    except ValueError as error:
        raise UserError(
            f"--task {task_spec}: the held-out rows are drawn apart from {n_train} training rows (seed {seed}), "
            f"and {error}. Pass the training run's output folder as --model, or --num-train-examples and "
            "--data-seed as in its recipe"
        ) from None
    recorded = record["prompts"][: len(dataset)] if same_task else None
    if recorded is not None and args.num_train_examples is None and args.data_seed is None:
        if dataset["prompt"][: len(recorded)] != recorded:
            raise UserError(
                f"the held-out rows of '{task_spec}' regenerated from the run's settings differ from the prompts "
                f"recorded in {HELD_OUT_FILE}: the task's generator changed since that run"
            )
    return dataset


def load_dataset_and_verifier(args):
    """(dataset, verifier) for --task, --num-questions and --reward-fn."""
    record_path = find_held_out(args.model)
    record = json.loads(record_path.read_text()) if record_path is not None else None
    task_spec = args.task if args.task is not None else (record or {}).get("dataset")
    if task_spec is None:
        raise UserError(f"--task is required: {args.model} holds no {HELD_OUT_FILE} from a training run on a built-in task")
    builtin = task_spec.partition(":")[0].strip() in TASKS
    if builtin:
        dataset = builtin_held_out(task_spec, args, record)
    else:
        dataset = load_prompt_dataset(task_spec, split=args.split, prompt_column=args.prompt_column or "prompt")
        if args.num_questions is not None:
            dataset = dataset.select(range(min(args.num_questions, len(dataset))))
    if args.reward_fn is not None:
        verifier = RewardVerifier(resolve_reward_funcs([args.reward_fn])[0], args.correct_threshold)
    elif builtin:
        verifier = TaskVerifier(task_from_spec(task_spec))
    else:
        verifier = None
    args.task = task_spec
    return dataset, as_verifier(verifier, dataset.column_names)


def eval_recipe(args, overrides: list[str]) -> dict | None:
    """The validated recipe values the evaluation rebuilds the training prompts from: --recipe with its overrides,
    else the saved recipe of the run --model belongs to (unless --task names other data); None without either."""
    from thermorl.recipe import resolve_recipe
    from thermorl.run_recipe import RUN_RECIPE_FILE, read_run_recipe

    if args.recipe is not None:
        chosen = [flag for flag, value in (("--task", args.task), ("--prompt-column", args.prompt_column)) if value]
        if chosen:
            raise UserError(f"{' and '.join(chosen)} and --recipe both say which data to evaluate and how: the "
                            f"recipe's dataset and prompt_column are used, so drop {' and '.join(chosen)} (or "
                            "override the recipe's fields, e.g. --dataset FILE)")
        return resolve_recipe(args.recipe, overrides)
    saved = read_run_recipe(args.model) if args.task is None and args.prompt_column is None else None
    if saved is not None:
        return resolve_recipe(saved, overrides)
    if overrides:
        raise UserError(f"{' '.join(overrides)}: not an option of thermorl eval, and there is no recipe to override "
                        f"(pass --recipe RECIPE, or a run folder holding {RUN_RECIPE_FILE} as --model without --task)")
    return None


def check_no_split_flags(args) -> None:
    """A recipe holds the built-in task's split settings: eval's own split flags would be ignored, so refused."""

    given = [flag for flag, value in (("--num-train-examples", args.num_train_examples),
                                      ("--data-seed", args.data_seed)) if value is not None]
    if given:
        raise UserError(f"{' and '.join(given)}: the recipe evaluated here sets the split (num_train_examples, "
                        "num_eval_examples, seed / dataset_seed): override those recipe fields instead, e.g. "
                        "--num_train_examples 700 --dataset_seed 0")


def recipe_dataset_and_verifier(values: dict, args, named_model: str):
    """(dataset, verifier, chat_template_kwargs) from a training recipe: the rows of --split (a built-in task: the
    rows the recipe holds out) shaped by thermorl.recipe_inputs.build_datasets, and the recipe's reward function (a
    built-in task without reward_funcs: the task's checker; --reward-fn wins). When --model names the recipe's own
    SmolLM2 (`named_model`) and the recipe warms it up (`warmup_dataset`), args.model becomes that warmed model
    (built on first use, as training builds it): the start the recipe's runs begin from."""
    from thermorl.launch_checks import cpu_overrides, runs_on_cpu
    from thermorl.models.smollm2 import SMOLLM2_MODEL_NAME
    from thermorl.recipe import load_recipe
    from thermorl.recipe_inputs import build_datasets, resolve_model_path

    if runs_on_cpu(values):
        # Training-only settings (bf16, bfloat16 weights, vLLM for rollouts) that TrainingArguments refuses on the
        # CPU; eval reads only the data, prompt and reward fields, and loads --model by its own options.
        values = {**values, **cpu_overrides(values)}
    _, training_args, script_args = load_recipe(values)
    script_args.dataset_split = args.split
    train_rows, held_out, task = build_datasets(script_args, training_args.seed)
    dataset = held_out if task is not None else train_rows
    if args.num_questions is not None:
        dataset = dataset.select(range(min(args.num_questions, len(dataset))))
    if args.reward_fn is not None:
        verifier = RewardVerifier(resolve_reward_funcs([args.reward_fn])[0], args.correct_threshold)
    elif script_args.reward_funcs:
        reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
        if len(reward_funcs) > 1:
            raise UserError(f"reward_funcs: the recipe names {len(reward_funcs)} reward functions "
                            f"({', '.join(script_args.reward_funcs)}), and eval counts a completion correct by one: "
                            "choose it with --reward-fn")
        verifier = RewardVerifier(reward_funcs[0], args.correct_threshold)
    elif task is not None:
        verifier = TaskVerifier(task)
    else:
        raise UserError(f"reward_funcs: the recipe's dataset '{script_args.dataset}' is not a built-in task and the "
                        "recipe names no reward_funcs: add them, or pass --reward-fn")
    args.task = script_args.dataset
    if named_model == SMOLLM2_MODEL_NAME == values.get("model_name_or_path") and script_args.warmup_dataset:
        args.model = resolve_model_path(args.model, script_args, held_out)
        print(f"--model {named_model}: the recipe's start, warmed up on {script_args.warmup_dataset} ({args.model})",
              flush=True)
    return dataset, as_verifier(verifier, dataset.column_names), dict(training_args.chat_template_kwargs or {})


def loaded_model_positions(model, backend: str) -> int | None:
    """The positions the loaded model (or vLLM engine) has for a prompt and its completion."""
    if backend == "vllm":
        return model.llm_engine.model_config.max_model_len
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def default_max_new_tokens(recipe: dict | None, model: str, dataset, tokenizer, positions: int | None,
                           chat_template_kwargs: dict) -> tuple[int, str]:
    """(--max-new-tokens when it is not given, why): the max_completion_length of the recipe evaluated, else of the
    training run `model` belongs to (its folder or a checkpoint in it); else TRL's default max_completion_length
    (256), lowered to what the longest prompt leaves of the model's positions (a prompt that leaves none is refused
    by check_prompt_lengths)."""
    from trl import GRPOConfig

    from thermorl.run_recipe import read_run_recipe

    default = GRPOConfig.__dataclass_fields__["max_completion_length"].default
    for values, whose in ((recipe, "the recipe's"), (read_run_recipe(model), "the training run's")):
        if values is not None:
            return int(values.get("max_completion_length", default)), f"{whose} max_completion_length"
    if positions is not None:
        longest = max(len(prompt_token_ids(prompt, tokenizer, chat_template_kwargs)) for prompt in dataset["prompt"])
        if 0 < positions - longest < default:
            return positions - longest, (f"what the longest prompt, {longest} tokens, leaves of the model's "
                                         f"{positions} positions")
    return default, "TRL's default max_completion_length"


def open_run_log(out: str, parser: argparse.ArgumentParser) -> Path:
    """The libraries' warnings and logs so far, and from here on, in OUT/thermorl.log (returned)."""
    try:
        return log_to_run_folder(out)
    except OSError as error:
        parser.error(f"--out {out}: cannot write there: {error.strerror or error}")


def eval_command(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    vllm_flags = {"--dtype": args.dtype, "--gpu-memory-utilization": args.gpu_memory_utilization}
    vllm_only = [flag for flag, value in vllm_flags.items() if value is not None]
    if args.backend == "hf" and vllm_only:
        parser.error(f"{', '.join(vllm_only)} apply to --backend vllm only")
    if args.backend == "vllm" and args.batch_size is not None:
        parser.error("--batch-size applies to --backend hf only: vLLM schedules its own batches")
    args.batch_size = 64 if args.batch_size is None else args.batch_size
    if args.model == TINY_MODEL_NAME:
        raise UserError(f"--model {TINY_MODEL_NAME} is built and warmed up on a run's own task when it trains: "
                        "evaluate that run's output folder (--model OUTPUT_DIR)")
    named_model = args.model
    args.model = resolve_named_model(args.model)  # thermorl:smollm2-135m -> its converted model folder
    try:
        temperatures = parse_temperatures(args.temperatures)
        check_settings(
            args.vote_threshold,
            samples=args.samples,
            batch_size=args.batch_size,
            vote_round_size=args.vote_round_size,
            **({} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}),
        )
        check_model_path(args.model)
        check_model_to_evaluate(args.model)
        if args.num_questions is not None and args.num_questions < 1:
            raise UserError(f"--num-questions must be >= 1, got {args.num_questions}")
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    # A recipe's mistakes are the recipe's: one line from the thermorl command, as `thermorl train` gives them.
    recipe = eval_recipe(args, overrides)
    chat_template_kwargs = {}
    if recipe is not None:
        check_no_split_flags(args)
        dataset, verifier, chat_template_kwargs = recipe_dataset_and_verifier(recipe, args, named_model)
    else:
        try:
            dataset, verifier = load_dataset_and_verifier(args)
        except (ValueError, FileNotFoundError, ImportError, AttributeError, TypeError) as error:
            parser.error(str(error))
    dtype = (args.dtype or default_dtype()) if args.backend == "vllm" else None
    if args.backend == "vllm":
        memory = engine_memory(args.gpu_memory_utilization)
        # Before the engine starts: vLLM's engine processes write their logs to OUT/thermorl.log from their start.
        run_log = open_run_log(args.out, parser)
    try:
        # The recipe that trusted the model's code for training trusts it here too.
        trust_remote_code = args.trust_remote_code or bool(recipe and recipe.get("trust_remote_code"))
        allow = "pass --trust-remote-code, after reading that code"
        with refusing_remote_code(args.model, allow, trust_remote_code):
            if args.backend == "vllm":
                try:
                    with output_to_run_log():
                        model = load_engine(args.model, dtype, memory, args.seed, trust_remote_code)
                except RuntimeError as error:  # "Engine core initialization failed. See root cause above."
                    error.add_note(f"vLLM's engine processes wrote their output, the root cause too, to {run_log}")
                    raise
                tokenizer = model.get_tokenizer()
            else:
                model, tokenizer = load_policy(args.model, trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except (ValueError, OSError) as error:
        parser.error(f"cannot load model {args.model!r}: {error}")
    positions = loaded_model_positions(model, args.backend)
    if args.max_new_tokens is None:
        args.max_new_tokens, why = default_max_new_tokens(recipe, args.model, dataset, tokenizer, positions,
                                                          chat_template_kwargs)
        print(f"--max-new-tokens {args.max_new_tokens} ({why})", flush=True)
    check_prompt_lengths(dataset, args.task, tokenizer, positions, args.max_new_tokens, "--max-new-tokens",
                         chat_template_kwargs)
    if args.backend == "hf":
        open_run_log(args.out, parser)

    report = evaluate(
        model,
        tokenizer,
        dataset,
        verifier,
        temperatures,
        args.samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        vote_threshold=args.vote_threshold,
        vote_round_size=args.vote_round_size,
        out_dir=Path(args.out),
        progress=not args.no_progress,
        show_table=True,
        metadata={"model": args.model, "task": args.task, "reward_fn": args.reward_fn, "recipe": recipe,
                  "chat_template_kwargs": chat_template_kwargs, **({"dtype": dtype} if dtype else {})},
        backend=args.backend,
        chat_template_kwargs=chat_template_kwargs,
    )
    print(f"report: {report['files']['report']}")
    return 0
