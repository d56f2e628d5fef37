"""The `thermorl` command: train, quickstart, eval, list."""

from __future__ import annotations

import argparse
import sys

USAGE = """thermorl <command> [...]

commands:
  train RECIPE [--field value ...]   train with a recipe (a YAML path or a built-in name, e.g. quickstart)
  quickstart [--field value ...]     the offline main job: tiny model, SAPO, accuracy before and after
  eval --model PATH --task NAME ...  multi-temperature test-time-scaling evaluation (thermorl eval --help)
  export --checkpoint DIR --out DIR  merge a LoRA checkpoint into its base model (thermorl export --help)
  bench ARMS.yaml [--seeds ...]      compare methods (arms) over seeds on held-out prompts (thermorl bench --help)
  list                               built-in recipes, losses and tasks
"""


def _train(argv: list[str]) -> int:
    from .recipe import load_recipe
    from .train import train

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: thermorl train RECIPE [--field value ...]\n\nRECIPE is a YAML file or a built-in recipe name; "
              "any ModelConfig / ThermoGRPOConfig / script field can be overridden after it.")
        return 0 if argv else 2
    model_args, training_args, script_args = load_recipe(argv[0], argv[1:])
    trainer = train(model_args, training_args, script_args)
    if trainer.accelerator.is_main_process:
        print(f"Model and checkpoints written to {training_args.output_dir}")
    return 0


def _quickstart(argv: list[str]) -> int:
    from .quickstart import quickstart

    if argv and argv[0] in ("-h", "--help"):
        print("usage: thermorl quickstart [--field value ...]  (overrides of the built-in 'quickstart' recipe)")
        return 0
    quickstart(argv)
    return 0


def _eval(argv: list[str]) -> int:
    from .evaluation.command import eval_command

    return eval_command(argv)


def _export(argv: list[str]) -> int:
    from .export import export_command

    return export_command(argv)


def _bench(argv: list[str]) -> int:
    from .bench import bench_command

    return bench_command(argv)


def _list(argv: list[str]) -> int:
    from .losses import LOSSES, loss_parameters
    from .tasks import TASKS
    from .recipe import list_builtin_recipes

    print("recipes: " + ", ".join(list_builtin_recipes()))
    print("losses:")
    for name in sorted(LOSSES):
        print(f"  {name}: " + ", ".join(f"{k}={v!r}" for k, v in loss_parameters(name).items()))
    print("tasks: " + ", ".join(sorted(TASKS)))
    return 0


COMMANDS = {"train": _train, "quickstart": _quickstart, "eval": _eval, "export": _export, "bench": _bench, "list": _list}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"thermorl: unknown command '{argv[0]}'.\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except (ValueError, FileNotFoundError) as error:
        print(f"thermorl {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
