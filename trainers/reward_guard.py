"""Reward functions that fail loudly.

TRL turns a reward of None or NaN into NaN in its float32 reward tensor, sums the reward functions ignoring NaN
and zeroes non-finite advantages, so a reward function that breaks quietly would stop completions from teaching
anything while the run reports success. Here every synchronous reward function is checked on every batch, and
training stops with an error naming the function and an example when it:

- raises;
- returns something other than one reward per completion (a scalar, a string, a list of the wrong length);
- returns a reward that is not a number (a string such as "1.0"), or NaN or inf;
- returns a reward too large for TRL's float32 statistics: |r| above RANGE, whose square (in the group's standard
  deviation) overflows float32, so 1e308 cannot become inf and then NaN advantages;
- returns None (TRL's "not applicable to this example") for an example for which every other reward function
  returns None too: that example would get a reward of 0 that nobody computed.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable

from ..errors import UserError

# sqrt(float32 max): larger rewards overflow when TRL squares them for the group standard deviation.
RANGE = math.sqrt(3.4028234663852886e38)


class RewardFunctionError(UserError, RuntimeError):
    """A reward function raised, or returned something that is not a usable reward, on a named example."""


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


def check_rewards(name: str, rewards, prompts, completions) -> list[int]:
    """Raise RewardFunctionError if `rewards` is not one usable reward per completion; returns the indices of None."""
    if isinstance(rewards, str | bytes | dict) or not hasattr(rewards, "__len__") or not hasattr(rewards, "__iter__"):
        raise RewardFunctionError(
            f"Reward function '{name}' returned {type(rewards).__name__} {rewards!r:.80}; it must return a list with "
            f"one reward per completion ({len(completions)} here), e.g. [1.0, 0.0, ...]."
        )
    if len(rewards) != len(completions):
        raise RewardFunctionError(
            f"Reward function '{name}' returned {len(rewards)} rewards for {len(completions)} completions; it must "
            "return one per completion."
        )
    missing = []
    for i, reward in enumerate(rewards):
        if reward is None:
            missing.append(i)
            continue
        if hasattr(reward, "item") and getattr(reward, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
            reward = reward.item()
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
            raise RewardFunctionError(
                f"Reward function '{name}' returned {reward!r} ({type(reward).__name__}) for "
                f"{_describe(i, prompts, completions)}; rewards must be numbers (or None for 'not applicable')."
            )
        if not math.isfinite(reward) or abs(reward) > RANGE:
            limit = "" if not math.isfinite(reward) else f" and at most {RANGE:.2g} in size (TRL's float32 statistics)"
            raise RewardFunctionError(
                f"Reward function '{name}' returned {reward} for {_describe(i, prompts, completions)}; rewards must "
                f"be finite{limit} (return None for 'not applicable')."
            )
    return missing


def _checkable(func) -> bool:
    return callable(func) and not inspect.iscoroutinefunction(func) and not hasattr(func, "forward")


def guard_reward_func(func: Callable, on_checked: Callable | None = None) -> Callable:
    """Wrap one synchronous reward function; models, hub ids and async functions are returned unchanged.
    `on_checked(name, none_indices, prompts, completions)` is called after each checked batch."""
    if not _checkable(func):
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
        missing = check_rewards(name, rewards, prompts, completions)
        if on_checked is not None:
            on_checked(name, missing, prompts, completions)
        return rewards

    return guarded


def guard_reward_funcs(funcs: list) -> list:
    """Guard each function, and refuse a batch in which some example gets None from every reward function.

    TRL calls the synchronous reward functions one after another on the same batch, so the examples that every one
    of them left without a reward are known when the last one returns. A reward model or an async function always
    gives a reward (or is not checked here), so with one of those in the list no example can end up without one.
    """
    if not all(_checkable(f) for f in funcs):
        return [guard_reward_func(f) for f in funcs]
    batch: dict = {"names": [], "missing": set()}

    def on_checked(name, missing, prompts, completions):
        if not batch["names"]:
            batch["missing"] = set(missing)
        else:
            batch["missing"] &= set(missing)
        batch["names"].append(name)
        if len(batch["names"]) < len(funcs):
            return
        names = ", ".join(f"'{n}'" for n in batch["names"])
        batch["names"] = []
        if batch["missing"]:
            i = min(batch["missing"])
            raise RewardFunctionError(
                f"Reward function{'s' if len(funcs) > 1 else ''} {names} returned None for "
                f"{_describe(i, prompts, completions)} ({len(batch['missing'])} of {len(completions)} completions): "
                "an example needs a reward from at least one function, or it trains with a reward of 0."
            )

    return [guard_reward_func(f, on_checked) for f in funcs]
