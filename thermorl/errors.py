"""Errors that are the user's to fix (a recipe, data, reward function, launch config or a full disk), not bugs.

The CLI prints a UserError's message on one line and exits with code 2; ValueError and FileNotFoundError, which the
recipe and dataset checks raise, are treated the same way. Any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user must fix; its message names the field, file or function and what is wrong."""


class DiskFullError(UserError, OSError):
    """A checkpoint could not be written because the disk is full; the message names the newest complete one."""
