"""A data file's or hub dataset's rows checked as they load (`check_rows`): every prompt, template column and answer
present, of the right kind and valid UTF-8, or one line naming the dataset, row (1-based) and column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from datasets.features.features import require_decoding

from ..errors import UserError
from .prompt_shaping import is_conversational_prompt, template_columns


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
        values = python_values(dataset, column)
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


def python_values(dataset: Dataset, column: str) -> list:
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
