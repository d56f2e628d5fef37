"""Prompt datasets from a built-in task, a local file or folder, or the Hugging Face Hub.

`source` is read in this order:
1. a built-in task spec, "arithmetic" or "countdown:num_numbers=4,max_number=9" (see registry);
   split "train" gives the training rows, any other split the disjoint held-out rows;
2. a local file ending in .jsonl, .json, .parquet or .csv;
3. otherwise a Hub dataset name or a local dataset folder (a hub repo's layout: data files, and a README.md whose
   YAML header lists its `configs`), loaded with `datasets.load_dataset(source, config, split=split)`.

Then the prompts are shaped for the model (`shape_prompts`): a `prompt_template` such as
"{question}\\nPut your final answer within \\boxed{}." renders each row's columns into the prompt, and a template or
a `system_prompt` makes string prompts conversational ([{"role": "system", ...}, {"role": "user", ...}]), so TRL
renders them with the model's chat template. The reference answer column is renamed to "answer", the name
reward functions receive it under.

Every row of a file or Hub dataset is checked as it loads (`check_rows`), so `thermorl train`, `check` and `eval`
refuse the same rows with one line naming the dataset, row (1-based) and column; `check_prompt_lengths` refuses
prompts longer than the model has room for.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, get_dataset_config_names, load_dataset
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError
from datasets.features.features import require_decoding
from pyarrow.lib import ArrowException

from ..errors import UserError
from .registry import TASKS, task_from_spec

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompt_dataset(
    source: str,
    split: str = "train",
    prompt_column: str | None = "prompt",
    n_train: int = 2000,
    n_eval: int = 200,
    seed: int = 0,
    *,
    config: str | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    answer_column: str | None = None,
) -> Dataset:
    """Dataset with a "prompt" column (renamed from `prompt_column`, or rendered from `prompt_template`) and the
    source's other columns; see `shape_prompts`.

    n_train, n_eval and seed size and seed the rows of a built-in task; files and Hub data ignore them.
    """
    if source.partition(":")[0].strip() in TASKS:
        if config is not None:
            raise UserError(f"dataset_config {config!r} is for hub datasets; '{source}' is a built-in task")
        train, held_out = task_from_spec(source).make_splits(n_train, n_eval, seed)
        dataset = train if split == "train" else held_out
    elif Path(source).suffix.lower() in LOCAL_BUILDERS:
        dataset = _load_file(source, split)
    else:
        dataset = _load_hub(source, config, split)
    if len(dataset) == 0:
        raise UserError(f"dataset {source!r} (split {split!r}) has no rows")
    if source.partition(":")[0].strip() not in TASKS:  # a built-in task's rows are generated well-formed
        check_rows(dataset, source, prompt_column, prompt_template, answer_column)
    return shape_prompts(dataset, source, prompt_column, prompt_template, system_prompt, answer_column)


def _load_file(source: str, split: str) -> Dataset:
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"dataset file not found: {source}")
    if not path.read_bytes().strip():
        raise UserError(f"dataset file {source} is empty: it needs one row per prompt")
    try:
        return load_dataset(LOCAL_BUILDERS[path.suffix.lower()], data_files={split: str(path)}, split=split)
    except (DatasetGenerationError, ArrowException, ValueError) as error:
        # datasets wraps the reader's own message (the row or byte that is wrong) in a generic one; for JSON the
        # reader's message can name only a byte position, so the line is found here.
        cause = error.__cause__ or error
        problem = _json_problem(path) if LOCAL_BUILDERS[path.suffix.lower()] == "json" else None
        message = " ".join(str(cause).split())
        raise UserError(f"dataset file {source} cannot be read: {problem or f'{type(cause).__name__}: {message}'}"
                        ) from error


def _json_problem(path: Path) -> str | None:
    """Where a JSON or JSON Lines file is not valid: a JSON document (starting with '[' or '{' and spanning lines)
    as a whole, else each line as one row; None when every line is a JSON object."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("[") or path.suffix.lower() == ".json" and text.count("\n") <= 1:
        try:
            json.loads(text)
        except ValueError as error:
            return f"not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            return (f"line {number} is not valid JSON (column {error.colno}: {error.msg}); each line must be one JSON "
                    "object")
        if not isinstance(row, dict):
            return (f"line {number} is a JSON {type(row).__name__}, not an object; each line must be one JSON object "
                    "(a row)")
    return None


