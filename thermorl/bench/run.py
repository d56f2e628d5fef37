"""One bench run, in its own process: train an (arm, seed) and score the policy on the held-out (or validation)
prompts; and the warmed-up policy's scores, the curves' step 0."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from ..errors import UserError, refusing_remote_code
from .arms import OPTIONAL_START_KEYS, START_KEYS, checkpoint_steps, run_plan, validation_examples

# Final metrics of a run, in the order the report shows them.
FINAL_METRICS = ("pass@1 greedy", "pass@1 T=1", "pass@k T=1", "worst@k T=1")
# Final metrics across the evaluation's temperature grid (k samples per temperature), in report order.
GRID_METRICS = ("best single T pass@k", "spread pass@k", "pass@all", "vote all samples", "vote early exit",
                "vote samples saved")
VOTE_METRICS = ("vote all samples", "vote early exit", "vote samples saved")
VOTE_NOT_APPLICABLE = ("the task's answers are not canonical (a problem has many correct answers that vote apart), so "
                       "vote accuracy and early exit measure the task's answer format, not the policy")


def scored_rows(script_args, seed: int, evaluation: dict[str, Any]):
    """(rows scored, held-out rows, task): the held-out rows, or with split validation the validation rows carved
    out of the training rows (the training run leaves them out: run_one passes the same count to build_trainer)."""
    from ..recipe_inputs import build_datasets

    train, held_out, task = build_datasets(script_args, seed)
    if task is None:
        raise UserError(f"dataset {script_args.dataset!r}: bench needs a built-in task as the recipe's dataset: it "
                        "scores held-out prompts with its verifier")
    rows = held_out
    if validation_examples(evaluation):
        _, rows = task.carve_validation(train, validation_examples(evaluation))
    return [dict(row) for row in rows], held_out, task


def held_out_scores(model, tokenizer, rows, task, evaluation: dict[str, Any], samples: int, max_new_tokens: int,
                    chat_template_kwargs: dict[str, Any] | None = None):
    """(scores, grid, outcomes): greedy pass@1 (one completion per prompt: greedy decoding is deterministic) and
    pass@1 / pass@k / worst@k from `samples` samples at T=1; with the evaluation's temperature grid (which includes
    1.0) and more than one sample, the T=1 samples are the grid's and `grid` is its test-time-scaling summary, else
    None; `outcomes` are the per-prompt counts behind them (prompt_outcomes)."""
    from ..evaluation.metrics import single_temperature_pass_at_k
    from ..evaluation.pipeline import as_verifier, score
    from ..evaluation.sampling import sample_completions

    from ..tasks.prompt_lengths import prompt_text

    temperatures = evaluation["temperatures"] if evaluation["temperatures"] and samples > 1 else [1.0]
    # A chat task's prompts are rendered through the chat template as training renders them (the recipe's
    # chat_template_kwargs); a text prompt is used as it is.
    prompts = [prompt_text(row["prompt"], tokenizer, chat_template_kwargs) for row in rows]
    verifier = as_verifier(task, list(rows[0]))
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
    outcomes = prompt_outcomes(prompts, temperatures, greedy, correct)
    if len(temperatures) == 1:
        return scores, None, outcomes
    return scores, grid_summary(temperatures, answers, correct, evaluation, task.canonical_answers), outcomes


def prompt_outcomes(prompts: list[str], temperatures: list[float], greedy, correct) -> dict[str, Any]:
    """Per prompt, in the scored order: whether the greedy completion is right (0 or 1) and how many of the
    `samples` samples at each temperature are ("T=t"). Every pass@1, pass@k, worst@k and Pass@All number of a run is
    a mean over prompts of a function of these counts (report.prompt_scores), so the report can resample prompts.
    `prompts_sha256` names the prompt list, so that runs are paired prompt by prompt only on the same prompts."""
    return {"prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
            "samples": len(correct[0][0]),
            "correct": {"greedy": [int(question[0][0]) for question in greedy],
                        **{f"T={t:g}": [sum(question[i]) for question in correct]
                           for i, t in enumerate(temperatures)}}}


def grid_summary(temperatures, answers, correct, evaluation: dict[str, Any], canonical_answers: bool) -> dict[str, Any]:
    """Test-time scaling across the temperature grid from k samples at each (evaluation/ does the counting).

    At equal samples: k samples spread evenly over the grid vs the best single temperature's pass@k (the best chosen
    on these same prompts, which favours it), and that comparison at every budget up to k ("equal budget curve").
    Pass@All: solved by some sample at some temperature (k per temperature). With canonical answers (the task's
    `canonical_answers`), voting on the answers of all k x T samples vs the early-exit vote replayed on them, and
    the share of samples the early exit leaves undrawn; without, the vote metrics are None and "vote n/a" says why
    (the votes split over distinct correct answers, so agreement, and early exit, measure the task, not the policy).
    """
    from ..evaluation.metrics import majority_vote, voted_answer_correct
    from ..evaluation.report import summarize
    from ..evaluation.voting import RecordedAnswers, multi_temperature_vote

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


def training_signals(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Every numeric metric of the trainer's per-step log lines (reward spread, ratio distribution, entropy, ...):
    its mean over the run and over the run's last quarter of log lines (NaN entries skipped)."""
    lines = [entry for entry in history if "step" in entry and "train_runtime" not in entry]
    names = sorted({name for entry in lines for name, value in entry.items()
                    if name not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool)})
    signals = {}
    for name in names:
        values = [float(entry[name]) for entry in lines if name in entry and entry[name] == entry[name]]
        if values:
            signals[name] = {"mean": statistics.mean(values),
                             "last quarter": statistics.mean(values[len(values) - max(1, len(values) // 4):])}
    return signals


def run_one(plan_path: Path) -> None:
    """Train one (arm, seed) and write its result JSON next to the plan."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from ..recipe import load_recipe
    from ..recipe_inputs import resolve_model_path
    from ..trainer_factory import build_trainer

    # The scheduler's thread count for each run (bench --threads, default 1), set in this process's environment.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    plan = json.loads(plan_path.read_text())
    evaluation = plan["evaluation"]
    model_args, training_args, script_args = load_recipe(plan["recipe"])
    rows, held_out, task = scored_rows(script_args, training_args.seed, evaluation)
    new_tokens, template = training_args.max_completion_length, training_args.chat_template_kwargs
    # The checkpoints before the last that are scored in full (evaluation.last_checkpoints; none by default).
    earlier_checkpoints = checkpoint_steps(training_args.max_steps, evaluation)[:-1]

    class HeldOutCurve(TrainerCallback):
        """Held-out pass@1 (greedy, and one sample at T=1) every `every` steps; at the checkpoints scored in full and
        at the last step, the point is that evaluation's (k samples at each temperature), so the curve ends where
        the final metrics are."""

        def __init__(self):
            self.points, self.checkpoints = [], []

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step % evaluation["every"] or state.global_step == state.max_steps:
                return
            if state.global_step in earlier_checkpoints:
                scores, grid, outcomes = held_out_scores(model, processing_class, rows, task, evaluation,
                                                         evaluation["samples"], new_tokens, template)
                self.checkpoints.append({"step": state.global_step, "final": scores, "grid": grid,
                                         "prompt_outcomes": outcomes})
            else:
                scores, _, _ = held_out_scores(model, processing_class, rows, task, evaluation, 1, new_tokens, template)
            self.points.append({"step": state.global_step, "pass@1 greedy": scores["pass@1 greedy"],
                                "pass@1 T=1": scores["pass@1 T=1"]})

    curve = HeldOutCurve()
    started = time.perf_counter()
    # The weights build_trainer starts from (the same call: a warmed-up tiny model is cached by then).
    weights = start_weights(resolve_model_path(model_args.model_name_or_path, script_args, held_out))
    trainer = build_trainer(model_args, training_args, script_args, callbacks=[curve],
                            validation_examples=validation_examples(evaluation))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    train_seconds = time.perf_counter() - started
    final, grid, outcomes = held_out_scores(trainer.model, trainer.processing_class, rows, task, evaluation,
                                            evaluation["samples"], new_tokens, template)
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
        "training": training_signals(history),
        "final": final,
        "grid": grid,
        "prompt_outcomes": outcomes,
        # The earlier checkpoints scored in full, oldest first (the last one is "final").
        "checkpoints": curve.checkpoints,
        "start_weights": weights,
        "environment": environment(),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(plan_path.with_name(plan_path.name.removesuffix(".plan.json") + ".json"), result)


def environment() -> dict[str, Any]:
    """What a run's numbers may depend on beyond its plan: library versions, the code's commit, the CPU, torch's
    thread count and the accelerator, recorded in every run JSON (two machines' runs are not exchangeable)."""
    import importlib.metadata

    import torch

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:  # not Linux: platform's name
        pass
    return {"torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
            "trl": importlib.metadata.version("trl"), "thermorl": __version__, "thermorl_commit": _commit(),
            "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _commit() -> str | None:
    """The commit the thermorl source is at (uncommitted edits are not detected), None outside a git checkout."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def start_weights(model_path: str) -> dict[str, Any]:
    """The start model's weights: SHA-256 of its safetensors file (of the files' "name hash" lines, in name order,
    when sharded), or why there is none, so that a report says which weights its runs started from."""
    from ..models.smollm2 import sha256_of

    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return {"path": model_path, "sha256": None, "why": "not a local folder with safetensors weights"}
    if len(files) == 1:
        return {"path": model_path, "sha256": sha256_of(files[0])}
    lines = "".join(f"{file.name} {sha256_of(file)}\n" for file in files)
    return {"path": model_path, "sha256": hashlib.sha256(lines.encode()).hexdigest(), "files": len(files)}


def start_scores(spec: dict[str, Any], extra: dict[str, Any], out: Path,
                 cached_only: bool = False, threads: int = 1) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(scores, weights): the warmed-up policy's held-out scores (the curves' step 0), computed once per bench and
    cached, and its start_weights (None in a cache written before they were recorded: not guessed from the model
    there now, which may have been rebuilt since)."""
    path = out / "start.json"
    plan = run_plan(spec, next(iter(spec["arms"])), spec["seeds"][0], extra, out / "start")
    # Which checkpoints the runs score does not change the start's scores.
    evaluation = {key: value for key, value in spec["evaluation"].items() if key != "last_checkpoints"}
    key = {k: plan["recipe"].get(k) for k in START_KEYS} | {"evaluation": evaluation}
    key |= {k: plan["recipe"][k] for k in OPTIONAL_START_KEYS if plan["recipe"].get(k) is not None}
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["scores"], stored.get("start_weights")
    if cached_only:
        raise UserError(f"{path} is missing or was made with other settings: run the bench (without --report) first")
    import torch

    from ..evaluation import load_policy
    from ..recipe import load_recipe
    from ..recipe_inputs import ALLOW_REMOTE_CODE, resolve_model_path

    torch.set_num_threads(threads)
    model_args, training_args, script_args = load_recipe(plan["recipe"])
    rows, held_out, task = scored_rows(script_args, training_args.seed, evaluation)
    model_path = resolve_model_path(model_args.model_name_or_path, script_args, held_out)
    with refusing_remote_code(model_path, ALLOW_REMOTE_CODE, training_args.trust_remote_code):
        model, tokenizer = load_policy(model_path, device="cpu", dtype="float32",
                                       trust_remote_code=training_args.trust_remote_code)
    scores, grid, _ = held_out_scores(model, tokenizer, rows, task, evaluation, evaluation["samples"],
                                      training_args.max_completion_length, training_args.chat_template_kwargs)
    if grid is not None:
        scores["grid"] = grid
    weights = start_weights(model_path)
    write_json(path, {"key": key, "model": model_path, "scores": scores, "start_weights": weights})
    return scores, weights


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
