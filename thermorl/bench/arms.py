"""The arms file of `thermorl bench`: its schema and checks, and the plan of one (arm, seed) run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..recipe import read_recipe, read_yaml

RESULT_FORMAT = 1
EVALUATION_DEFAULTS = {"samples": 8, "every": 50, "batch_size": 256, "seed": 0, "temperatures": None,
                       "vote_threshold": 0.8, "vote_round_size": 2}
# Evaluation keys whose absence means their default and which are left out of the evaluation settings unless given,
# so that runs made before they existed keep matching their plans (resume compares the settings).
SPLITS = ("held_out", "validation")
DEFAULT_VALIDATION_EXAMPLES = 256
OPTIONAL_EVALUATION_KEYS = {"split", "validation_examples", "last_checkpoints"}
ARMS_KEYS = {"recipe", "overrides", "baseline", "seeds", "evaluation", "arms", "signals", "confirmatory"}
CONFIRMATORY_KEYS = ("metric", "arm", "baseline")
# Training metrics the report shows by default (over the run and over its last quarter); every numeric metric the
# trainer logs is kept in the run JSON, so `signals` in the arms file can name others afterwards.
DEFAULT_SIGNALS = ("frac_reward_zero_std", "entropy")


def load_arms(path: str | Path) -> dict[str, Any]:
    """The arms file, checked: every arm's recipe must load, so a typo fails before any run starts."""
    from ..recipe import load_recipe

    path = Path(path)
    if not path.is_file():
        raise UserError(f"arms file not found: {path}")
    spec = read_yaml(path, "arms file") or {}
    if not isinstance(spec, dict):
        raise UserError(f"arms file {path}: must be a mapping with keys {sorted(ARMS_KEYS)}")
    unknown = sorted(set(spec) - ARMS_KEYS)
    if unknown:
        raise UserError(f"arms file {path}: unknown key(s) {unknown}; valid: {sorted(ARMS_KEYS)}")
    arms = spec.get("arms")
    if not isinstance(arms, dict) or not arms or not all(isinstance(v, dict) for v in arms.values()):
        raise UserError(f"arms file {path}: 'arms' must map each arm's name to its recipe overrides")
    for name in arms:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise UserError(f"arms file {path}: arm name {name!r} must be a non-empty string without '/'")
    if "recipe" not in spec:
        raise UserError(f"arms file {path}: 'recipe' (a built-in recipe name or a YAML path) is required")
    recipe = str(spec["recipe"])
    local = path.parent / recipe
    spec["recipe"] = str(local.resolve()) if local.suffix in (".yaml", ".yml") and local.is_file() else recipe
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"arms file {path}: 'overrides' must be a mapping of recipe fields")
    spec["overrides"] = overrides
    baseline = spec.get("baseline", next(iter(arms)))
    if isinstance(baseline, dict):
        if not baseline:
            raise UserError(f"arms file {path}: 'baseline' must name an arm or map arms to their baselines")
        for arm, its_baselines in baseline.items():
            named = its_baselines if isinstance(its_baselines, list) else [its_baselines]
            if not named:
                raise UserError(f"arms file {path}: baseline {{{arm!r}: []}}: name at least one baseline")
            for name in (arm, *named):
                if name not in arms:
                    raise UserError(f"arms file {path}: baseline {{{arm!r}: {its_baselines!r}}}: {name!r} is not one "
                                    f"of the arms {list(arms)}")
            if arm in named:
                raise UserError(f"arms file {path}: baseline {{{arm!r}: {its_baselines!r}}}: an arm is not compared "
                                "with itself")
    elif baseline not in arms:
        raise UserError(f"arms file {path}: baseline {baseline!r} is not one of the arms {list(arms)}")
    spec["baseline"] = baseline
    signals = spec.get("signals", list(DEFAULT_SIGNALS))
    if not isinstance(signals, list) or not all(isinstance(name, str) and name for name in signals):
        raise UserError(f"arms file {path}: 'signals' must be a list of logged metric names, got {signals!r}")
    spec["signals"] = signals
    spec["seeds"] = check_seeds(spec.get("seeds", [0]), f"arms file {path}: 'seeds'")
    evaluation = {**EVALUATION_DEFAULTS, **(spec.get("evaluation") or {})}
    unknown = sorted(set(evaluation) - set(EVALUATION_DEFAULTS) - OPTIONAL_EVALUATION_KEYS)
    if unknown:
        raise UserError(f"arms file {path}: unknown evaluation key(s) {unknown}; "
                        f"valid: {sorted(set(EVALUATION_DEFAULTS) | OPTIONAL_EVALUATION_KEYS)}")
    for key in ("samples", "every", "batch_size", "seed", "vote_round_size", "last_checkpoints"):
        if key not in evaluation:
            continue
        value, minimum = evaluation[key], 0 if key == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"arms file {path}: evaluation.{key} must be an integer >= {minimum}, got {value!r}")
    evaluation["temperatures"] = _check_grid(evaluation["temperatures"], f"arms file {path}: evaluation.temperatures")
    if evaluation["temperatures"] and evaluation["samples"] < 2:
        raise UserError(f"arms file {path}: evaluation.temperatures needs evaluation.samples >= 2 (k samples at each "
                        f"temperature), got samples {evaluation['samples']}")
    threshold = evaluation["vote_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise UserError(f"arms file {path}: evaluation.vote_threshold must be a number in (0, 1], got {threshold!r}")
    if evaluation.get("last_checkpoints") == 1:  # the default: scored on the final checkpoint only
        del evaluation["last_checkpoints"]
    spec["evaluation"] = with_split(evaluation, evaluation.get("split", "held_out"), f"arms file {path}: evaluation")
    if "confirmatory" in spec:
        spec["confirmatory"] = check_confirmatory(spec["confirmatory"], arms, spec["evaluation"],
                                                  f"arms file {path}: confirmatory")
    for name, arm in arms.items():
        values = {**read_recipe(spec["recipe"]), **overrides, **arm}
        try:
            training_args = load_recipe(values)[1]
        except ValueError as error:
            raise UserError(f"arms file {path}: arm {name!r}: {error}") from None
        if values.get("trainer", "grpo") != "grpo":
            raise UserError(f"arms file {path}: arm {name!r}: bench runs online RL arms only (trainer: grpo)")
    return spec


def check_confirmatory(family, arms: dict[str, Any], evaluation: dict[str, Any], what: str) -> list[dict[str, str]]:
    """The comparisons the arms file declares confirmatory before its runs: a list of {metric, arm, baseline}, each
    a metric `--compare` accepts and two different arms, none twice. Holm's correction runs over these only."""
    from .report import comparable_metrics

    if not isinstance(family, list):
        raise UserError(f"{what} must be a list of {{metric, arm, baseline}} mappings, got {family!r}")
    seen = set()
    for index, row in enumerate(family):
        where = f"{what}[{index}]"
        if not isinstance(row, dict) or set(row) != set(CONFIRMATORY_KEYS):
            raise UserError(f"{where} must be a mapping with exactly the keys {list(CONFIRMATORY_KEYS)}, got {row!r}")
        for key in ("arm", "baseline"):
            if row[key] not in arms:
                raise UserError(f"{where}.{key} {row[key]!r} is not one of the arms {list(arms)}")
        if row["arm"] == row["baseline"]:
            raise UserError(f"{where}: an arm is not compared with itself ({row['arm']!r})")
        if row["metric"] not in comparable_metrics(evaluation):
            raise UserError(f"{where}.metric {row['metric']!r} is not a metric of this bench; choose from "
                            f"{comparable_metrics(evaluation)}")
        key = tuple(row[k] for k in CONFIRMATORY_KEYS)
        if key in seen:
            raise UserError(f"{where} declares {row!r} twice")
        seen.add(key)
    return [{k: row[k] for k in CONFIRMATORY_KEYS} for row in family]


def evaluated_steps(max_steps: int, every: int) -> list[int]:
    """The steps at which a run is evaluated: every `every` steps, and the last."""
    return [*range(every, max_steps, every), max_steps]


def checkpoint_steps(max_steps: int, evaluation: dict[str, Any]) -> list[int]:
    """The steps scored in full: the last `last_checkpoints` evaluated steps (default 1: the last step only)."""
    return evaluated_steps(max_steps, evaluation["every"])[-evaluation.get("last_checkpoints", 1):]


def check_seeds(seeds, what: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{what} must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{what} lists a seed twice: {seeds}")
    return seeds


def _check_grid(temperatures, what: str) -> list[float] | None:
    """The evaluation's temperature grid: None (no grid), or two or more distinct temperatures >= 0 (0 is greedy:
    decoded once, its completion counted as each of the k samples, as evaluation/sampling.py does)."""
    if temperatures is None:
        return None
    if (not isinstance(temperatures, list) or len(temperatures) < 2
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in temperatures)
            or len(set(temperatures)) != len(temperatures)):
        raise UserError(f"{what} must be a list of two or more distinct temperatures >= 0 (0 is greedy), "
                        f"got {temperatures!r}")
    if 1.0 not in temperatures:
        raise UserError(f"{what} must include 1.0 (the T=1 metrics come from its samples), got {temperatures!r}")
    return [float(t) for t in temperatures]


def with_split(evaluation: dict[str, Any], split: str, what: str) -> dict[str, Any]:
    """The evaluation scoring on `split`: "held_out" (the default, stored as no key at all) or "validation", rows
    carved out of the training prompts (Task.carve_validation: RL does not train on them) for choosing settings,
    `validation_examples` of them (default DEFAULT_VALIDATION_EXAMPLES)."""
    evaluation = dict(evaluation)
    if split not in SPLITS:
        raise UserError(f"{what}.split must be one of {list(SPLITS)}, got {split!r}")
    if split == "held_out":
        if "validation_examples" in evaluation:
            raise UserError(f"{what}.validation_examples applies to split validation only; the split is held_out")
        evaluation.pop("split", None)
        return evaluation
    count = evaluation.setdefault("validation_examples", DEFAULT_VALIDATION_EXAMPLES)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"{what}.validation_examples must be an integer >= 1, got {count!r}")
    evaluation["split"] = split
    return evaluation


