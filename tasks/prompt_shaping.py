"""Prompts shaped for the model (`shape_prompts`): a `prompt_template` rendered from each row's columns, a
`system_prompt`, string prompts made conversational when either is set, and the answer column renamed to "answer"."""

from __future__ import annotations

import re

from datasets import Dataset

from ..errors import UserError

def is_conversational_prompt(prompt) -> bool:
    """A list of {"role", "content"} messages (TRL's conversational format) rather than a string."""
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


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
