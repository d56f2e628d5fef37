"""`thermorl train RECIPE`: the run around the trainer (trainer_factory.py) a recipe builds: launch checks, the
output folder and its lock, resume, reporting, training, the final save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError
from .recipe_inputs import write_held_out
from .trainer_factory import build_trainer


def train(model_args, training_args, script_args, callbacks: list | None = None,
          recipe_values: dict[str, Any] | None = None):
    """Run training; returns the trainer (its state holds the log history), or None when `resume_from_checkpoint`
    names a checkpoint already at the run's last step (said in one line; nothing is trained or written).
    `recipe_values` (from `resolve_recipe`) is kept in the output folder as thermorl_recipe.yaml, for resume and
    `thermorl eval`; a resumed run must keep the settings it was started with (run_recipe.FREE_ON_RESUME lists
    those it may change). A Ctrl-C during training becomes a KeyboardInterrupt whose message names the newest
    checkpoint and how to resume."""
    if not training_args.model_init_kwargs and model_args.model_name_or_path is None:
        raise UserError("The recipe needs model_name_or_path (a local folder, a hub name, or 'thermorl:tiny').")
    # Launch settings checked against the machine; W&B offline (and says so) when no API key is set.
    from . import threads
    from .console import log_to_run_folder, quiet_trainer
    from .launch_checks import check_launch
    from .run_dir import final_save_done, finished_at, interrupted_line, prepare_output_dir, remove_previous_run
    from .run_recipe import check_resume_settings, write_run_recipe
    from .tracking import prepare_reporting

    check_launch(model_args, training_args)
    # The output folder checked (no run or model overwritten, `latest` must exist and be complete) and locked for
    # this run; third-party logs go to its thermorl.log, and the `thermorl` command picks the faster CPU thread
    # count for this model.
    resume_from, lock = prepare_output_dir(training_args, overwrite=script_args.overwrite_output_dir,
                                           model_name_or_path=model_args.model_name_or_path)
    final_save_only = False  # the run reached its last step, but its final save did not complete
    try:
        if resume_from is not None:
            complete = finished_at(resume_from, training_args)
            if complete is not None and final_save_done(training_args.output_dir, resume_from):
                if lock is not None:
                    lock.release()
                    print(complete, flush=True)
                return None
            final_save_only = complete is not None
            note = check_resume_settings(resume_from, recipe_values)
            if note is not None and training_args.process_index == 0:
                print(note, flush=True)
        callbacks = [*(callbacks or []), *prepare_reporting(training_args)]
        threads.use_fastest_before_warmup(model_args, training_args, script_args.tiny_model_size)
        trainer = build_trainer(model_args, training_args, script_args, callbacks)
    except BaseException:
        if lock is not None:  # a recipe mistake leaves no folder behind
            lock.release(remove_new_folder=True)
        raise
    try:
        # After the data and model are resolved, so that a recipe mistake leaves no folder behind; the records
        # kept in memory until now are written first.
        if resume_from is None and script_args.overwrite_output_dir and training_args.process_index == 0:
            remove_previous_run(training_args.output_dir)
        log_to_run_folder(training_args.output_dir)
        quiet_trainer(trainer)
        threads.use_fastest(trainer.model, training_args.per_device_train_batch_size)
        if trainer.accelerator.is_main_process:
            write_held_out(
                training_args.output_dir, script_args,
                script_args.dataset_seed if script_args.dataset_seed is not None else training_args.seed,
            )
            # A resumed run's recipe describes its final model: written with it, so that a final save that fails
            # leaves the folder's model, recipe and model card as they were.
            if recipe_values is not None and resume_from is None:
                write_run_recipe(training_args.output_dir, recipe_values)
        if final_save_only:
            load_final_state(trainer, resume_from)
        else:
            try:
                trainer.train(resume_from_checkpoint=resume_from)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(interrupted_line(training_args, trainer.state.global_step)) from None
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
        if trainer.accelerator.is_main_process and recipe_values is not None and resume_from is not None:
            write_run_recipe(training_args.output_dir, recipe_values)
        if final_save_only and lock is not None:
            print(f"The run had reached step {trainer.state.global_step}, but its final save had not completed: the "
                  f"final model is saved now from {resume_from}.", flush=True)
    finally:
        if lock is not None:
            lock.release()
    return trainer


def load_final_state(trainer, checkpoint: str) -> None:
    """The model and trainer state of a checkpoint at the run's last step, for the final save it is missing."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_callback import TrainerState

    from .trainers.trl_surface import load_checkpoint_weights

    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:  # their weights load only inside train()
        raise UserError(f"resume_from_checkpoint '{checkpoint}' is at the run's last step, but the run's final save "
                        "did not complete, and under DeepSpeed or FSDP it cannot be redone from the checkpoint: raise "
                        "max_steps by one to train on and save, or load the checkpoint folder itself")
    load_checkpoint_weights(trainer, checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
