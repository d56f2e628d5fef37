"""Errors that are the user's to fix (a recipe, data, reward function, launch config or a full disk), not bugs.

The CLI prints a UserError's message on one line and exits with code 2, also with --debug (which adds the
traceback). Any other exception is a bug and keeps its traceback. Where user input reaches third-party code that
reports the mistake as a ValueError (TRL's config checks, datasets' file readers), the project converts it into a
UserError at that boundary.
"""


class UserError(ValueError):
    """Something the user must fix; its message names the field, file or function and what is wrong.

    A ValueError, so callers of the Python API that catch ValueError for bad arguments keep working.
    """


class DiskFullError(UserError, OSError):
    """A checkpoint could not be written because the disk is full; the message names the newest complete one."""
