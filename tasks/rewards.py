"""Reward functions for user data: a generic math-verify reward and loading rewards by name or path.

A reward spec is a built-in name (see BUILTIN_REWARDS) or the path of a callable:
"package.module:function", "package.module.function", or "path/to/file.py:function".
"""

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .base import completion_text
from .verify import final_answer, gold_answer, math_verify_equal


def math_verify_reward(completions, answer=None, solution=None, **_) -> list[float]:
    """1.0 where math-verify finds the completion's final answer equal to the reference, else 0.0.

    The reference is the `answer` column (a recipe's `answer_column` is renamed to it; GSM8K's "... #### 72" and a
    MATH solution's last \\boxed{} are read as their answer) or, failing that, a `solution` column. The
    completion's answer is what follows its `<think>` block: the last \\boxed{}, else the text after a "####",
    else math-verify's lenient last answer in the text. A completion cut off while thinking scores 0.0.
    """
    references = answer if answer is not None else solution
    if references is None:
        raise UserError("math_verify needs an 'answer' or 'solution' column in the dataset (see answer_column).")
    scores = []
    for completion, gold in zip(completions, references, strict=True):
        answer_text = final_answer(completion_text(completion))
        scores.append(float(answer_text is not None and math_verify_equal(gold_answer(str(gold)), answer_text)))
    return scores


BUILTIN_REWARDS: dict[str, Callable[..., list[float]]] = {"math_verify": math_verify_reward}


# A reward path that does not resolve is the user's to fix (the CLI prints it on one line); the classes keep the
# standard exception types so callers may catch ImportError / AttributeError / TypeError as before.
class RewardModuleNotFound(UserError, ImportError):
    pass


class RewardAttributeNotFound(UserError, AttributeError):
    pass


class RewardNotCallable(UserError, TypeError):
    pass


def load_callable(path: str) -> Callable:
    """The callable named by "package.module:function", "package.module.function" or "file.py:function"."""
    if ":" in path:
        module_name, _, attribute = path.rpartition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise UserError(f"{path!r} is not of the form 'package.module:function' or 'package.module.function'")
    module = _import_file(module_name) if module_name.endswith(".py") else _import_module(module_name, path)
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardAttributeNotFound(f"{module_name!r} has no attribute {attribute!r} (from {path!r})")
        target = getattr(target, part)
    if not callable(target):
        raise RewardNotCallable(f"{path!r} is a {type(target).__name__}, not a callable")
    return target


def resolve_reward_funcs(specs: list[str]) -> list[Callable[..., list[float]]]:
    """Reward functions for built-in names and callable paths, in the given order."""
    funcs = []
    for spec in specs:
        if spec in BUILTIN_REWARDS:
            funcs.append(BUILTIN_REWARDS[spec])
        elif "." in spec or ":" in spec:
            funcs.append(load_callable(spec))
        else:
            raise UserError(
                f"unknown reward {spec!r}: not a built-in reward {sorted(BUILTIN_REWARDS)} "
                "nor a path 'package.module:function'"
            )
    return funcs


class RewardModuleFailed(UserError, ImportError):
    pass


def _import_module(module_name: str, path: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise RewardModuleNotFound(f"cannot import module {module_name!r} for {path!r}: {error}") from error
    except Exception as error:  # the user's module fails as it is imported: a syntax error, or code that raises
        raise RewardModuleFailed(_import_failure(f"reward module {module_name!r} (for {path!r})", error)) from error


def _import_file(file_name: str):
    file = Path(file_name).expanduser()
    if not file.is_file():
        raise UserError(f"reward file not found: {file_name}")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # as in _import_module
        raise RewardModuleFailed(_import_failure(f"reward file {file_name!r}", error)) from error
    return module


def _import_failure(what: str, error: Exception) -> str:
    """"reward file 'rewards.py' raised SyntaxError: invalid syntax (rewards.py, line 3) as it was imported": with
    the line of the user's code it failed at (a SyntaxError names it in its message)."""
    import traceback

    frames = [] if isinstance(error, SyntaxError) else traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    message = " ".join(str(error).split())
    return f"reward_funcs: {what} raised {type(error).__name__}: {message}{where} as it was imported"
