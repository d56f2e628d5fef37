"""The `thermorl` command: train, quickstart, eval, list."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from .errors import UserError

USAGE = """thermorl <command> [...]

commands:
  train RECIPE [--field value ...]   train with a recipe (a YAML path or a built-in name, e.g. quickstart);
                                     --accelerate_config zero2 --num_processes 8: on 8 GPUs (launch/README.md)
  check RECIPE [--field value ...]   resolve model, data, prompts, rewards and launch settings; print the plan
  quickstart [--field value ...]     the offline main job: tiny model, SAPO, accuracy before and after
  eval --model PATH --task NAME ...  multi-temperature test-time-scaling evaluation (thermorl eval --help)
  export --checkpoint DIR --out DIR  merge a LoRA checkpoint into its base model (thermorl export --help)
  bench ARMS.yaml [--seeds ...]      compare methods (arms) over seeds on held-out prompts (thermorl bench --help)
  list                               built-in recipes, losses and tasks
"""


def _train(argv: list[str]) -> int:
    from .launch_checks import check_fits_cpu
    from .launcher import launch, split_launch_args
    from .recipe import recipe_configs, resolve_recipe
    from .train import train

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: thermorl train RECIPE [--field value ...] [--accelerate_config CONFIG [--num_processes N] ...]"
              "\n\nRECIPE is a YAML file or a built-in recipe name; any ModelConfig / ThermoGRPOConfig / script field "
              "can be overridden after it.\n--accelerate_config runs it under accelerate's launcher: a YAML file or a "
              "built-in config of launch/ (zero2, zero3, ddp, ...); --num_processes, --num_machines, --machine_rank, "
              "--main_process_ip and --main_process_port go to the launcher.")
        return 0 if argv else 2
    argv, launch_options = split_launch_args(argv)
    if not argv or argv[0].startswith("-"):
        raise UserError("thermorl train needs a RECIPE (a YAML file or a built-in name) first: thermorl train RECIPE "
                        "[--field value ...]")
    if launch_options:
        return launch(argv, launch_options)
    values = resolve_recipe(argv[0], argv[1:])
    check_fits_cpu(values)  # before TrainingArguments, whose bf16 refusal on the CPU names neither fix nor vLLM
    trainer = train(*recipe_configs(values), recipe_values=values)
    if trainer is not None and trainer.accelerator.is_main_process:  # None: the resumed run was complete
        print(f"Model and checkpoints written to {trainer.args.output_dir}")
    return 0


def _check(argv: list[str]) -> int:
    from .check import check_command

    return check_command(argv)


def _quickstart(argv: list[str]) -> int:
    from .quickstart import quickstart

    if argv and argv[0] in ("-h", "--help"):
        print("usage: thermorl quickstart [--field value ...]  (overrides of the built-in 'quickstart' recipe)")
        return 0
    quickstart(argv)
    return 0


def _eval(argv: list[str]) -> int:
    from .eval_command import eval_command

    return eval_command(argv)


def _export(argv: list[str]) -> int:
    from .export import export_command

    return export_command(argv)


def _bench(argv: list[str]) -> int:
    from .bench.command import bench_command

    return bench_command(argv)


def _list(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: thermorl list  (built-in recipes, losses, tasks and models)")
        return 0
    if argv:
        raise UserError(f"thermorl list takes no options, got {' '.join(argv)}")
    from .losses import LOSSES, loss_parameters
    from .models.names import BUILTIN_MODELS
    from .tasks import TASKS
    from .recipe import list_builtin_recipes

    print("recipes: " + ", ".join(list_builtin_recipes()))
    print("losses (policy_loss, then its policy_loss_kwargs with their defaults):")
    for name in sorted(LOSSES):
        # beta is passed by the trainer from the recipe's own `beta` field, and refused in policy_loss_kwargs.
        settable = {k: v for k, v in loss_parameters(name).items() if k != "beta"}
        print(f"  {name}: " + ", ".join(f"{k}={v!r}" for k, v in settable.items()))
    print("  (every loss: the KL coefficient is the recipe field `beta`)")
    print("tasks: " + ", ".join(sorted(TASKS)))
    print("models (model_name_or_path, --model):")
    for name, what in BUILTIN_MODELS.items():
        print(f"  {name}: {what}")
    return 0


COMMANDS = {
    "train": _train, "check": _check, "quickstart": _quickstart, "eval": _eval, "export": _export, "bench": _bench,
    "list": _list,
}


# Options of the thermorl command itself: before the command, or anywhere after it when given without a value
# (TrainingArguments' own `debug` field takes one: `--debug underflow_overflow` stays a recipe override).
GLOBAL_FLAGS = {"--verbose": "show the libraries' warnings, logs and progress bars as they print them",
                "--debug": "show the traceback of an error in your recipe, data or reward function (also THERMORL_DEBUG=1)"}


def _split_global_flags(argv: list[str]) -> tuple[list[str], set[str]]:
    rest, flags = [], set()
    for i, token in enumerate(argv):
        before_command = not rest
        takes_no_value = before_command or i + 1 == len(argv) or argv[i + 1].startswith("--")
        if token in GLOBAL_FLAGS and takes_no_value:
            flags.add(token)
        else:
            rest.append(token)
    return rest, flags


def main(argv: list[str] | None = None) -> int:
    from . import console, threads

    argv, flags = _split_global_flags(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in flags or os.environ.get("THERMORL_DEBUG", "0") not in ("", "0")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\noptions:\n" + "".join(f"  {k:<10} {v}\n" for k, v in GLOBAL_FLAGS.items()))
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"thermorl: unknown command '{argv[0]}': the commands are {', '.join(COMMANDS)} (thermorl --help)",
              file=sys.stderr)
        return 2
    threads.enable()
    _import_quietly_under_wandb_offline()
    verbose = "--verbose" in flags or os.environ.get("THERMORL_VERBOSE", "0") not in ("", "0")
    # Worker processes (thermorl train --accelerate_config) read the flags from the environment they inherit.
    os.environ.update({name: "1" for name, on in (("THERMORL_DEBUG", debug), ("THERMORL_VERBOSE", verbose)) if on})
    console.configure(verbose=verbose)
    try:
        return command(argv[1:])
    except KeyboardInterrupt as interrupt:  # Ctrl-C: train() says where to resume from
        if debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # under a launch every worker is interrupted; one says so
            report_user_error(f"thermorl {argv[0]}: {str(interrupt) or 'interrupted.'}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _leave_interrupted_worker(130)
        return 130
    except UserError as error:
        # Only the project's user-error type: any other exception is a bug and keeps its traceback and exit code 1.
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug shows the traceback)"
        report_user_error(f"thermorl {argv[0]}: error: {' '.join(str(error).split())}{hint}")
        return 2


def _leave_interrupted_worker(code: int) -> None:
    """A launched worker stopped by Ctrl-C leaves without running C++ static destructors: the process group's gloo
    threads may still be joinable then, and destroying one prints "terminate called without an active exception"
    under the one line the interrupt gets (seen in CI). Whatever Python would finish at exit is finished first: the
    checkpoints are complete and the run's lock was released in train()."""
    import logging

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _import_quietly_under_wandb_offline() -> None:
    """transformers prints "[INFO] Running in WANDB offline mode" when its W&B integration is imported under
    WANDB_MODE=offline, which every command does: imported here first with that line dropped, it is not the first
    line of every command's output (an error would be two lines). thermorl's own W&B note says what it does."""
    import contextlib
    import io

    if os.environ.get("WANDB_MODE") == "offline" and "transformers.integrations.integration_utils" not in sys.modules:
        with contextlib.redirect_stdout(io.StringIO()):
            import transformers.integrations.integration_utils  # noqa: F401


def report_user_error(line: str) -> None:
    """One line on stderr; under a torchrun / accelerate launch also in the worker's error file, which the launcher
    shows as this worker's failure instead of a pointer to its documentation."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(tqdm.tqdm._instances):
            bar.close()  # ends the training progress bar's line, so the error starts a line of its own
    print(line, file=sys.stderr, flush=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w") as handle:
            json.dump({"message": line, "timestamp": int(time.time())}, handle)


if __name__ == "__main__":
    sys.exit(main())
