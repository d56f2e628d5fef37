"""Reward functions that fail loudly.

TRL turns a reward of NaN into a zero advantage, so a reward function that breaks on one completion would
silently stop that completion from teaching anything. Here a function that raises, or returns NaN or inf, stops
training with an error naming the function and the example it failed on.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned a non-finite reward, on a named example."""


def _describe(index: int, prompts, completions) -> str:
    return f"example {index} (prompt={prompts[index]!r}, completion={completions[index]!r})"


def _locate_failure(func, prompts, completions, kwargs) -> tuple[int, BaseException] | None:
    """Call `func` one example at a time to find the first example it raises on."""
    for i in range(len(prompts)):
        row_kwargs = {k: v[i : i + 1] if isinstance(v, list) and len(v) == len(prompts) else v for k, v in kwargs.items()}
        try:
            func(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **row_kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised below with the example named
            return i, error
    return None


def guard_reward_func(func: Callable) -> Callable:
    """Wrap one synchronous reward function; models, hub ids and async functions are returned unchanged."""
    if not callable(func) or inspect.iscoroutinefunction(func) or hasattr(func, "forward"):
        return func
    name = getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def guarded(prompts, completions, **kwargs):
        try:
            rewards = func(prompts=prompts, completions=completions, **kwargs)
        except Exception as error:
            failure = _locate_failure(func, prompts, completions, kwargs)
            where = _describe(failure[0], prompts, completions) if failure else f"a batch of {len(prompts)} examples"
            raise RewardFunctionError(
                f"Reward function '{name}' raised {type(error).__name__}: {error} on {where}."
            ) from error
        for i, reward in enumerate(rewards):
            # None is TRL's "not applicable to this example"; a NaN or inf float is a bug in the function.
            if reward is not None and not math.isfinite(float(reward)):
                raise RewardFunctionError(
                    f"Reward function '{name}' returned {reward} for {_describe(i, prompts, completions)}; "
                    "rewards must be finite (return None for 'not applicable')."
                )
        return rewards

    return guarded