def local_folder_cache_dir(folder: Path) -> str:
    """A datasets cache folder keyed by the state (name, size, mtime) of every file in a local dataset folder.

    datasets keys its Arrow cache of a local folder by the folder's path only, so after the files change it keeps
    returning the old rows (and with download_mode="force_redownload" it fails on its stale split sizes)."""
    state = sorted(
        (str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*") if path.is_file()
    )
    key = hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "thermorl-local-folders" / key)


def _load_hub(source: str, config: str | None, split: str) -> Dataset:
    """`datasets.load_dataset(source, config, split=split)`, its config and split errors restated with the field."""
    folder = Path(source).expanduser()
    cache_dir = local_folder_cache_dir(folder) if folder.is_dir() else None
    try:
        return load_dataset(source, config, split=split, cache_dir=cache_dir)
    except ValueError as error:
        message = str(error)
        if "Config name is missing" in message or "BuilderConfig" in message:
            available = get_dataset_config_names(source)
            what = "is missing" if config is None else f"{config!r} is not one of its configs"
            raise UserError(
                f"dataset_config {what}: dataset {source!r} has configs {available}; set dataset_config to one"
            ) from None
        if "Unknown split" in message:
            raise UserError(f"dataset_split {split!r}: {message}") from None
        raise
    except ConnectionError as error:
        raise UserError(
            f"dataset {source!r}: {_not_local(source)}{error}; offline, point dataset at a local copy (a data file, or "
            "the repo's folder from `hf download --repo-type dataset`)"
        ) from None
    except DatasetNotFoundError as error:
        raise UserError(f"dataset {source!r}: {_not_local(source)}{' '.join(str(error).split())}") from None


def _not_local(source: str) -> str:
    """What a dataset name that reached the Hub is not, so that a typo of a task or file is seen as one."""
    return (f"not a built-in task ({', '.join(sorted(TASKS))}), a data file ({', '.join(LOCAL_BUILDERS)}) or a local "
            "folder; as a hub dataset: ")


def is_conversational_prompt(prompt) -> bool:
    """A list of {"role", "content"} messages (TRL's conversational format) rather than a string."""
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def check_rows(
    dataset: Dataset,
    source: str,
    prompt_column: str | None = "prompt",
    prompt_template: str | None = None,
    answer_column: str | None = None,
) -> None:
    """Refuse a row TRL could not train on, naming it: text that is not valid UTF-8 (in any column); a
    prompt that is null, empty, a number, a list that is not a conversation, or of the other kind than row 1 (a
    string among conversations); a null in a column the prompt_template fills in; a null reference answer.

    One pass over Arrow data: about 0.1 s for 100k string prompts."""
    _check_utf8(dataset, source)
    if prompt_template is not None:
        for column in template_columns(prompt_template):
            _check_no_nulls(dataset, source, column, "null, which the prompt_template would render as 'None'")
    elif (prompt_column or "prompt") in dataset.column_names:  # a missing column is shape_prompts' error
        column = prompt_column or "prompt"
        values = _python_values(dataset, column)
        conversational = is_conversational_prompt(values[0])
        for row, value in enumerate(values):
            problem = _prompt_problem(value, conversational)
            if problem:
                raise UserError(f"{_where(source, row, column)}: {problem}")
    answer = answer_column or "answer"
    if answer in dataset.column_names:
        _check_no_nulls(dataset, source, answer, "no reference answer (null)")


def _where(source: str, row: int, column: str) -> str:
    return f"dataset '{source}' row {row + 1} (1-based), column '{column}'"


def _python_values(dataset: Dataset, column: str) -> list:
    """A column's values as Python objects: straight from Arrow (fast), or through datasets' decoding for features
    that need it (a column of mixed types is stored as JSON text)."""
    if require_decoding(dataset.features[column]):
        return list(dataset[column])
    return dataset.with_format("arrow")[column].to_pylist()  # the rows selected, in order


def _prompt_problem(value, conversational: bool) -> str | None:
    if value is None:
        return "no prompt (null)"
    if isinstance(value, str):
        if conversational:
            return "a string prompt, but row 1 is a conversation: every prompt must be the same kind"
        return None if value.strip() else "empty prompt"
    if isinstance(value, list) and is_conversational_prompt(value):
        if not conversational:
            return "a conversation, but row 1 is a string prompt: every prompt must be the same kind"
        if not value:
            return "empty conversation (no messages)"
        for number, message in enumerate(value, start=1):
            if message.get("content") is None:
                return f"message {number} ({message.get('role')!r}) has no content"
        return None
    return (f"{type(value).__name__} {_shortened(value)} where a string prompt or a conversation "
            "(a list of {'role', 'content'} messages) is expected")


