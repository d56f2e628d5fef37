"""Recipes: YAML files whose keys are fields of TRL's ModelConfig, ThermoGRPOConfig and ThermoScriptArguments.

Parsing goes through Hugging Face's HfArgumentParser. Before that, every key is checked against the fields and
every value against its field's type, because `parse_dict` accepts a string where a float belongs and argparse
defaults are not type-checked at all: a recipe typo should fail at load time with the key named, not an hour in.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError, refused_by_library
from .models.names import resolve_named_model
from .values import ValueKindError, to_bool, to_integer, to_number, to_string


@dataclass
class ThermoScriptArguments:
    """What to train on, beside the model (ModelConfig) and the training settings (ThermoGRPOConfig)."""

    dataset: str = field(
        default="arithmetic",
        metadata={"help": "Built-in task ('arithmetic', 'countdown:num_numbers=3'), a local jsonl/json/csv/parquet "
                  "file, or a hub dataset name."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Config (subset) of a hub dataset or dataset folder with several, e.g. 'main' for "
                  "openai/gsm8k; as `datasets.load_dataset(dataset, dataset_config)`."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a file or hub dataset."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding the prompts (default 'prompt'); renamed to 'prompt'."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Prompt built from each row's columns, e.g. '{question}\\nPut your final answer within "
                  "\\\\boxed{}.' ('{column}' is a placeholder, other braces are literal); makes prompts "
                  "conversational, so the model's chat template applies. Exclusive with prompt_column."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message put before each prompt; makes prompts conversational (chat template)."},
    )
    answer_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the reference answers (e.g. 'solution' for MATH); renamed to 'answer', "
                  "the keyword reward functions receive it as. Default: an 'answer' column if there is one."},
    )
    num_train_examples: int = field(default=2048, metadata={"help": "Prompts generated for a built-in task."})
    num_eval_examples: int = field(default=128, metadata={"help": "Held-out prompts for a built-in task."})
    dataset_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of a built-in task's train/held-out split (and so of the tiny model's warm-up data); "
                  "default: the training seed. Fix it to compare training seeds on the same prompts."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: built-in names or dotted paths 'pkg.module:function'. "
                  "Default: the built-in task's own."},
    )
    warmup_examples: int | None = field(
        default=None,
        metadata={"help": "SFT examples of the warm-up (models/warmup.py); default: 4000 for thermorl:tiny, 320 "
                  "for thermorl:smollm2-135m."},
    )
    warmup_epochs: float | None = field(
        default=None,
        metadata={"help": "SFT epochs of the warm-up; default: 2 for thermorl:tiny, 1 for thermorl:smollm2-135m."},
    )
    warmup_dataset: str | None = field(
        default=None,
        metadata={"help": "The built-in task the warm-up trains on. thermorl:tiny is always warmed up, on `dataset` "
                  "unless this names the same task with other options (e.g. easier problems than RL's, so that "
                  "some RL prompts start unsolved). thermorl:smollm2-135m is warmed up only when this is set, on "
                  "the task's worked solutions (word_problems). The warm-up never sees `dataset`'s held-out "
                  "prompts."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds another run's checkpoints, removing them "
                  "first. Without it such a run is refused (resume it with resume_from_checkpoint: latest)."},
    )
    tiny_model_size: str = field(
        default="default", metadata={"help": "Size of the tiny model (thermorl:tiny): 'default' (3M) or 'small' (0.8M)."}
    )
    trainer: Literal["grpo", "adpo"] = field(
        default="grpo",
        metadata={"help": "'grpo': ThermoGRPOTrainer (online RL, ThermoGRPOConfig fields); 'adpo': ThermoADPOTrainer "
                  "(offline preference data, ThermoADPOConfig fields)."},
    )


def recipe_dataclasses(trainer: str = "grpo") -> tuple[type, ...]:
    """The dataclasses whose fields a recipe for `trainer` may set."""
    from trl import ModelConfig

    from .trainers import ThermoADPOConfig, ThermoGRPOConfig

    configs = {"grpo": ThermoGRPOConfig, "adpo": ThermoADPOConfig}
    if trainer not in configs:
        raise UserError(f"'trainer' must be one of {list(configs)}, got {trainer!r}.")
    return (ModelConfig, configs[trainer], ThermoScriptArguments)


def builtin_recipe_path(name: str) -> Path:
    """`quickstart` or `quickstart.yaml` -> the file shipped in thermorl.recipes."""
    filename = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = resources.files("thermorl.recipes") / filename
    if not path.is_file():
        raise UserError(f"No recipe file or built-in recipe named '{name}'. Built-in: {', '.join(list_builtin_recipes())}.")
    return Path(str(path))


def list_builtin_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("thermorl.recipes").iterdir() if p.name.endswith(".yaml"))


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    path = Path(recipe)
    if not path.is_file():
        path = builtin_recipe_path(str(recipe))
    data = read_yaml(path, "Recipe")
    if data is None:
        raise UserError(f"Recipe {path} is empty: it needs at least `model_name_or_path` (see `thermorl list`).")
    if not isinstance(data, dict):
        raise UserError(f"Recipe {path} must be a mapping of field names to values, got {type(data).__name__}.")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key written twice in one mapping (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges a mapping whose keys the ones written here override, by design
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise DuplicateKeyError(
                        None, None, f"key {key!r} is written twice (first at line {seen[key].line + 1}): only one "
                        "value can apply; remove one", key_node.start_mark)
                if isinstance(key, typing.Hashable):
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with a key written twice in a mapping an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_yaml(path: Path, what: str) -> Any:
    """The data of a YAML file (a recipe, bench's arms file); a syntax error, a tag or a key written twice is one
    line naming its place."""
    try:
        return load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{what} {path} is not valid YAML: {_yaml_problem(error)}.") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """'line 2, column 4 (while parsing a flow sequence): expected ',' or ']' ...' (counted from 1)."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem = " ".join((getattr(error, "problem", None) or str(error)).split())
    if isinstance(error, yaml.constructor.ConstructorError) and not isinstance(error, DuplicateKeyError):
        problem += " (only plain YAML data: tags such as !!python/... are not allowed)"
    mark, context, context_mark = (getattr(error, name, None) for name in ("problem_mark", "context", "context_mark"))
    if context and context_mark is not None:
        return f"{at(context_mark)} ({context}): {problem}" + (f" at {at(mark)}" if mark is not None else "")
    return f"{at(mark)}: {problem}" if mark is not None else problem


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """['--learning_rate', '1e-5', '--bf16=false'] -> {'learning_rate': '1e-5', 'bf16': 'false'}.

    Values stay text (the field's type converts them, so `--save_strategy no` stays the string "no"), except
    YAML flow collections (`[a, b]`, `{k: v}`) for a field that takes a list or a mapping, and `null` / `~` for a
    field that may be None: a `--prompt_template '{question} ...'` stays the text it is.
    """
    fields = _recipe_fields(recipe_dataclasses("grpo") + recipe_dataclasses("adpo"))
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise UserError(f"Expected '--field value' after the recipe, got '{token}'.")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise UserError(f"Override '--{key}' has no value.")
            value = argv[i + 1]
            i += 1
        key = key.replace("-", "_")
        # An unknown key keeps its text: validate() names it.
        overrides[key] = _override_value(key, value, fields.get(key, str))
        i += 1
    return overrides


