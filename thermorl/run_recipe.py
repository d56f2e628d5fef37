"""The recipe a run was started with, kept in its output folder as `thermorl_recipe.yaml`.

It holds the validated recipe values (the file's keys with the command-line overrides applied), not every field's
default: read back through `load_recipe` it resolves to the same settings. Resuming compares against it, and
`thermorl eval` rebuilds the training prompts, template and reward from it.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import yaml

RUN_RECIPE_FILE = "thermorl_recipe.yaml"


def _plain(value: Any) -> Any:
    """Enum members (HF's IntervalStrategy, ...) as their values, containers recursively: plain YAML data."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def write_run_recipe(output_dir: str | Path, values: dict[str, Any]) -> Path:
    path = Path(output_dir) / RUN_RECIPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# The recipe this run was started with (overrides applied): thermorl train / eval read it back.\n"
        + yaml.safe_dump(_plain(values), sort_keys=False)
    )
    return path


def find_run_recipe(folder: str | Path) -> Path | None:
    """The saved recipe of the run a folder belongs to: the run's output_dir, or one of its checkpoint-N folders."""
    for candidate in (Path(folder), Path(folder).parent):
        if (candidate / RUN_RECIPE_FILE).is_file():
            return candidate / RUN_RECIPE_FILE
    return None


def read_run_recipe(folder: str | Path) -> dict[str, Any] | None:
    """The saved recipe values of the run `folder` belongs to, or None if it has none."""
    path = find_run_recipe(folder)
    return None if path is None else yaml.safe_load(path.read_text())
