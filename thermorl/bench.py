"""`thermorl bench ARMS.yaml`: compare training methods (arms) over seeds, honestly and resumably.

An arms file names a base recipe, overrides shared by every arm, the arms themselves (recipe overrides), the seeds
and how to evaluate:

    recipe: testbed                    # a built-in recipe name or a YAML path (relative to the arms file)
    overrides: {max_steps: 300}        # applied to every arm
    baseline: fixed-1.0                # the arm whose final accuracy the others must reach
    seeds: [0, 1, 2]
    evaluation: {samples: 8, every: 50, batch_size: 256, temperatures: [0.6, 1.0, 1.2]}
    arms:
      fixed-1.0: {temperature: 1.0}
      ead: {temperature_schedule: {type: annealed_for_length, response_tokens: 20}}

Each (arm, seed) trains in its own subprocess with OMP_NUM_THREADS=1 (one core per run; `--jobs` runs several at
once) and writes OUT/runs/ARM/seedS.json: the training reward per step, held-out pass@1 (greedy and T=1) every
`every` steps, and the final held-out pass@1, pass@k and worst@k (all k samples right) at T=1; with
`temperatures` (0 is greedy), also pass@1 at each of them and the test-time-scaling view across that grid (k samples
at each): the k samples spread over the temperatures vs the best single temperature's pass@k (at every budget up to
k), Pass@All, and, where the task's answers are canonical (Task.canonical_answers), early-exit voting's accuracy and
samples saved against voting on every sample (elsewhere these are "n/a", with the reason in the JSON). A run whose
JSON exists is skipped, so an interrupted bench resumes; one whose JSON was made with other settings is refused. The
aggregate (OUT/report.json, OUT/report.md, OUT/bench.png) gives each metric's mean and 95% interval over seeds,
pass@1 by evaluation temperature (arms trained at different temperatures compared at the same decoding), paired
per-seed differences against the baseline with sign-flip p-values, Holm-corrected (thermorl/bench_stats.py; `--compare`
picks the metrics), the curves against steps and rollouts, and the steps each arm needs to reach the baseline's final
T=1 pass@1. A number a run JSON lacks (one written before it existed) is reported as missing.
Held-out prompts are the recipe's built-in task's held-out split: never in the SFT warm-up nor in RL. For choosing
settings, `evaluation: {split: validation, validation_examples: N}` (or `--split validation`) scores instead N
prompts carved out of the training ones, which RL then leaves out; the held-out prompts stay the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .bench_stats import compare_to_baseline, mean_interval
from .errors import UserError, refusing_remote_code
from .recipe import parse_overrides, read_recipe, read_yaml

RESULT_FORMAT = 1
EVALUATION_DEFAULTS = {"samples": 8, "every": 50, "batch_size": 256, "seed": 0, "temperatures": None,
                       "vote_threshold": 0.8, "vote_round_size": 2}
# Evaluation keys whose absence means their default and which are left out of the evaluation settings unless given,
# so that runs made before they existed keep matching their plans (resume compares the settings).
SPLITS = ("held_out", "validation")
DEFAULT_VALIDATION_EXAMPLES = 256
OPTIONAL_EVALUATION_KEYS = {"split", "validation_examples"}
# Final metrics of a run, in the order the report shows them.
FINAL_METRICS = ("pass@1 greedy", "pass@1 T=1", "pass@k T=1", "worst@k T=1")
# Final metrics across the evaluation's temperature grid (k samples per temperature), in report order.
GRID_METRICS = ("best single T pass@k", "spread pass@k", "pass@all", "vote all samples", "vote early exit",
                "vote samples saved")
VOTE_METRICS = ("vote all samples", "vote early exit", "vote samples saved")
VOTE_NOT_APPLICABLE = ("the task's answers are not canonical (a problem has many correct answers that vote apart), so "
                       "vote accuracy and early exit measure the task's answer format, not the policy")
ARMS_KEYS = {"recipe", "overrides", "baseline", "seeds", "evaluation", "arms"}


# --- the arms file ---------------------------------------------------------------------------------------------


def load_arms(path: str | Path) -> dict[str, Any]:
    """The arms file, checked: every arm's recipe must load, so a typo fails before any run starts."""
    from .recipe import load_recipe

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
    if baseline not in arms:
        raise UserError(f"arms file {path}: baseline {baseline!r} is not one of the arms {list(arms)}")
    spec["baseline"] = baseline
    spec["seeds"] = _check_seeds(spec.get("seeds", [0]), f"arms file {path}: 'seeds'")
    evaluation = {**EVALUATION_DEFAULTS, **(spec.get("evaluation") or {})}
    unknown = sorted(set(evaluation) - set(EVALUATION_DEFAULTS) - OPTIONAL_EVALUATION_KEYS)
    if unknown:
        raise UserError(f"arms file {path}: unknown evaluation key(s) {unknown}; "
                        f"valid: {sorted(set(EVALUATION_DEFAULTS) | OPTIONAL_EVALUATION_KEYS)}")
    for key in ("samples", "every", "batch_size", "seed", "vote_round_size"):
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
    spec["evaluation"] = with_split(evaluation, evaluation.get("split", "held_out"), f"arms file {path}: evaluation")
    for name, arm in arms.items():
        values = {**read_recipe(spec["recipe"]), **overrides, **arm}
        try:
            load_recipe(values)
        except ValueError as error:
            raise UserError(f"arms file {path}: arm {name!r}: {error}") from None
        if values.get("trainer", "grpo") != "grpo":
            raise UserError(f"arms file {path}: arm {name!r}: bench runs online RL arms only (trainer: grpo)")
    return spec


