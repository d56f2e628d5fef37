"""`thermorl train RECIPE --accelerate_config CONFIG [--num_processes N ...]`: accelerate's launcher, run by thermorl.

`accelerate launch -m thermorl train RECIPE` works too, but when a worker stops on a user mistake (one line, exit
code 2) accelerate and torch's elastic agent then print their own tracebacks and exit 1. Launched from here, the
recipe's keys and value types are checked before any worker starts (a mistake there is one line and nothing
starts), and a worker's exit code 2 (the first worker to fail, when several do) is the launch's exit code 2 with
nothing printed after the worker's line. Any other failure (a bug, a killed worker) still shows everything the
launcher reports. --debug and --verbose reach the workers through THERMORL_DEBUG / THERMORL_VERBOSE. A
`thermorl:tiny` recipe is warmed up here, once, before the workers start (they find it cached).
"""

from __future__ import annotations

import logging
import subprocess
from importlib import resources
from pathlib import Path

from .errors import UserError

CONFIG_FLAG = "--accelerate_config"
# accelerate launch options passed through (each takes a value); anything else after the recipe is a recipe field.
PASSED_FLAGS = ("--num_processes", "--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port")


def split_launch_args(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the recipe and its overrides, the launch options given); a launch option without a value is an error."""
    rest, launch = [], {}
    i = 0
    while i < len(argv):
        token, value = argv[i], None
        name = token.split("=", 1)[0]
        if name in (CONFIG_FLAG, *PASSED_FLAGS):
            if "=" in token:
                value = token.split("=", 1)[1]
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            if not value:
                raise UserError(f"{name} needs a value")
            launch[name] = value
        else:
            rest.append(token)
        i += 1
    if launch and CONFIG_FLAG not in launch:
        raise UserError(f"{', '.join(launch)} set without {CONFIG_FLAG}: name a launch config (e.g. {CONFIG_FLAG} "
                        "zero2), or run `accelerate launch` yourself")
    return rest, launch


def builtin_configs() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("thermorl.launch").iterdir()
                  if p.name.endswith(".yaml"))


def resolve_config(name_or_path: str) -> Path:
    """A YAML path, or the name of a config in launch/ ("zero2" or "zero2.yaml")."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtin = resources.files("thermorl.launch") / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if "/" not in name_or_path and builtin.is_file():
        return Path(str(builtin))
    raise UserError(f"{CONFIG_FLAG}: no file {name_or_path!r} and no built-in launch config of that name "
                            f"(built-in: {', '.join(builtin_configs())})")


def check_config(path: Path) -> None:
    """The file must be an accelerate config accelerate can read (its own error is a traceback)."""
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        load_config_from_file(str(path))
    except Exception as error:  # yaml, json and accelerate's own schema errors
        raise UserError(f"{CONFIG_FLAG} {path}: not an accelerate config accelerate can read: "
                        f"{type(error).__name__}: {error}") from None


def launch(recipe_argv: list[str], options: dict[str, str]) -> int:
    """Run `thermorl train` under accelerate's launcher; returns the exit code."""
    import torch.distributed.run  # noqa: F401  (creates the elastic agent's loggers, quieted below)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from .recipe import parse_overrides, read_recipe, recipe_dataclasses, validate
    from .recipe_inputs import warm_up_before_launch

    config = resolve_config(options[CONFIG_FLAG])
    check_config(config)
    # Keys and value types only: building the configs here would check batch sizes at this process's world size
    # (1, not the workers') and touch the GPU from a process that trains nothing. The workers check the rest.
    values = {**read_recipe(recipe_argv[0]), **parse_overrides(recipe_argv[1:])}
    values = validate(values, recipe_dataclasses(values.get("trainer", "grpo")))
    warm_up_before_launch(values)
    passed = [item for flag in PASSED_FLAGS if flag in options for item in (flag, options[flag])]
    args = launch_command_parser().parse_args(
        ["--config_file", str(config), *passed, "-m", "thermorl", "train", *recipe_argv])
    # The elastic agent logs each failed worker at ERROR level before raising, and a Ctrl-C as a warning ("Received
    # 2 death signal"); the worker has said why already. Its loggers carry levels of their own (LOGLEVEL): each is
    # quieted.
    elastic = [logger for name, logger in logging.root.manager.loggerDict.items()
               if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger)]
    elastic.append(logging.getLogger("torch.distributed.elastic"))
    levels = [logger.level for logger in elastic]
    for logger in elastic:
        logger.setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:  # one process, run as a subprocess
        if error.returncode in (2, 130):  # the worker said why (a user error, Ctrl-C)
            return error.returncode
        raise
    except ChildFailedError as error:
        # The first worker to fail says why; the others may then fail on a broken collective or be stopped.
        first = min(error.failures.values(), key=lambda failure: failure.timestamp)
        if first.exitcode in (2, 130):
            return first.exitcode
        raise
    finally:
        for logger, level in zip(elastic, levels):
            logger.setLevel(level)
    return 0