def validation_examples(evaluation: dict[str, Any]) -> int:
    """Training rows carved out as validation rows: 0 when scoring on held-out prompts."""
    return evaluation["validation_examples"] if evaluation.get("split") == "validation" else 0


def pairs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(arm, baseline) for every comparison whose two arms are in the spec: every other arm against the one
    baseline, or the arms file's mapping, where an arm may have several baselines (a list: the first is the one
    whose final accuracy it is timed to reach, the others are controls, such as a loss against the same loss
    settings without it)."""
    baseline, arms = spec["baseline"], spec["arms"]
    if isinstance(baseline, dict):
        return [(arm, base) for arm, bases in baseline.items()
                for base in (bases if isinstance(bases, list) else [bases]) if arm in arms and base in arms]
    return [(arm, baseline) for arm in arms if arm != baseline]


def run_plan(spec: dict[str, Any], arm: str, seed: int, extra: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Everything that determines one run's result (stored in its JSON, compared on resume)."""
    from ..recipe import recipe_dataclasses, validate

    values = {**read_recipe(spec["recipe"]), **spec["overrides"], **spec["arms"][arm], **extra}
    values.update(seed=seed, output_dir=str(run_dir), save_strategy="no", report_to=[])
    # Each value as its field's type ("600" from the command line is 600, as in a YAML file), so that the same
    # settings compare equal on resume however they were given; enum values are stored as their strings.
    values = json.loads(json.dumps(validate(values, recipe_dataclasses(values.get("trainer", "grpo"))),
                                   default=lambda value: value.value))
    plan = {"format": RESULT_FORMAT, "arm": arm, "seed": seed, "recipe": values, "evaluation": spec["evaluation"]}
    # The family the arms file declared when the run started, so the report can tell a family declared before the
    # runs from one written after them (not a setting: resume does not compare it).
    if "confirmatory" in spec:
        plan["confirmatory"] = spec["confirmatory"]
    return plan


