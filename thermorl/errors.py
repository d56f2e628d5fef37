"""Errors that are the user's to fix (a recipe, data, reward function, launch config or a full disk), not bugs.

The CLI prints a UserError's message on one line and exits with code 2, also with --debug (which adds the
traceback). Any other exception is a bug and keeps its traceback. Where user input reaches third-party code that
reports the mistake as a ValueError (TRL's config checks, datasets' file readers), the project converts it into a
UserError at that boundary.
"""

import argparse
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """Something the user must fix; its message names the field, file or function and what is wrong.

    A ValueError, so callers of the Python API that catch ValueError for bad arguments keep working.
    """


class DiskFullError(UserError, OSError):
    """A checkpoint could not be written because the disk is full; the message names the newest complete one."""


@contextmanager
def refusing_remote_code(model: str, how_to_allow: str, trusted: bool) -> Iterator[None]:
    """transformers' refusal to run the Python code a model folder ships (its config's `auto_map`), asked with
    trust_remote_code=False, as one line saying how to allow it. (With trust_remote_code unset, transformers asks
    "[y/N]" on a terminal instead, and `y` runs the code: every load passes it explicitly.) A local folder whose
    config has an `auto_map` but a model_type transformers knows is refused here too, unless `trusted`:
    transformers would load its own class for that type and ignore the folder's code without a word."""
    refusal = (f"model {model!r} ships its own Python code (auto_map in its config.json), which is not run unless "
               f"you trust it: {how_to_allow}.")
    if not trusted and ships_code(model):
        raise UserError(refusal)
    try:
        yield
    except ValueError as error:
        if isinstance(error, UserError) or "trust_remote_code=True" not in str(error):
            raise
        raise UserError(refusal) from None


def ships_code(model: str) -> bool:
    """Whether a local model folder's config.json or tokenizer_config.json names Python code (`auto_map`)."""
    import json
    from pathlib import Path

    folder = Path(model).expanduser()
    for name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("auto_map"):
            return True
    return False


class UserArgumentParser(argparse.ArgumentParser):
    """argparse for a thermorl subcommand: a wrong or missing option is a UserError (one line from the `thermorl`
    command, exit code 2), not the usage text followed by the message (`--help` shows the usage)."""

    def error(self, message: str):
        raise UserError(message)


@contextmanager
def refused_by_library(what: str) -> Iterator[None]:
    """A ValueError raised by TRL or transformers while they check the user's settings (a config's __post_init__, a
    trainer's __init__) reports the user's mistake: re-raised as the UserError "`what`: its message". One raised in
    thermorl's own code (or another library's) inside the block is a bug and keeps its traceback."""
    try:
        yield
    except UserError:
        raise
    except ValueError as error:
        if not _raised_in(error, ("trl.", "transformers.")):
            raise
        raise UserError(f"{what}: {error}") from error


def _raised_in(error: BaseException, modules: tuple[str, ...]) -> bool:
    """Whether the innermost frame of the error's traceback is in one of these modules."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_globals.get("__name__", "").startswith(modules)
