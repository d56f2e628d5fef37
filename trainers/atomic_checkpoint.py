"""Atomic checkpoints: `checkpoint-N` appears under its name only once every part of it is on disk.

transformers' Trainer (5.23) writes `output_dir/checkpoint-N` in place, part after part (weights, optimizer,
scheduler, RNG states, trainer_state.json), and `get_last_checkpoint` takes the highest N whose folder exists. A
process killed mid-save therefore leaves a partial `checkpoint-N` that `resume_from_checkpoint` picks up and
fails on, or loads without its optimizer state. Here the parts go to `output_dir/.saving-checkpoint-N/checkpoint-N`,
which `get_last_checkpoint` does not match, and are renamed into place once every rank has finished writing: a
rename inside one filesystem is atomic, so `checkpoint-N` is either complete or absent.
"""

from __future__ import annotations

import os
import shutil

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

# Neither name matches the Trainer's `checkpoint-N` patterns (resume, rotation), so a crash leaves them inert.
STAGING_PREFIX = ".saving-"
REPLACED_PREFIX = ".replaced-"


class AtomicCheckpointMixin:
    """Put first in the trainer's bases. Every `_save_checkpoint` below it in the MRO (TRL's, VAS's sampler state)
    writes wherever `self._get_output_dir(trial)` points, which during a save is the staging folder."""

    _staging_run_dir: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        if self.args.push_to_hub:  # the hub upload runs in the background from the folder it was handed
            return super()._save_checkpoint(model, trial)
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_run_dir = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:  # a save that crashed at this step before left its parts here
            shutil.rmtree(staging_run_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging_run_dir
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        self.accelerator.wait_for_everyone()  # DeepSpeed: every rank has written its shards
        written, final = os.path.join(staging_run_dir, name), os.path.join(run_dir, name)
        # The Trainer records this step as the best checkpoint under the folder it wrote; point at the final one.
        best_is_this_step = self.state.best_model_checkpoint is not None and (
            os.path.abspath(self.state.best_model_checkpoint) == os.path.abspath(written)
        )
        if best_is_this_step:
            self.state.best_model_checkpoint = final
        if self.args.should_save:
            if best_is_this_step:
                self.state.save_to_json(os.path.join(written, TRAINER_STATE_NAME))
            publish(written, final)
            shutil.rmtree(staging_run_dir)
            # The Trainer rotated old checkpoints inside the staging folder, where there were none.
            rotate_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True
            )
        self.accelerator.wait_for_everyone()


def publish(written: str, final: str) -> None:
    """Rename the finished checkpoint into place, replacing one of the same step as the Trainer would overwrite it."""
    if not os.path.exists(final):
        os.replace(written, final)
        return
    replaced = os.path.join(os.path.dirname(final), REPLACED_PREFIX + os.path.basename(final))
    shutil.rmtree(replaced, ignore_errors=True)
    os.replace(final, replaced)
    os.replace(written, final)
    shutil.rmtree(replaced)