def _override_value(key: str, text: str, annotation: Any) -> Any:
    """The value of `--key text` for a field of type `annotation`."""
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if is_union else (annotation,)
    collections = (list, tuple, dict)
    takes_collection = any(option is Any or option in collections or typing.get_origin(option) in collections
                           for option in options)
    stripped = text.strip()
    if stripped in ("null", "~") and (type(None) in options or Any in options):
        return None
    if stripped.startswith(("[", "{")) and takes_collection:
        try:
            return load_yaml(stripped)
        except yaml.YAMLError as error:
            problem = _yaml_problem(error)
            raise UserError(f"--{key} {text!r} is not a valid YAML list or mapping: {problem}.") from None
    return text


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a dataclass field type, converting the lossless cases (int->float, '1e-5'->1e-5)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ValueError as error:
                errors.append(str(error))
        raise UserError(errors[0] if errors else f"'{key}' cannot be None.")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise UserError(f"'{key}' must be one of {list(typing.get_args(annotation))}, got {value!r}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif not isinstance(value, list | tuple):
            value = [value] if not isinstance(value, dict) else value
        if not isinstance(value, list | tuple):
            raise UserError(f"'{key}' expects a list, got {value!r}.")
        args = typing.get_args(annotation)
        return [_coerce(key, v, args[0]) for v in value] if args else list(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise UserError(f"'{key}' expects a mapping, got {value!r}.")
        return value
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return value
    readers = {bool: to_bool, float: to_number, int: to_integer, str: lambda v: to_string(v, numbers_as_text=True)}
    if annotation in readers:
        try:
            return readers[annotation](value)
        except ValueKindError as error:
            expects = {"bool": "true/false", "number": "a number", "integer": "an integer", "string": "a string"}
            raise UserError(f"'{key}' expects {expects[error.expected]}, got {value!r}.") from None
    if isinstance(annotation, type) and issubclass(annotation, __import__("enum").Enum):
        try:
            return annotation(value)
        except ValueError:
            raise UserError(f"'{key}' must be one of {[e.value for e in annotation]}, got {value!r}.") from None
    return value


def _recipe_fields(dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """Field name -> type annotation, over the dataclasses (the first one to declare a name wins)."""
    fields: dict[str, Any] = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                fields.setdefault(f.name, hints.get(f.name, Any))
    return fields


# The smallest value of fields the libraries check only with a traceback deep in setup (torch's optimizer and batch
# sampler) or not at all (save_steps 0): refused with the field named. NaN is refused in every number field (no
# comparison holds for it, so it passes the libraries' own range checks and thermorl's config checks).
AT_LEAST = {"learning_rate": 0, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
            "per_device_eval_batch_size": 1}
ABOVE_ZERO = ("save_steps", "logging_steps", "eval_steps")


def _check_range(key: str, value: Any) -> None:
    if isinstance(value, float) and math.isnan(value):
        raise UserError(f"'{key}' must be a finite number, got nan.")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if key in AT_LEAST and value < AT_LEAST[key]:
        raise UserError(f"'{key}' must be at least {AT_LEAST[key]}, got {value:g}.")
    if key in ABOVE_ZERO and value <= 0:
        raise UserError(f"'{key}' must be more than 0 (a number of steps, or below 1 a share of the run), got "
                        f"{value:g}.")


def validate(values: dict[str, Any], dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """Reject unknown keys (with the closest valid names), values of the wrong type and values out of range."""
    fields = _recipe_fields(dataclass_types)
    checked = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UserError(f"Unknown recipe key '{key}'.{hint}")
        checked[key] = _coerce(key, value, fields[key])
        _check_range(key, checked[key])
    return checked


def resolve_recipe(recipe: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """Recipe file (or built-in name, or dict) plus overrides -> the validated values (what a run folder keeps in
    its thermorl_recipe.yaml)."""
    values = dict(recipe) if isinstance(recipe, dict) else read_recipe(recipe)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values.update(overrides or {})
    values = validate(values, recipe_dataclasses(values.get("trainer", "grpo")))
    values.setdefault("output_dir", "outputs/thermorl-run")
    return values


def load_recipe(recipe: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None):
    """Recipe file (or built-in name, or dict) plus overrides -> (ModelConfig, ThermoGRPOConfig, ThermoScriptArguments)."""
    return recipe_configs(resolve_recipe(recipe, overrides))


def recipe_configs(values: dict[str, Any]):
    """Values `resolve_recipe` returned -> (ModelConfig, ThermoGRPOConfig or ThermoADPOConfig, ThermoScriptArguments)."""
    from transformers import HfArgumentParser

    from .launch_checks import cpu_defaults
    from .recipe_inputs import check_model_takes_task

    values = {**cpu_defaults(values), **values}
    dataclass_types = recipe_dataclasses(values.get("trainer", "grpo"))
    # TRL's and transformers' own checks, e.g. generation_batch_size not divisible by num_generations.
    with refused_by_library("recipe"):
        model_args, *configs = HfArgumentParser(dataclass_types).parse_dict(values, allow_extra_keys=False)
    check_model_takes_task(model_args.model_name_or_path, configs[-1])
    # A built-in model name becomes its cached model folder here, so every later step (tokenizer, prompt-length and
    # output-folder checks, LoRA, vLLM) sees an ordinary folder; the run's saved recipe keeps the name.
    model_args.model_name_or_path = resolve_named_model(model_args.model_name_or_path)
    return (model_args, *configs)
