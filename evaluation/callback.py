"""A TrainerCallback that runs a small multi-temperature evaluation every N optimizer steps.

The numbers go through `trainer.log`, so they reach every `report_to` integration (W&B,
TensorBoard, ...) and `state.log_history`. Keys start with "eval_", which those integrations file
under "eval/": e.g. eval/multitemp/pass_at_all, eval/multitemp/accuracy_t0.6.

Usage, following TRL's own callbacks that need the trainer (e.g. LogCompletionsCallback):

    trainer = GRPOTrainer(...)
    trainer.add_callback(MultiTemperatureEvalCallback(trainer, eval_dataset, task, every_n_steps=50))

Every process runs the evaluation on the same questions (under ZeRO-3 all ranks must take part
in each forward pass); sampling uses its own seed and leaves the training RNG untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from .pipeline import as_verifier, check_settings, check_temperatures, dataset_rows, evaluate


class MultiTemperatureEvalCallback(TrainerCallback):
    """Evaluate `dataset` at `temperatures` with `samples` each every `every_n_steps` steps; see the module doc."""

    def __init__(
        self,
        trainer,
        dataset,
        task_or_verifier=None,
        temperatures: Sequence[float] = (0.0, 0.6, 1.0),
        samples: int = 4,
        every_n_steps: int = 100,
        max_new_tokens: int = 128,
        batch_size: int = 64,
        seed: int = 0,
        vote_threshold: float = 0.8,
        prefix: str = "eval_multitemp/",
    ):
        check_settings(
            vote_threshold,
            samples=samples,
            every_n_steps=every_n_steps,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        self.temperatures = check_temperatures(temperatures)
        self.rows = dataset_rows(dataset)
        self.verifier = as_verifier(task_or_verifier, list(self.rows[0]))
        self.trainer = trainer
        self.samples = samples
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.vote_threshold = vote_threshold
        self.prefix = prefix

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps != 0:
            return
        model = kwargs["model"]
        was_training = model.training
        model.eval()
        try:
            report = evaluate(
                model,
                kwargs["processing_class"],
                self.rows,
                self.verifier,
                self.temperatures,
                self.samples,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                seed=self.seed,
                vote_threshold=self.vote_threshold,
                progress=False,
            )
            # Logged while the model is in eval mode: TRL trainers then treat this as an evaluation log
            # and leave their running training-metric averages for the next regular log.
            should_log = control.should_log
            self.trainer.log(self.metrics(report))
            # trainer.log clears control.should_log; the trainer's own log due at this step must still happen.
            control.should_log = should_log
        finally:
            model.train(was_training)
        return control

    def metrics(self, report: dict[str, Any]) -> dict[str, float]:
        """Flat scalars of a report, keyed with the prefix."""
        full = str(report["samples_per_temperature"])
        metrics = {
            "pass_at_all": report["pass_at_all"],
            f"best_single_pass_at_{full}": report["best_single_temperature"]["pass_at_k"],
            f"spread_pass_at_{full}": report["equal_budget_curve"][-1]["spread_over_temperatures"],
            "best_single_temperature": report["best_single_temperature"]["temperature"],
            "vote_accuracy": report["voting"]["accuracy"],
            "vote_samples_used_fraction": report["voting"]["samples_used_fraction"],
        }
        for row in report["per_temperature"]:
            suffix = f"t{row['temperature']:g}"
            metrics[f"accuracy_{suffix}"] = row["accuracy"]
            metrics[f"pass_at_{full}_{suffix}"] = row["pass_at_k"][full]
            metrics[f"maj_at_{full}_{suffix}"] = row["maj_at_k"][full]
        return {self.prefix + name: value for name, value in metrics.items()}
