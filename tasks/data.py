"""Prompt datasets from a built-in task, a local file or folder, or the Hugging Face Hub.

`source` is read in this order:
1. a built-in task spec, "arithmetic" or "countdown:num_numbers=4,max_number=9" (see registry);
   split "train" gives the training rows, any other split the disjoint held-out rows;
2. a local file ending in .jsonl, .json, .parquet or .csv;
3. otherwise a Hub dataset name or a local dataset folder (a hub repo's layout: data files, and a README.md whose
   YAML header lists its `configs`), loaded with `datasets.load_dataset(source, config, split=split)`.

Then the prompts are shaped for the model (`shape_prompts`, prompt_shaping.py): a `prompt_template` such as
"{question}\\nPut your final answer within \\boxed{}." renders each row's columns into the prompt, and a template or
a `system_prompt` makes string prompts conversational ([{"role": "system", ...}, {"role": "user", ...}]), so TRL
renders them with the model's chat template. The reference answer column is renamed to "answer", the name
reward functions receive it under.

Every row of a file or Hub dataset is checked as it loads (`check_rows`, rows.py), so `thermorl train`, `check` and
`eval` refuse the same rows with one line naming the dataset, row (1-based) and column; prompt_lengths.py refuses
prompts longer than the model has room for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
from datasets import Dataset, get_dataset_config_names, load_dataset
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError
from pyarrow.lib import ArrowException

from ..errors import UserError
from .prompt_shaping import shape_prompts
from .registry import TASKS, task_from_spec
from .rows import check_rows

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
