"""The output folder of a run, checked before anything is trained or written.

- It must be writable (a read-only folder otherwise fails at the first checkpoint, minutes in).
- A new run does not start in a folder that holds another run's checkpoints: the Trainer would write its
  checkpoint-1, checkpoint-2, ... among the old ones and rotate the old ones away one by one, leaving a folder whose
  `latest` is the old run. The user resumes it (`resume_from_checkpoint: latest`), picks another folder, or sets
  `overwrite_output_dir: true`, which removes the old checkpoints first.
- `resume_from_checkpoint` must name a checkpoint that exists: `latest` in a folder without one is an error, not a
  silent start from scratch.
- Staging folders left by a save that was killed (trainers/atomic_checkpoint.py) are cleaned up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .trainers.atomic_checkpoint import clean_interrupted_saves
from .errors import UserError


def checkpoints_in(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
             and p.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def check_writable(output_dir: str | os.PathLike) -> None:
    """Raise ValueError when `output_dir` cannot be written to. A folder that does not exist yet is not made here
    (a run that then stops on a recipe mistake leaves nothing behind): its nearest existing parent must take a new
    folder, probed under a unique name so that processes of one launch do not race."""
    folder = Path(output_dir)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if existing == folder:
            with tempfile.TemporaryFile(dir=folder):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".thermorl-probe-"))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(f"output_dir '{output_dir}' cannot be written to ({reason}): choose another output_dir.") from None


def resolve_resume(training_args) -> str | None:
    """The checkpoint `resume_from_checkpoint` names ('latest': the newest in output_dir), or None for a new run."""
    requested, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    if requested in (None, "", False):
        return None
    if requested == "latest":
        checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if checkpoint is None:
            raise UserError(
                f"resume_from_checkpoint: latest, but output_dir '{output_dir}' holds no checkpoint-N folder to resume "
                "from: remove resume_from_checkpoint to start a new run."
            )
        return checkpoint
    if not Path(requested).is_dir():
        raise UserError(f"resume_from_checkpoint: '{requested}' is not a folder (a checkpoint-N folder or 'latest').")
    return str(requested)


def prepare_output_dir(training_args, overwrite: bool = False) -> str | None:
    """Check the output folder (see the module docstring); returns the checkpoint to resume from, or None."""
    output_dir = training_args.output_dir
    check_writable(output_dir)
    if training_args.process_index == 0:
        clean_interrupted_saves(output_dir)
    resume_from = resolve_resume(training_args)
    existing = checkpoints_in(output_dir)
    if resume_from is None and existing:
        if not overwrite:
            names = ", ".join(p.name for p in existing[-3:])
            raise UserError(
                f"output_dir '{output_dir}' already holds another run's checkpoints ({names}): resume it with "
                "`resume_from_checkpoint: latest`, choose another output_dir, or set `overwrite_output_dir: true` "
                "to replace them."
            )
        if training_args.process_index == 0:
            for checkpoint in existing:
                shutil.rmtree(checkpoint)
    return resume_from