def check_arms_share_start(spec: dict[str, Any], extra: dict[str, Any]) -> None:
    """Every arm loads with the command-line overrides, and all start from the same policy and prompts (or the
    comparison would not be one), train for the same steps and score with the same completion length."""
    from ..recipe import load_recipe

    reference = None
    for name in spec["arms"]:
        values = run_plan(spec, name, 0, extra, Path("."))["recipe"]
        try:
            training_args = load_recipe(values)[1]
        except ValueError as error:
            raise UserError(f"arm {name!r} with the command-line overrides: {error}") from None
        carved = validation_examples(spec["evaluation"])
        if carved and carved >= values["num_train_examples"]:
            raise UserError(f"evaluation.validation_examples {carved} must be below num_train_examples "
                            f"({values['num_train_examples']} in arm {name!r}): the validation prompts are carved out "
                            "of the training prompts")
        if values.get("dataset_seed") is None:
            raise UserError(f"arm {name!r}: dataset_seed is unset, so each seed would draw its own prompts and warm-up "
                            "and the report's start would be one seed's; set dataset_seed (e.g. 0) in the arms file's "
                            "overrides")
        last = spec["evaluation"].get("last_checkpoints", 1)
        evaluated = len(evaluated_steps(training_args.max_steps, spec["evaluation"]["every"]))
        if last > evaluated:
            raise UserError(f"evaluation.last_checkpoints {last}: arm {name!r} evaluates only {evaluated} "
                            f"checkpoint(s) (every {spec['evaluation']['every']} of its {training_args.max_steps} "
                            "steps, and the last)")
        shared = {key: values.get(key) for key in (*START_KEYS, *OPTIONAL_START_KEYS)}
        # The training budget is the rollouts sampled: an arm that uses each rollout batch num_iterations times
        # takes that many more optimizer steps for the same rollouts.
        shared["rollouts sampled (max_steps x batch / num_iterations)"] = (
            training_args.max_steps * training_args.per_device_train_batch_size
            * training_args.gradient_accumulation_steps / training_args.num_iterations)
        if reference is None:
            reference = (name, shared)
        elif shared != reference[1]:
            differing = sorted(key for key in shared if shared[key] != reference[1][key])
            raise UserError(f"arms {reference[0]!r} and {name!r} differ in {differing}: every arm must start from "
                            "the same policy and prompts and sample as many rollouts")


# The recipe fields that determine the starting policy and its held-out prompts.
START_KEYS = ("model_name_or_path", "tiny_model_size", "dataset", "dataset_seed", "num_train_examples",
               "num_eval_examples", "warmup_examples", "warmup_epochs", "max_completion_length")

# Start fields added later: in the start cache's key only when set, so that caches made before they existed match.
OPTIONAL_START_KEYS = ("warmup_dataset",)