def _check_seeds(seeds, what: str) -> list[int]:
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


def run_plan(spec: dict[str, Any], arm: str, seed: int, extra: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Everything that determines one run's result (stored in its JSON, compared on resume)."""
    from .recipe import recipe_dataclasses, validate

    values = {**read_recipe(spec["recipe"]), **spec["overrides"], **spec["arms"][arm], **extra}
    values.update(seed=seed, output_dir=str(run_dir), save_strategy="no", report_to=[])
    # Each value as its field's type ("600" from the command line is 600, as in a YAML file), so that the same
    # settings compare equal on resume however they were given; enum values are stored as their strings.
    values = json.loads(json.dumps(validate(values, recipe_dataclasses(values.get("trainer", "grpo"))),
                                   default=lambda value: value.value))
    return {"format": RESULT_FORMAT, "arm": arm, "seed": seed, "recipe": values, "evaluation": spec["evaluation"]}


# --- one run (in its own process) ------------------------------------------------------------------------------


def scored_rows(script_args, seed: int, evaluation: dict[str, Any]):
    """(rows scored, held-out rows, task): the held-out rows, or with split validation the validation rows carved
    out of the training rows (the training run leaves them out: run_one passes the same count to build_trainer)."""
    from .train import build_datasets

    train, held_out, task = build_datasets(script_args, seed)
    if task is None:
        raise UserError(f"dataset {script_args.dataset!r}: bench needs a built-in task as the recipe's dataset: it "
                        "scores held-out prompts with its verifier")
    rows = held_out
    if validation_examples(evaluation):
        _, rows = task.carve_validation(train, validation_examples(evaluation))
    return [dict(row) for row in rows], held_out, task


def held_out_scores(model, tokenizer, rows, task, evaluation: dict[str, Any], samples: int, max_new_tokens: int):
    """(scores, grid): greedy pass@1 (one completion per prompt: greedy decoding is deterministic) and pass@1 /
    pass@k / worst@k from `samples` samples at T=1; with the evaluation's temperature grid (which includes 1.0) and
    more than one sample, the T=1 samples are the grid's and `grid` is its test-time-scaling summary, else None."""
    from .evaluation.metrics import single_temperature_pass_at_k
    from .evaluation.pipeline import as_verifier, score
    from .evaluation.sampling import sample_completions

    temperatures = evaluation["temperatures"] if evaluation["temperatures"] and samples > 1 else [1.0]
    prompts, verifier = [row["prompt"] for row in rows], as_verifier(task, list(rows[0]))
    settings = {"batch_size": evaluation["batch_size"], "seed": evaluation["seed"], "progress": False}
    _, greedy = score(verifier, rows, sample_completions(model, tokenizer, prompts, [0.0], 1, max_new_tokens, **settings))
    answers, correct = score(verifier, rows, sample_completions(model, tokenizer, prompts, temperatures, samples,
                                                                 max_new_tokens, **settings))
    at_1 = temperatures.index(1.0)
    scores = {
        "pass@1 greedy": single_temperature_pass_at_k(greedy, 0, 1),
        "pass@1 T=1": single_temperature_pass_at_k(correct, at_1, 1),
        "pass@k T=1": single_temperature_pass_at_k(correct, at_1, samples),
        "worst@k T=1": statistics.mean(float(all(question[at_1])) for question in correct),
    }
    if len(temperatures) == 1:
        return scores, None
    return scores, grid_summary(temperatures, answers, correct, evaluation, task.canonical_answers)


def grid_summary(temperatures, answers, correct, evaluation: dict[str, Any], canonical_answers: bool) -> dict[str, Any]:
    """Test-time scaling across the temperature grid from k samples at each (evaluation/ does the counting).

    At equal samples: k samples spread evenly over the grid vs the best single temperature's pass@k (the best chosen
    on these same prompts, which favours it), and that comparison at every budget up to k ("equal budget curve").
    Pass@All: solved by some sample at some temperature (k per temperature). With canonical answers (the task's
    `canonical_answers`), voting on the answers of all k x T samples vs the early-exit vote replayed on them, and
    the share of samples the early exit leaves undrawn; without, the vote metrics are None and "vote n/a" says why
    (the votes split over distinct correct answers, so agreement, and early exit, measure the task, not the policy).
    """
    from .evaluation.metrics import majority_vote, voted_answer_correct
    from .evaluation.report import summarize
    from .evaluation.voting import RecordedAnswers, multi_temperature_vote

    samples = len(correct[0][0])
    round_size, threshold = min(evaluation["vote_round_size"], samples), evaluation["vote_threshold"]
    votes = multi_temperature_vote(RecordedAnswers(answers), len(answers), len(temperatures), samples, round_size,
                                   threshold)
    report = summarize(temperatures, answers, correct, votes, threshold, round_size)
    pooled = [([a for per_t in q_answers for a in per_t], [c for per_t in q_correct for c in per_t])
              for q_answers, q_correct in zip(answers, correct)]
    at_budget = report["equal_budget_curve"][-1]
    summary = {
        "best single T pass@k": at_budget["best_single_pass_at_k"],
        "best single T": at_budget["best_single_temperature"],
        "spread pass@k": at_budget["spread_over_temperatures"],
        "pass@all": report["pass_at_all"],
        "vote all samples": statistics.mean(float(voted_answer_correct(a, c, majority_vote(a)[0])) for a, c in pooled),
        "vote early exit": report["voting"]["accuracy"],
        "vote samples saved": 1.0 - report["voting"]["samples_used_fraction"],
        "per temperature pass@1": {f"{t:g}": row["accuracy"] for t, row in zip(temperatures, report["per_temperature"])},
        "equal budget curve": [{"samples": point["total_samples"], "best single T": point["best_single_temperature"],
                                "best single T pass@k": point["best_single_pass_at_k"],
                                "spread pass@k": point["spread_over_temperatures"]}
                               for point in report["equal_budget_curve"]],
    }
    if not canonical_answers:
        summary.update({metric: None for metric in VOTE_METRICS})
        summary["vote n/a"] = VOTE_NOT_APPLICABLE
    return summary


def run_one(plan_path: Path) -> None:
    """Train one (arm, seed) and write its result JSON next to the plan."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from .recipe import load_recipe
    from .train import build_trainer

    torch.set_num_threads(1)
    plan = json.loads(plan_path.read_text())
    evaluation = plan["evaluation"]
    model_args, training_args, script_args = load_recipe(plan["recipe"])
    rows, _, task = scored_rows(script_args, training_args.seed, evaluation)
    new_tokens = training_args.max_completion_length

    class HeldOutCurve(TrainerCallback):
        """Held-out pass@1 (greedy, and one sample at T=1) every `every` steps; the last step's point is the final
        evaluation's (k samples at T=1), so the curve ends where the final metrics are."""

        def __init__(self):
            self.points = []

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step % evaluation["every"] or state.global_step == state.max_steps:
                return
            scores, _ = held_out_scores(model, processing_class, rows, task, evaluation, 1, new_tokens)
            self.points.append({"step": state.global_step, "pass@1 greedy": scores["pass@1 greedy"],
                                "pass@1 T=1": scores["pass@1 T=1"]})

    curve = HeldOutCurve()
    started = time.perf_counter()
    trainer = build_trainer(model_args, training_args, script_args, callbacks=[curve],
                            validation_examples=validation_examples(evaluation))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    train_seconds = time.perf_counter() - started
    final, grid = held_out_scores(trainer.model, trainer.processing_class, rows, task, evaluation,
                                  evaluation["samples"], new_tokens)
    curve.points.append({"step": trainer.state.global_step, "pass@1 greedy": final["pass@1 greedy"],
                         "pass@1 T=1": final["pass@1 T=1"]})
    history = trainer.state.log_history
    result = {
        **plan,
        # Completions sampled per optimizer step (each is used num_iterations times).
        "rollouts_per_step": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        * training_args.world_size / training_args.num_iterations,
        "held_out_prompts": len(rows),  # the prompts scored: validation ones with split validation
        "reward": [[entry["step"], entry["reward"]] for entry in history if "reward" in entry],
        # Completions sampled outside the training batches (VAS rollout mode's re-rolls), cumulative, by step.
        "extra_rollouts": [[entry["step"], entry["vas/rescore_completions"]] for entry in history
                           if "vas/rescore_completions" in entry],
        "curve": curve.points,
        "final": final,
        "grid": grid,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(plan_path.with_name(plan_path.name.removesuffix(".plan.json") + ".json"), result)


def start_scores(spec: dict[str, Any], extra: dict[str, Any], out: Path, cached_only: bool = False) -> dict[str, Any]:
    """The warmed-up policy's held-out scores (the curves' step 0), computed once per bench and cached."""
    path = out / "start.json"
    plan = run_plan(spec, next(iter(spec["arms"])), spec["seeds"][0], extra, out / "start")
    key = {k: plan["recipe"].get(k) for k in _START_KEYS} | {"evaluation": spec["evaluation"]}
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["scores"]
    if cached_only:
        raise UserError(f"{path} is missing or was made with other settings: run the bench (without --report) first")
    import torch

    from .evaluation import load_policy
    from .recipe import load_recipe
    from .train import ALLOW_REMOTE_CODE, resolve_model_path

    torch.set_num_threads(1)
    model_args, training_args, script_args = load_recipe(plan["recipe"])
    evaluation = spec["evaluation"]
    rows, held_out, task = scored_rows(script_args, training_args.seed, evaluation)
    model_path = resolve_model_path(model_args.model_name_or_path, script_args, held_out)
    with refusing_remote_code(model_path, ALLOW_REMOTE_CODE):
        model, tokenizer = load_policy(model_path, device="cpu", dtype="float32",
                                       trust_remote_code=training_args.trust_remote_code)
    scores, grid = held_out_scores(model, tokenizer, rows, task, evaluation, evaluation["samples"],
                                   training_args.max_completion_length)
    if grid is not None:
        scores["grid"] = grid
    _write_json(path, {"key": key, "model": model_path, "scores": scores})
    return scores


def check_arms_share_start(spec: dict[str, Any], extra: dict[str, Any]) -> None:
    """Every arm loads with the command-line overrides, and all start from the same policy and prompts (or the
    comparison would not be one), train for the same steps and score with the same completion length."""
    from .recipe import load_recipe

    reference = None
    for name in spec["arms"]:
        values = run_plan(spec, name, 0, extra, Path("."))["recipe"]
        try:
            load_recipe(values)
        except ValueError as error:
            raise UserError(f"arm {name!r} with the command-line overrides: {error}") from None
        carved = validation_examples(spec["evaluation"])
        if carved and carved >= values["num_train_examples"]:
            raise UserError(f"evaluation.validation_examples {carved} must be below num_train_examples "
                            f"({values['num_train_examples']} in arm {name!r}): the validation prompts are carved out "
                            "of the training prompts")
        shared = {key: values.get(key) for key in (*_START_KEYS, "max_steps")}
        if reference is None:
            reference = (name, shared)
        elif shared != reference[1]:
            differing = sorted(key for key in shared if shared[key] != reference[1][key])
            raise UserError(f"arms {reference[0]!r} and {name!r} differ in {differing}: every arm must start from "
                            "the same policy, prompts and steps")


# The recipe fields that determine the starting policy and its held-out prompts.
_START_KEYS = ("model_name_or_path", "tiny_model_size", "dataset", "dataset_seed", "num_train_examples",
               "num_eval_examples", "warmup_examples", "warmup_epochs", "max_completion_length")


def _settings(plan: dict[str, Any]) -> dict[str, Any]:
    """What a finished run must share with the current plan to be reused: all but where it was written."""
    recipe = {k: v for k, v in plan["recipe"].items() if k != "output_dir"}
    return {**{k: plan.get(k) for k in ("format", "arm", "seed", "evaluation")}, "recipe": recipe}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# --- the bench -------------------------------------------------------------------------------------------------


def pending_runs(spec: dict[str, Any], out: Path, extra: dict[str, Any]) -> list[tuple[str, int, dict, Path]]:
    """The (arm, seed, plan, run folder) not finished yet; a finished run made with other settings is an error."""
    pending = []
    for seed in spec["seeds"]:
        for arm in spec["arms"]:
            run_dir = out / "runs" / arm / f"seed{seed}"
            plan = run_plan(spec, arm, seed, extra, run_dir)
            result = run_dir.with_name(f"seed{seed}.json")
            if result.is_file():
                stored = json.loads(result.read_text())
                if _settings(stored) != _settings(plan):
                    raise UserError(f"{result} was made with other settings than {arm!r} seed {seed} has now; "
                                    "use another --out or delete it")
                continue
            pending.append((arm, seed, plan, run_dir))
    return pending


def run_bench(spec: dict[str, Any], out: Path, extra: dict[str, Any], jobs: int = 1) -> list[str]:
    """Run every missing (arm, seed), `jobs` at a time; returns the runs that failed."""
    scored = "validation" if spec["evaluation"].get("split") == "validation" else "held-out"
    pending = []
    for arm, seed, plan, run_dir in pending_runs(spec, out, extra):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir.with_name(f"seed{seed}.plan.json"), plan)
        pending.append((arm, seed, run_dir.with_name(f"seed{seed}.plan.json")))
    done = sum(len(spec["seeds"]) for _ in spec["arms"]) - len(pending)
    print(f"bench: {len(pending)} run(s) to do, {done} already done, {jobs} at a time", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    running: list[tuple[str, int, Path, subprocess.Popen, float]] = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            arm, seed, plan_path = pending.pop(0)
            log = open(plan_path.with_name(f"seed{seed}.log"), "w")
            process = subprocess.Popen([sys.executable, "-m", "thermorl.bench", "--run-plan", str(plan_path)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running.append((arm, seed, plan_path, process, time.perf_counter()))
        time.sleep(0.5)
        for entry in list(running):
            arm, seed, plan_path, process, began = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            if process.returncode == 0:
                final = json.loads(plan_path.with_name(f"seed{seed}.json").read_text())["final"]
                print(f"  {arm} seed {seed}: {scored} pass@1 T=1 {final['pass@1 T=1']:.3f}, greedy "
                      f"{final['pass@1 greedy']:.3f} ({time.perf_counter() - began:.0f} s)", flush=True)
            else:
                failed.append(f"{arm} seed {seed}")
                print(f"  {arm} seed {seed}: FAILED (exit {process.returncode}); see "
                      f"{plan_path.with_name(f'seed{seed}.log')}", flush=True)
    return failed


def extra_rollouts_at(run: dict[str, Any], step: int) -> float:
    """Completions a run sampled outside its training batches up to `step` (VAS re-rolls; 0 for other arms)."""
    logged = [count for at, count in run.get("extra_rollouts", []) if at <= step]
    return logged[-1] if logged else 0.0


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    """A run's final numbers by name: FINAL_METRICS, "pass@1 T=t" at each grid temperature, and the grid's
    metrics. A number the run does not hold (a run written before it existed, a vote metric where not applicable)
    is absent, so that it is reported as missing rather than failing the report."""
    metrics = dict(run.get("final") or {})
    grid = run.get("grid") or {}
    metrics.update({f"pass@1 T={t}": value for t, value in (grid.get("per temperature pass@1") or {}).items()})
    metrics.update({metric: grid[metric] for metric in GRID_METRICS if grid.get(metric) is not None})
    return metrics


def temperature_columns(temperatures: list[float] | None) -> list[str]:
    """The pass@1 metrics that compare arms at the same decoding: greedy, then each grid temperature (T=1 alone
    without a grid). Arms trained at different temperatures are on different footings at any single one."""
    return ["pass@1 greedy"] + [f"pass@1 T={t:g}" for t in (temperatures or [1.0])]


def comparable_metrics(evaluation: dict[str, Any]) -> list[str]:
    """Every metric `--compare` accepts."""
    grid = [m for m in GRID_METRICS if evaluation["temperatures"]]
    return list(dict.fromkeys([*temperature_columns(evaluation["temperatures"]), *FINAL_METRICS, *grid]))


def over_seeds(by_seed: dict[int, dict[str, float]], metric: str) -> dict[str, Any] | None:
    """mean_interval of `metric` over the seeds whose runs hold it, naming the seeds that do not; None if none does."""
    values = {seed: metrics[metric] for seed, metrics in by_seed.items() if metric in metrics}
    if not values:
        return None
    summary = mean_interval(list(values.values()))
    missing = sorted(set(by_seed) - set(values))
    return {**summary, "missing seeds": missing} if missing else summary


def aggregate(spec: dict[str, Any], out: Path, start: dict[str, float],
              compare: list[str] | None = None) -> dict[str, Any]:
    """report.json's content from the finished runs (arms with no finished run are left out). `compare`: the
    metrics of the paired comparison against the baseline (default: temperature_columns)."""
    temperatures = spec["evaluation"]["temperatures"]
    columns = temperature_columns(temperatures)
    arms, by_arm_seed = {}, {}
    for arm in spec["arms"]:
        runs = [json.loads(p.read_text()) for seed in spec["seeds"]
                if (p := out / "runs" / arm / f"seed{seed}.json").is_file()]
        if not runs:
            continue
        by_seed = by_arm_seed[arm] = {run["seed"]: run_metrics(run) for run in runs}
        steps = [point["step"] for point in runs[0]["curve"]]
        curve = [{"step": 0, "rollouts": 0,
                  **{m: mean_interval([start[m]]) for m in ("pass@1 greedy", "pass@1 T=1")}}]
        for i, step in enumerate(steps):
            curve.append({"step": step, "rollouts": step * runs[0]["rollouts_per_step"]
                          + statistics.mean(extra_rollouts_at(run, step) for run in runs),
                          **{m: mean_interval([run["curve"][i][m] for run in runs])
                             for m in ("pass@1 greedy", "pass@1 T=1")}})
        # Steps at which every run logged a reward (one per rollout batch: every other step with
        # steps_per_generation 2), with the mean over seeds.
        reward_steps = [step for step, _ in runs[0]["reward"]]
        rewards = [[step, statistics.mean(values)]
                   for step, values in zip(reward_steps, zip(*([r for _, r in run["reward"]] for run in runs)))]
        arms[arm] = {
            "seeds": [run["seed"] for run in runs],
            "final": {m: mean_interval([run["final"][m] for run in runs]) for m in FINAL_METRICS},
            "curve": curve,
            "reward_mean_over_seeds": rewards,
            "rollouts_per_step": runs[0]["rollouts_per_step"],
            "minutes_per_run": statistics.mean(run["seconds"] for run in runs) / 60,
            "pass@1 by temperature": {column: over_seeds(by_seed, column) for column in columns},
        }
        if all(run.get("grid") for run in runs):
            grid = arms[arm]["grid"] = {m: over_seeds(by_seed, m) for m in GRID_METRICS}
            grid["best single T"] = [run["grid"]["best single T"] for run in runs]
            not_applicable = [run["grid"]["vote n/a"] for run in runs if run["grid"].get("vote n/a")]
            if not_applicable:  # no vote numbers, even from runs written before vote metrics could be n/a
                grid.update({metric: None for metric in VOTE_METRICS})
                grid["vote n/a"] = not_applicable[0]
            if all(run["grid"].get("equal budget curve") for run in runs):
                grid["equal budget curve"] = equal_budget_curve([run["grid"]["equal budget curve"] for run in runs])
    baseline = spec["baseline"]
    if baseline in arms:
        target = arms[baseline]["final"]["pass@1 T=1"]["mean"]
        for values in arms.values():
            reached = [p["step"] for p in values["curve"] if p["pass@1 T=1"]["mean"] >= target]
            values["steps_to_baseline_final"] = reached[0] if reached else None
    compare = compare or columns
    paired = {"baseline": baseline, "metrics": compare,
              "comparisons": compare_to_baseline(by_arm_seed, baseline, compare) if baseline in by_arm_seed else []}
    start_metrics = run_metrics({"final": {m: start[m] for m in FINAL_METRICS if m in start},
                                 "grid": start.get("grid")})
    return {"baseline": baseline, "k": spec["evaluation"]["samples"], "temperatures": temperatures,
            "split": spec["evaluation"].get("split", "held_out"), "start": start,
            "start pass@1 by temperature": {column: start_metrics.get(column) for column in columns},
            "arms": arms, "seeds": spec["seeds"], "paired": paired}


def equal_budget_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The runs' equal-budget curves (grid_summary) averaged budget by budget: at each number of samples, the best
    single temperature's pass@k (chosen per run on the scored prompts) and the samples spread over the grid."""
    return [{"samples": points[0]["samples"],
             **{m: mean_interval([point[m] for point in points]) for m in ("best single T pass@k", "spread pass@k")}}
            for points in zip(*curves)]


def markdown(report: dict[str, Any]) -> str:
    k = report["k"]
    names = [m.replace("@k", f"@{k}") for m in FINAL_METRICS]
    scored = "validation" if report.get("split") == "validation" else "held-out"
    lines = [f"| arm | seeds | " + " | ".join(f"{scored} {n}" for n in names)
             + f" | steps to {report['baseline']}'s final T=1 pass@1 | rollouts sampled |",
             "|---|---|" + "---|" * (len(names) + 2)]
    lines.append("| start (warmed-up policy) | | " + " | ".join(f"{report['start'][m]:.3f}" for m in FINAL_METRICS)
                 + " | | |")
    for arm, values in report["arms"].items():
        cells = [f"{values['final'][m]['mean']:.3f} ± {values['final'][m]['ci95']:.3f}" for m in FINAL_METRICS]
        reached = values.get("steps_to_baseline_final", "no baseline run")
        lines.append(f"| {arm} | {len(values['seeds'])} | " + " | ".join(cells)
                     + f" | {'not reached' if reached is None else reached} | {values['curve'][-1]['rollouts']:,.0f} |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% Student-t interval over seeds (± 0.000 with one seed: no interval).")
    if report.get("split") == "validation":
        lines.append("Scored on validation prompts (carved out of the training prompts; RL did not train on them), "
                     "for choosing settings: not the held-out result.")
    lines += ["", temperature_markdown(report), "", paired_markdown(report)]
    if any("grid" in values for values in report["arms"].values()):
        lines += ["", grid_markdown(report)]
    return "\n".join(lines)


def _cell(summary: dict[str, Any] | None, missing: str = "missing") -> str:
    """One mean ± interval, `missing` for a metric no run holds, and the seeds whose runs lack it."""
    if summary is None:
        return missing
    cell = f"{summary['mean']:.3f} ± {summary['ci95']:.3f}"
    return cell + (f" (seeds {summary['missing seeds']} missing)" if summary.get("missing seeds") else "")


def temperature_markdown(report: dict[str, Any]) -> str:
    """pass@1 by evaluation temperature: every arm decoded the same way, greedy and at each grid temperature."""
    columns = list(report["start pass@1 by temperature"])
    lines = ["pass@1 by evaluation temperature (every arm's policy decoded alike; a fixed-T arm trains softmax(z/T), "
             "EAD and the portfolio the T=1 policy, so compare arms column by column, not each at its own T):", "",
             "| arm | seeds | " + " | ".join(column.removeprefix("pass@1 ") for column in columns) + " |",
             "|---|---|" + "---|" * len(columns),
             "| start (warmed-up policy) | | " + " | ".join(
                 "missing" if (value := report["start pass@1 by temperature"][c]) is None else f"{value:.3f}"
                 for c in columns) + " |"]
    for arm, values in report["arms"].items():
        by_temperature = values.get("pass@1 by temperature", {})
        lines.append(f"| {arm} | {len(values['seeds'])} | "
                     + " | ".join(_cell(by_temperature.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def paired_markdown(report: dict[str, Any]) -> str:
    """The paired comparison of every arm with the baseline, seed by seed."""
    paired = report["paired"]
    lines = [f"Paired differences, arm - {paired['baseline']}, over the seeds both finished: mean ± 95% t-interval, "
             "seeds won / lost / tied, p from the exact sign-flip permutation test (Monte-Carlo above 16 seeds), "
             "Holm-adjusted across every row of this table:", "",
             "| arm | metric | seeds | difference | won / lost / tied | p | p (Holm) |",
             "|---|---|---|---|---|---|---|"]
    for row in paired["comparisons"]:
        comparison = row["comparison"]
        if comparison is None:
            lines.append(f"| {row['arm']} | {row['metric']} | none shared | missing | | | |")
            continue
        lines.append(f"| {row['arm']} | {row['metric']} | {len(comparison['seeds'])} | "
                     f"{comparison['mean difference']:+.3f} ± {comparison['ci95']:.3f} | "
                     f"{comparison['wins']} / {comparison['losses']} / {comparison['ties']} | "
                     f"{comparison['p']:.3f} | {comparison['p holm']:.3f} |")
    if not paired["comparisons"]:
        lines.append(f"| (no finished run of the baseline {paired['baseline']} or of another arm) | | | | | | |")
    return "\n".join(lines)


def grid_markdown(report: dict[str, Any]) -> str:
    """The test-time-scaling table: each arm's policy sampled k times at every temperature of the grid."""
    k, temperatures = report["k"], report["temperatures"]
    grid_size = len(temperatures)
    headers = [f"best single T, pass@{k}", f"{k} samples spread over the grid", f"Pass@All ({k} per T)",
               f"vote on all {k * grid_size}", "early-exit vote", "samples saved by early exit"]
    lines = [f"Across temperatures {', '.join(f'{t:g}' for t in temperatures)} ({k} samples at each):", "",
             "| arm | " + " | ".join(headers) + " | best single T (per seed) |", "|---|" + "---|" * (len(headers) + 1)]
    not_applicable = None
    if "grid" in report["start"]:
        start = report["start"]["grid"]
        not_applicable = start.get("vote n/a")
        lines.append("| start (warmed-up policy) | " + " | ".join(
            "n/a" if start.get(m) is None else f"{start[m]:.3f}" for m in GRID_METRICS)
                     + f" | {start['best single T']:g} |")
    for arm, values in report["arms"].items():
        if "grid" not in values:
            continue
        grid = values["grid"]
        not_applicable = not_applicable or grid.get("vote n/a")
        cells = [_cell(grid[m], "n/a" if m in VOTE_METRICS and grid.get("vote n/a") else "missing")
                 for m in GRID_METRICS]
        best = ", ".join(f"{t:g}" for t in grid["best single T"])
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {best} |")
    if not_applicable:
        lines += ["", f"Vote columns n/a: {not_applicable}."]
    curves = {arm: values["grid"]["equal budget curve"] for arm, values in report["arms"].items()
              if "equal budget curve" in values.get("grid", {})}
    if curves:
        budgets = [point["samples"] for point in next(iter(curves.values()))]
        lines += ["", "pass@K at equal budget, K samples per prompt: best single temperature (chosen per run on the "
                  "scored prompts, which favours it) / K spread evenly over the grid:", "",
                  "| arm | " + " | ".join(f"K={k}" for k in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for arm, curve in curves.items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{p['best single T pass@k']['mean']:.3f} / {p['spread pass@k']['mean']:.3f}" for p in curve) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (by_step, by_rollouts), (rewards, bars) = axes
    k = report["k"]
    for arm, values in report["arms"].items():
        curve = values["curve"]
        for axis, x_key in ((by_step, "step"), (by_rollouts, "rollouts")):
            x = [p[x_key] for p in curve]
            mean = [p["pass@1 T=1"]["mean"] for p in curve]
            ci = [p["pass@1 T=1"]["ci95"] for p in curve]
            (line,) = axis.plot(x, mean, marker="o", markersize=3, label=arm)
            axis.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                              color=line.get_color(), alpha=0.15)
        steps, per_batch = zip(*values["reward_mean_over_seeds"]) if values["reward_mean_over_seeds"] else ((), ())
        window = max(1, len(per_batch) // 20)
        smoothed = [statistics.mean(per_batch[max(0, i - window + 1): i + 1]) for i in range(len(per_batch))]
        rewards.plot(steps, smoothed, label=arm)
    by_step.set(xlabel="training step", ylabel="held-out pass@1 at T=1", title="Held-out pass@1 (T=1) vs steps, 95% CI")
    by_rollouts.set(xlabel="rollouts (completions sampled)", ylabel="held-out pass@1 at T=1",
                    title="Held-out pass@1 (T=1) vs rollouts")
    rewards.set(xlabel="training step", ylabel="train reward (moving mean, mean of seeds)",
                title="Reward of each arm's own rollouts")
    names = [m.replace("@k", f"@{k}") for m in FINAL_METRICS]
    arms = list(report["arms"])
    width = 0.8 / (len(arms) + 1)
    bars.bar([x for x in range(len(names))], [report["start"][m] for m in FINAL_METRICS], width, label="start",
             color="lightgray")
    for i, arm in enumerate(arms, start=1):
        final = report["arms"][arm]["final"]
        bars.bar([x + i * width for x in range(len(names))], [final[m]["mean"] for m in FINAL_METRICS], width,
                 yerr=[final[m]["ci95"] for m in FINAL_METRICS], capsize=2, label=arm)
    bars.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, fontsize=9)
    bars.set(ylabel="held-out accuracy", title="After training (mean, 95% CI over seeds)")
    for axis in (by_step, by_rollouts, rewards, bars):
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    split = "validation" if report.get("split") == "validation" else "held-out"
    fig.suptitle(f"{report.get('held_out_prompts') or ''} {split} prompts, seeds {report['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bench_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="thermorl bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --field value is a recipe override applied to every arm (e.g. --max_steps 20).",
    )
    parser.add_argument("arms", help="arms file (YAML), e.g. benchmarks/testbed_arms.yaml")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/bench-<arms file name>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds instead of the arms file's")
    parser.add_argument("--arms", dest="only", nargs="+", default=None, help="run only these arms of the file")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one core each (default 1)")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="score on the held-out prompts (default) or on validation prompts carved out of the "
                             "training ones (RL leaves them out), to choose settings; instead of the arms file's "
                             "evaluation.split")
    parser.add_argument("--compare", nargs="+", default=None, metavar="METRIC",
                        help="metrics of the paired comparison with the baseline (default: pass@1 greedy and at "
                             "each evaluation temperature)")
    parser.add_argument("--report", action="store_true",
                        help="write the report from the runs finished so far (with their seeds) and run nothing")
    args, rest = parser.parse_known_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    spec = load_arms(args.arms)
    if args.split is not None:
        evaluation = spec["evaluation"]
        if args.split == "held_out":
            evaluation = {key: value for key, value in evaluation.items() if key != "validation_examples"}
        spec["evaluation"] = with_split(evaluation, args.split, "--split: evaluation")
    if args.compare is not None:
        unknown = [metric for metric in args.compare if metric not in comparable_metrics(spec["evaluation"])]
        if unknown:
            raise UserError(f"--compare: {unknown} are not metrics of this bench; choose from "
                            f"{comparable_metrics(spec['evaluation'])}")
    if args.seeds is not None:
        spec["seeds"] = _check_seeds(args.seeds, "--seeds")
    if args.only is not None:
        unknown = [arm for arm in args.only if arm not in spec["arms"]]
        if unknown:
            raise UserError(f"--arms: {unknown} not in the arms file, whose arms are {list(spec['arms'])}")
        spec["arms"] = {arm: spec["arms"][arm] for arm in args.only}
    extra = parse_overrides(rest)
    check_arms_share_start(spec, extra)
    out = Path(args.out or f"outputs/bench-{Path(args.arms).stem}")
    if args.report:
        missing = pending_runs(spec, out, extra)
        if len(missing) == len(spec["arms"]) * len(spec["seeds"]):
            raise UserError(f"--report: no finished run in {out} for these arms and seeds")
        print(f"bench: report from the finished runs in {out}; not finished: "
              + (", ".join(f"{arm} seed {seed}" for arm, seed, _, _ in missing) or "none"), flush=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        print(f"bench: warm-up and start evaluation (cached after the first run) -> {out}", flush=True)
    start = start_scores(spec, extra, out, cached_only=args.report)
    failed = [] if args.report else run_bench(spec, out, extra, args.jobs)
    report = aggregate(spec, out, start, args.compare)
    report["held_out_prompts"] = (validation_examples(spec["evaluation"])
                                  or run_plan(spec, next(iter(spec["arms"])), 0, extra, out)["recipe"].get("num_eval_examples"))
    _write_json(out / "report.json", report)
    table = markdown(report)
    (out / "report.md").write_text(table + "\n")
    if report["arms"]:
        plot(report, out / "bench.png")
    print(table)
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}" + (f", {out / 'bench.png'}" if report["arms"] else ""))
    if failed:
        print(f"bench: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run-plan":
        run_one(Path(sys.argv[2]))
    else:
        sys.exit(bench_command(sys.argv[1:]))
