"""Built-in tasks by name, and the "name:key=value,key=value" spec syntax.

A spec such as "arithmetic:digits=3,ops=+-*" names a task and its options; values are read as
int, then float, then true/false, else kept as strings. Commas and "=" cannot appear in values.
"""

import dataclasses

from ..errors import UserError
from .arithmetic import ArithmeticTask
from .base import Task
from .chat import ChatArithmeticTask, ChatCountdownTask, WordProblemsTask
from .countdown import CountdownTask
from .countdown_steps import CountdownStepsTask

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (ArithmeticTask, CountdownTask, CountdownStepsTask, ChatArithmeticTask, WordProblemsTask,
                 ChatCountdownTask)
}


def get_task(name: str, **options) -> Task:
    """The built-in task `name` with its options, e.g. get_task("arithmetic", digits=3)."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    task_class = TASKS[name]
    valid = [field.name for field in dataclasses.fields(task_class)]
    for option in options:
        if option not in valid:
            raise UserError(f"unknown option {option!r} for task {name!r}; valid options: {valid}")
    return task_class(**options)


def parse_task_spec(spec: str) -> tuple[str, dict[str, object]]:
    """"arithmetic:digits=3,ops=+-" -> ("arithmetic", {"digits": 3, "ops": "+-"})."""
    name, _, option_text = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, option_text.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise UserError(f"task option {item!r} in {spec!r} is not of the form key=value")
        options[key.strip()] = _parse_value(value.strip())
    return name.strip(), options


def task_from_spec(spec: str) -> Task:
    name, options = parse_task_spec(spec)
    return get_task(name, **options)


def _parse_value(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text
