"""Verifiable tasks, prompt datasets and reward functions for thermorl."""

from .arithmetic import ArithmeticTask
from .base import Task, completion_text
from .countdown import CountdownTask
from .countdown_steps import CountdownStepsTask
from .data import load_prompt_dataset
from .registry import TASKS, get_task, parse_task_spec, task_from_spec
from .rewards import BUILTIN_REWARDS, load_callable, math_verify_reward, resolve_reward_funcs

__all__ = [
    "ArithmeticTask",
    "BUILTIN_REWARDS",
    "CountdownStepsTask",
    "CountdownTask",
    "TASKS",
    "Task",
    "completion_text",
    "get_task",
    "load_callable",
    "load_prompt_dataset",
    "math_verify_reward",
    "parse_task_spec",
    "resolve_reward_funcs",
    "task_from_spec",
]
