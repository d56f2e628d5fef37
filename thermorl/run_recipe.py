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


# What a resumed run may change. The checkpoint carries the run's model, optimizer, scheduler and data order; any
# other field it was started with shapes what is trained, so resuming with a new value would either be ignored or
# mix two runs in one. One rule: a resumed run keeps the saved value of every field but those below.
FREE_ON_RESUME = frozenset({
    # how long it runs (extending a run is what resuming is for)
    "max_steps", "num_train_epochs",
    # where it writes and what it reports
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "logging_steps", "logging_strategy",
    "logging_first_step", "save_steps", "save_strategy", "save_total_limit", "save_only_model",
    "report_to", "run_name", "disable_tqdm", "log_level", "log_completions", "num_completions_to_print",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo",
    # how it computes, not what
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "gradient_checkpointing", "per_device_eval_batch_size", "eval_strategy", "eval_steps",
})
# Fields the checkpoint's optimizer and scheduler state set when they are loaded: a new value would not be used.
OPTIMIZER_STATE_FIELDS = frozenset({
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "optim_args",
})


def _resolved_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Every field's value once the configs are built (defaults, and what TRL resolves in __post_init__, such as
    bf16 left unset), so that a recipe that omits a field compares equal to one that spells out its value."""
    import dataclasses

    from .recipe import load_recipe

    settings: dict[str, Any] = {}
    for config in load_recipe(values):
        for field in dataclasses.fields(config):
            if field.init:
                settings.setdefault(field.name, _plain(getattr(config, field.name)))
    return settings


def changes_on_resume(saved: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The fields a resumed run would change against its saved recipe, outside FREE_ON_RESUME, each described as
    'learning_rate 5e-05 (now 0.001: ...)'. Fields are compared as the configs resolve them."""
    old_settings, new_settings = _resolved_settings(saved), _resolved_settings(values)
    changed = []
    for name in dict.fromkeys([*saved, *values]):
        if name in FREE_ON_RESUME:
            continue
        old, new = old_settings.get(name), new_settings.get(name)
        if old != new:
            why = ("the checkpoint's optimizer and scheduler state sets it" if name in OPTIMIZER_STATE_FIELDS
                   else "it changes what is trained")
            changed.append(f"{name} {old!r} (now {new!r}: {why})")
    return changed


def check_resume_settings(checkpoint: str, values: dict[str, Any] | None) -> str | None:
    """Refuse a resume whose settings differ from the run's saved recipe (see FREE_ON_RESUME); returns a note when
    they cannot be compared, else None."""
    from .errors import UserError

    saved_path = find_run_recipe(checkpoint)
    if saved_path is None or values is None:
        missing = f"no {RUN_RECIPE_FILE} beside {checkpoint}" if saved_path is None else "no recipe given to train()"
        return (f"Resuming {checkpoint}: {missing}, so this run's settings cannot be compared with the ones it was "
                "started with; going on with the ones given.")
    changed = changes_on_resume(yaml.safe_load(saved_path.read_text()), values)
    if changed:
        raise UserError(
            f"resume_from_checkpoint '{checkpoint}': the run was started with other settings, which a resumed run "
            f"cannot change: {'; '.join(changed)}. Resume with the run's values ({saved_path}), or start a new run in "
            "another output_dir to change them."
        )
    return None