def _shortened(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_no_nulls(dataset: Dataset, source: str, column: str, problem: str) -> None:
    if column not in dataset.column_names:
        return
    values = dataset.with_format("arrow")[column]
    if values.null_count:
        row = pc.index(values.is_null(), True).as_py()
        raise UserError(f"{_where(source, row, column)}: {problem}")


def _check_utf8(dataset: Dataset, source: str) -> None:
    """datasets' json and csv readers store an invalid byte as it is; it would fail as the trainer reads that row,
    steps into training, without naming it. Arrow's full validation finds it at once; only then are the rows of
    the bad chunk decoded one by one to name the row. (The rows as loaded: no selection of rows applies.)"""
    table = dataset.data.table
    try:
        table.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    for column in table.column_names:
        offset = 0
        for chunk in table.column(column).chunks:
            try:
                chunk.validate(full=True)
            except pa.ArrowInvalid:
                for index in range(len(chunk)):
                    try:
                        chunk[index].as_py()
                    except UnicodeDecodeError as error:
                        byte = error.object[error.start: error.start + 1].hex()
                        raise UserError(
                            f"{_where(source, offset + index, column)}: not valid UTF-8 (byte 0x{byte} at byte "
                            f"{error.start} of the value: {error.reason}); save the file as UTF-8"
                        ) from None
            offset += len(chunk)


def prompt_text(prompt: Any, tokenizer, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """The prompt text the model is given: a string as it is; a conversation (list of messages) through the chat
    template as TRL's GRPOTrainer renders it (add_generation_prompt, and the recipe's chat_template_kwargs)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(message, dict) for message in prompt):
        return tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
    raise UserError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}: {prompt!r:.80}")


def prompt_token_ids(prompt: Any, tokenizer, chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """The token ids TRL's GRPOTrainer generates from (GRPOTrainer._tokenize_prompts): a conversation through the
    chat template, which writes any start token itself, tokenized without adding special tokens (as
    apply_chat_template(tokenize=True) does); a string tokenized with the tokenizer's special tokens, as TRL's
    processing_class(text=...) call does (a Llama-style tokenizer's BOS)."""
    text = prompt_text(prompt, tokenizer, chat_template_kwargs)
    return tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]


# Tokens a chat template or special token may add beyond the ones measured on row 1 (see check_prompt_lengths).
_TEMPLATE_SLACK_TOKENS = 32


def check_prompt_lengths(
    dataset: Dataset,
    source: str,
    tokenizer,
    max_positions: int | None,
    completion_tokens: int,
    completion_field: str,
    chat_template_kwargs: dict | None = None,
) -> None:
    """Refuse prompts that leave no room for `completion_tokens` in the model's `max_positions`, naming the first
    such row and how many there are. TRL 1.16 has no max_prompt_length and does not truncate prompts: such a prompt
    would run the model past its positions (a 100k-character one is killed for memory, with no message).

    Cheap on big datasets: a token covers at least one byte of text (byte-level BPE, SentencePiece with byte
    fallback, character vocabularies), so only rows whose text is longer in bytes than the room left, less the
    chat template's tokens measured on row 1, are rendered and tokenized."""
    if max_positions is None:
        return
    room = max_positions - completion_tokens
    if room <= 0:
        raise UserError(f"{completion_field} {completion_tokens} leaves no room for a prompt in the model's "
                        f"{max_positions} positions (max_position_embeddings)")
    prompts = _python_values(dataset, "prompt")
    if not prompts:
        return

    def tokens(rows: list[int]) -> list[int]:
        if not rows:
            return []
        texts = [prompt_text(prompts[row], tokenizer, chat_template_kwargs) for row in rows]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def contents(prompt) -> list[str]:
        return [prompt] if isinstance(prompt, str) else [str(message.get("content") or "") for message in prompt]

    def text_bytes(prompt) -> int:
        return sum(len(text.encode()) for text in contents(prompt))

    # The chat template's own tokens: row 1 as the model sees it, less its messages' text tokenized alone.
    content_tokens = sum(len(ids) for ids in tokenizer(contents(prompts[0]), add_special_tokens=False)["input_ids"])
    template_tokens = max(tokens([0])[0] - content_tokens, 0) + _TEMPLATE_SLACK_TOKENS
    candidates = [row for row, prompt in enumerate(prompts) if text_bytes(prompt) + template_tokens > room]
    too_long = [(row, length) for row, length in zip(candidates, tokens(candidates)) if length > room]
    if too_long:
        row, length = too_long[0]
        raise UserError(
            f"dataset '{source}' row {row + 1} (1-based): the prompt, as the model sees it, is {length} tokens; with "
            f"{completion_field} {completion_tokens} that is {length + completion_tokens}, more than the model's "
            f"{max_positions} positions (max_position_embeddings); {len(too_long)} of {len(prompts)} prompts are too "
            f"long, and prompts are not truncated: shorten or drop them, or lower {completion_field}"
        )


# "{column}" is a placeholder; any other brace is literal ("\boxed{}", "\frac{1}{2}" stay as written, except that a
# brace around a bare word is a placeholder: write "{{word}}" for a literal "{word}").
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_columns(prompt_template: str) -> list[str]:
    """Column names a prompt template refers to: "{question} ({level})" -> ["question", "level"]."""
    return [match.group(1) for match in _PLACEHOLDER.finditer(prompt_template) if match.group(1)]


def render_template(prompt_template: str, row) -> str:
    """The template with each "{column}" replaced by the row's value ("{{" and "}}" give literal braces)."""
    def replace(match):
        return str(row[match.group(1)]) if match.group(1) else match.group(0)[0]

    return _PLACEHOLDER.sub(replace, prompt_template)


def shape_prompts(
    dataset: Dataset,
    source: str,
    prompt_column: str | None = "prompt",
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    answer_column: str | None = None,
) -> Dataset:
    """The "prompt" column the trainer reads, and the "answer" column rewards read.

    - `prompt_template` set: prompt = the template with each row's {column} filled in, made a user message;
      `prompt_column` must be unset.
    - else the `prompt_column` (default "prompt") is renamed to "prompt", strings kept as they are.
    - `system_prompt` set: a system message before the user message; refused when the dataset's conversations
      already start with one.
    - `answer_column` set: renamed to "answer".
    """
    columns = dataset.column_names
    if prompt_template is not None:
        if prompt_column not in (None, "prompt"):
            raise UserError("set prompt_template or prompt_column, not both: the template names the columns it uses")
        missing = [name for name in template_columns(prompt_template) if name not in columns]
        if missing:
            raise UserError(
                f"prompt_template names column(s) {missing} that dataset {source!r} lacks; its columns are {columns}"
            )
        dataset = dataset.map(lambda row: {"prompt": render_template(prompt_template, row)})
    else:
        dataset = _renamed(dataset, prompt_column or "prompt", "prompt", "prompt_column", source)
    if answer_column is not None:
        dataset = _renamed(dataset, answer_column, "answer", "answer_column", source)

    first = dataset[0]["prompt"]
    conversational = is_conversational_prompt(first)
    if conversational and prompt_template is not None:
        raise UserError(f"prompt_template renders string prompts, but dataset {source!r} is conversational")
    if conversational and system_prompt is not None:
        if any(prompt and prompt[0].get("role") == "system" for prompt in dataset["prompt"]):
            raise UserError(
                f"system_prompt: dataset {source!r} already has a system message in its conversations; "
                "remove one of the two"
            )
        system = {"role": "system", "content": system_prompt}
        return dataset.map(lambda row: {"prompt": [system, *row["prompt"]]})
    if not conversational and (prompt_template is not None or system_prompt is not None):
        if not isinstance(first, str):
            raise UserError(f"dataset {source!r}: prompts must be strings or conversations, got {type(first).__name__}")
        head = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        return dataset.map(lambda row: {"prompt": [*head, {"role": "user", "content": row["prompt"]}]})
    return dataset


def _renamed(dataset: Dataset, column: str, target: str, field_name: str, source: str) -> Dataset:
    if column not in dataset.column_names:
        raise UserError(
            f"{field_name}: dataset {source!r} has no column {column!r}; its columns are {dataset.column_names}"
        )
    if column == target:
        return dataset
    if target in dataset.column_names:
        raise UserError(
            f"{field_name}: dataset {source!r} has both {column!r} and {target!r} columns; "
            f"remove or rename {target!r} before using {field_name}"
        )
    return dataset.rename_column(column, target)
