"""Prompt datasets from a built-in task, a local file, or the Hugging Face Hub.

`source` is read in this order:
1. a built-in task spec, "arithmetic" or "countdown:num_numbers=4,max_number=9" (see registry);
   split "train" gives the training rows, any other split the disjoint held-out rows;
2. a local file ending in .jsonl, .json, .parquet or .csv;
3. otherwise a Hub dataset name, loaded with `datasets.load_dataset(source, split=split)`.
"""

from pathlib import Path

from datasets import Dataset, load_dataset

from .registry import TASKS, task_from_spec

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompt_dataset(
    source: str,
    split: str = "train",
    prompt_column: str = "prompt",
    n_train: int = 2000,
    n_eval: int = 200,
    seed: int = 0,
) -> Dataset:
    """Dataset with a "prompt" column (renamed from `prompt_column`) and the source's other columns.

    n_train, n_eval and seed size and seed the rows of a built-in task; files and Hub data ignore them.
    """
    if source.partition(":")[0].strip() in TASKS:
        train, held_out = task_from_spec(source).make_splits(n_train, n_eval, seed)
        dataset = train if split == "train" else held_out
    elif Path(source).suffix.lower() in LOCAL_BUILDERS:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {source}")
        builder = LOCAL_BUILDERS[path.suffix.lower()]
        dataset = load_dataset(builder, data_files={split: str(path)}, split=split)
    else:
        dataset = load_dataset(source, split=split)
    return _with_prompt_column(dataset, prompt_column, source)


def _with_prompt_column(dataset: Dataset, prompt_column: str, source: str) -> Dataset:
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"dataset {source!r} has no column {prompt_column!r}; its columns are {dataset.column_names}"
        )
    if prompt_column == "prompt":
        return dataset
    if "prompt" in dataset.column_names:
        raise ValueError(
            f"dataset {source!r} has both {prompt_column!r} and 'prompt' columns; "
            "remove or rename 'prompt' before using prompt_column"
        )
    return dataset.rename_column(prompt_column, "prompt")
