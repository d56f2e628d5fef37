"""Atomic checkpoints: `checkpoint-N` appears under its name only once every part of it is on disk.

transformers' Trainer (5.23) writes `output_dir/checkpoint-N` in place, part after part (weights, optimizer,
scheduler, RNG states, trainer_state.json), and `get_last_checkpoint` takes the highest N whose folder exists. A
process killed mid-save therefore leaves a partial `checkpoint-N` that `resume_from_checkpoint` picks up and
fails on, or loads without its optimizer state. Here the parts go to `output_dir/.saving-checkpoint-N/checkpoint-N`,
which `get_last_checkpoint` does not match, and are renamed into place once every rank has finished writing: a
rename inside one filesystem is atomic, so `checkpoint-N` is either complete or absent. The final model goes through
`output_dir/.saving-model` the same way, file by file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from ..errors import DiskFullError

# Neither name matches the Trainer's `checkpoint-N` patterns (resume, rotation), so a crash leaves them inert.
STAGING_PREFIX = ".saving-"
REPLACED_PREFIX = ".replaced-"
FINAL_MODEL = "model"  # the final save_model's staging folder is STAGING_PREFIX + FINAL_MODEL
# In each checkpoint: every file the save wrote there, with its size. A resume refuses a checkpoint that has lost one
# (thermorl.run_dir.damaged_file): without optimizer.pt, say, the Trainer would go on with a fresh optimizer state.
CHECKPOINT_FILES = "thermorl_checkpoint_files.json"


class AtomicCheckpoints:
    """The trainer's checkpoint-writing component. During a save, the trainer's `_get_output_dir` returns
    `staging_run_dir` when it is set, so everything written into the checkpoint (TRL's parts and the other
    components' state) lands in the staging folder."""

    def __init__(self, args, accelerator):
        self.args = args
        self.accelerator = accelerator
        self.staging_run_dir: str | None = None

    def save_checkpoint(self, write, run_dir: str, state) -> None:
        """`write()` writes checkpoint-{state.global_step} under the trainer's output dir; here it writes it staged,
        then renames it into `run_dir` once every rank is done."""
        if self.args.push_to_hub:  # the hub upload runs in the background from the folder it was handed
            return write()
        name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        staging_run_dir = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:  # a save that crashed at this step before left its parts here
            shutil.rmtree(staging_run_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.staging_run_dir = staging_run_dir
        try:
            write()
        except Exception as error:  # safetensors' SafetensorError is neither an OSError nor a RuntimeError
            if not is_disk_full(error):
                raise
            shutil.rmtree(staging_run_dir, ignore_errors=True)  # frees the space the partial save took
            raise DiskFullError(
                f"The disk holding output_dir '{run_dir}' is full: {name} could not be written (nothing of it was "
                f"kept); {after_disk_full(run_dir)}"
            ) from error
        finally:
            self.staging_run_dir = None
        self.accelerator.wait_for_everyone()  # DeepSpeed: every rank has written its shards
        written, final = os.path.join(staging_run_dir, name), os.path.join(run_dir, name)
        # The Trainer records this step as the best checkpoint under the folder it wrote; point at the final one.
        best_is_this_step = state.best_model_checkpoint is not None and (
            os.path.abspath(state.best_model_checkpoint) == os.path.abspath(written)
        )
        if best_is_this_step:
            state.best_model_checkpoint = final
        if self.args.should_save:
            if best_is_this_step:
                state.save_to_json(os.path.join(written, TRAINER_STATE_NAME))
            list_files(written)
            publish(written, final)
            shutil.rmtree(staging_run_dir)
            # The Trainer rotated old checkpoints inside the staging folder, where there were none.
            rotate_checkpoints(run_dir, self.args.save_total_limit, state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_model(self, write, output_dir: str | None, one_writer: bool) -> None:
        """The final model (any save_model not made for a checkpoint): `write(folder)` writes it to a staging folder,
        whose files are renamed into `output_dir` once all are written, so a full disk while writing leaves what was
        there before intact. (File by file: unlike a checkpoint's, a kill between two renames can leave old and new
        files.) `one_writer` False (FSDP, ZeRO-3 without gathered weights: every rank writes shards): written in
        place."""
        if self.args.push_to_hub or not one_writer:
            return write(output_dir)
        output_dir = output_dir or self.args.output_dir
        staging = os.path.join(output_dir, STAGING_PREFIX + FINAL_MODEL)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            write(staging)
        except Exception as error:  # safetensors' SafetensorError is neither an OSError nor a RuntimeError
            if not is_disk_full(error):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            raise DiskFullError(
                f"The disk holding output_dir '{output_dir}' is full: the final model could not be written (what was "
                f"there is unchanged); {after_disk_full(output_dir)}"
            ) from error
        self.accelerator.wait_for_everyone()  # DeepSpeed: every rank has taken part in gathering the weights
        if self.args.should_save and os.path.isdir(staging):
            for name in os.listdir(staging):
                target = os.path.join(output_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()


def final_save_has_one_writer(trainer) -> bool:
    """Whether the main process alone writes the final model. FSDP and ZeRO-3 without gathering the 16-bit
    weights write shards from every rank (on every node): those saves stay where the Trainer puts them."""
    if trainer.is_fsdp_enabled:
        return False
    if trainer.is_deepspeed_enabled:
        zero = trainer.accelerator.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        return zero.get("stage") != 3 or bool(zero.get("stage3_gather_16bit_weights_on_model_save"))
    return True


def list_files(checkpoint: str) -> None:
    """Write CHECKPOINT_FILES: each file under `checkpoint` (relative path) and its size."""
    files = {}
    for folder, _, names in os.walk(checkpoint):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, checkpoint)] = os.path.getsize(path)
    with open(os.path.join(checkpoint, CHECKPOINT_FILES), "w") as handle:
        json.dump({"files": dict(sorted(files.items()))}, handle, indent=1)


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


# torch.save reports a short write (ENOSPC inside its zip writer) as "unexpected pos N vs M"; safetensors raises its
# own SafetensorError (an Exception) with the OS error's text and number.
_SHORT_WRITE = re.compile(r"unexpected pos \d+ vs \d+")
_OS_ERROR_TEXT = re.compile(rf"No space left on device|Disk quota exceeded|os error ({errno.ENOSPC}|{errno.EDQUOT})\b")


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC / EDQUOT as an OSError, in torch's zip writer's or safetensors' error text, anywhere in the chain."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and _SHORT_WRITE.search(str(error)):
            return True
        if not isinstance(error, OSError) and _OS_ERROR_TEXT.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def newest_checkpoint(run_dir: str) -> str | None:
    return get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None


def after_disk_full(run_dir: str) -> str:
    """What to do once space is freed: resume from the newest complete checkpoint, or start again without one."""
    checkpoint = newest_checkpoint(run_dir)
    if checkpoint is None:
        return "no checkpoint was written before it, so there is nothing to resume: free space, then start the run again."
    return f"the newest complete checkpoint is {checkpoint}: free space, then resume with `resume_from_checkpoint: latest`."


def clean_interrupted_saves(run_dir: str) -> None:
    """Remove what a save killed midway left in `run_dir`: its staging folders, and, where it was killed between
    the two renames of `publish`, put the replaced checkpoint back under its name."""
    if not os.path.isdir(run_dir):
        return
    for entry in os.listdir(run_dir):
        path = os.path.join(run_dir, entry)
        if entry.startswith(REPLACED_PREFIX + PREFIX_CHECKPOINT_DIR):
            final = os.path.join(run_dir, entry.removeprefix(REPLACED_PREFIX))
            if os.path.exists(final):
                shutil.rmtree(path)
            else:
                os.replace(path, final)
        elif entry.startswith(STAGING_PREFIX + PREFIX_CHECKPOINT_DIR) or entry == STAGING_PREFIX + FINAL_MODEL:
            shutil.rmtree(path)
