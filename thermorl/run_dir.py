"""The output folder of a run, checked before anything is trained or written.

- It must be writable (a read-only folder otherwise fails at the first checkpoint, minutes in).
- It must not be the model being trained (`model_name_or_path`), nor hold it in one of its checkpoint-N folders:
  the final save would overwrite the base model's weights, checkpoint rotation would delete them.
- One run at a time: the run's main process holds a lock (fcntl.flock on the folder) for the whole run, and a
  second run started on the same folder is refused with a line naming the first (`.thermorl-run.lock` in the folder
  holds its pid, host, start time and command while it runs). The operating system drops the lock when its process
  ends, however it ends, so a killed run never blocks the next one.
- A new run does not start in a folder that holds another run (its checkpoint-N folders or its saved final model):
  the Trainer would write among the old checkpoints and rotate them away, and the final save would replace the old
  model. The user resumes it (`resume_from_checkpoint: latest`), picks another folder, or sets
  `overwrite_output_dir: true`, which removes the old checkpoints and model files first.
- `resume_from_checkpoint` must name a checkpoint that exists (`latest` in a folder without one is an error, not a
  silent start from scratch) and that is complete: every safetensors and torch file whole, trainer_state.json
  readable. A damaged one is named with the newest complete checkpoint before it.
- Resuming a checkpoint that is already at max_steps trains nothing (the Trainer would take one more step, save
  and rotate a checkpoint away).
- Staging folders left by a save that was killed (trainers/atomic_checkpoint.py) are cleaned up.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME,
)

from .errors import UserError
from .trainers.atomic_checkpoint import clean_interrupted_saves

LOCK_FILE = ".thermorl-run.lock"
# A finished run's final save: any of these in output_dir means a model is there (a new run would replace it).
SAVED_MODEL_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                     ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, TRAINER_STATE_NAME)
SHARDED_WEIGHTS = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")
# Removed with them by overwrite_output_dir, so that no file of the old model is left beside the new one.
MODEL_SIDE_FILES = (CONFIG_NAME, GENERATION_CONFIG_NAME, "adapter_config.json", TRAINING_ARGS_NAME)


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """N of a `checkpoint-N` folder, else None."""
    prefix, _, step = Path(folder).name.rpartition("-")
    return int(step) if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() else None


def checkpoints_in(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None), key=checkpoint_step)


def saved_model_files(output_dir: str | os.PathLike) -> list[Path]:
    """The files of a final model (and trainer state) a finished run saved in `output_dir`."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name in SAVED_MODEL_FILES or SHARDED_WEIGHTS.fullmatch(p.name)))


def check_writable(output_dir: str | os.PathLike) -> None:
    """Raise UserError when `output_dir` cannot be written to. A folder that does not exist yet is not made here:
    its nearest existing parent must take a new folder, probed under a unique name so that processes of one launch
    do not race."""
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


def check_not_the_model(output_dir: str | os.PathLike, model_name_or_path: str | None,
                        output_field: str = "output_dir") -> None:
    """The run must not write over the model it trains: output_dir is not the model's folder (however spelled), and
    the model is not in one of output_dir's checkpoint-N folders (rotation and overwrite_output_dir remove those).
    `output_field` names the setting in the message (`thermorl export` writes to --out)."""
    if not model_name_or_path or not Path(model_name_or_path).expanduser().is_dir():
        return  # a hub name, or thermorl:tiny (built in the cache)
    model = Path(os.path.realpath(Path(model_name_or_path).expanduser()))
    output = Path(os.path.realpath(Path(output_dir).expanduser()))
    if model == output:
        raise UserError(f"{output_field} '{output_dir}' is the folder of the model '{model_name_or_path}' "
                        f"(model_name_or_path): this would overwrite the model it starts from; choose another "
                        f"{output_field}.")
    if output in model.parents and model.relative_to(output).parts[0].startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
        raise UserError(f"model_name_or_path '{model_name_or_path}' is a checkpoint inside output_dir '{output_dir}', "
                        "which this run's checkpoint rotation could delete: choose another output_dir (or resume "
                        "that run with `resume_from_checkpoint`).")


class RunLock:
    """The lock a run's main process holds on its output folder (see the module docstring). The lock is on the
    folder itself; LOCK_FILE beside it says who holds it and is removed when the run ends, so a refused or finished
    run leaves the folder as it was."""

    def __init__(self, output_dir: str | os.PathLike):
        folder = Path(output_dir)
        # The folders this lock creates are removed again if the run stops before training (a recipe mistake
        # leaves nothing behind).
        self._created = next((p for p in (*reversed(folder.parents), folder) if not p.exists()), None)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._folder_fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self._folder_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._folder_fd)
            record = folder / LOCK_FILE
            holder = " ".join(record.read_text().split()) if record.is_file() else ""
            raise UserError(f"output_dir '{output_dir}' is in use by another run "
                            f"({holder or 'one that has not written its record yet'}): wait for it to end, or choose "
                            "another output_dir.") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        (folder / LOCK_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n")

    def release(self, remove_new_folder: bool = False) -> None:
        """Drop the lock; with `remove_new_folder`, remove the folders it created if nothing was written in them."""
        if self._folder_fd is None:
            return
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        os.close(self._folder_fd)
        self._folder_fd = None
        if remove_new_folder and self._created is not None and not os.listdir(self.folder):
            folder = self.folder
            while True:
                os.rmdir(folder)
                if folder == self._created:
                    break
                folder = folder.parent


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


def _safetensors_problem(path: Path) -> str | None:
    """Whether the file is as long as its header says (8-byte header length, JSON header, then the tensors)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else None
        if length is None or 8 + length > size:
            return f"is truncated ({size} bytes, shorter than its header)"
        try:
            header = json.loads(handle.read(length))
            end = 8 + length + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "has an unreadable header"
    return None if end == size else f"is {size} bytes where its header says {end}"


def _torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive; a truncated one has lost its central directory (read from the end)."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                return "is truncated"
    except (zipfile.BadZipFile, OSError):
        return "is truncated or not a file torch.save wrote"
    return None


def damaged_file(checkpoint: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint folder ('optimizer.pt is truncated'), or None when it is complete."""
    folder = Path(checkpoint)
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"{TRAINER_STATE_NAME} is missing"
    try:
        json.loads(state.read_text())
    except ValueError as error:
        return f"{TRAINER_STATE_NAME} is not valid JSON ({error})"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(path)
        else:
            continue
        if problem:
            return f"{path.relative_to(folder)} {problem}"
    return None


def check_checkpoint(checkpoint: str) -> None:
    """Refuse a damaged checkpoint before anything loads it, naming the newest complete one before it."""
    problem = damaged_file(checkpoint)
    if problem is None:
        return
    step = checkpoint_step(checkpoint)
    earlier = [c for c in checkpoints_in(Path(checkpoint).parent) if step is None or checkpoint_step(c) < step]
    complete = next((c for c in reversed(earlier) if damaged_file(c) is None), None)
    advice = (f"the newest complete checkpoint before it is {complete}: resume with `resume_from_checkpoint: {complete}`"
              if complete is not None else "no earlier checkpoint is complete: start the run again")
    raise UserError(f"resume_from_checkpoint '{checkpoint}' is damaged: {problem}; {advice}.")


def finished_at(checkpoint: str, training_args) -> str | None:
    """A line saying the run is complete when the checkpoint is already at the run's last step, else None."""
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())
    step = state.get("global_step", 0)
    if training_args.max_steps > 0:
        last, setting = training_args.max_steps, f"max_steps {training_args.max_steps}"
    elif state.get("num_train_epochs") == training_args.num_train_epochs and state.get("max_steps", 0) > 0:
        last, setting = state["max_steps"], f"num_train_epochs {training_args.num_train_epochs:g}"
    else:
        return None
    if step < last:
        return None
    return (f"The run is complete: {checkpoint} is at step {step}, and {setting} ends it at step {last}. Nothing was "
            "trained or written; raise max_steps to train on.")


def refuse_other_run(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """A new run does not start in a folder that holds another run, unless `overwrite` (see the module docstring)."""
    checkpoints, model_files = checkpoints_in(output_dir), saved_model_files(output_dir)
    if (checkpoints or model_files) and not overwrite:
        names = ", ".join([p.name for p in checkpoints[-3:]] + [p.name for p in model_files[:2]])
        resume = "resume it with `resume_from_checkpoint: latest`, " if checkpoints else ""
        raise UserError(
            f"output_dir '{output_dir}' already holds another run ({names}): {resume}choose another output_dir, "
            "or set `overwrite_output_dir: true` to replace it."
        )


def remove_previous_run(output_dir: str | os.PathLike) -> None:
    """overwrite_output_dir: the old run's checkpoints and model files go, once the new run is ready to train (a
    mistake found while building it leaves the old run as it was)."""
    for checkpoint in checkpoints_in(output_dir):
        shutil.rmtree(checkpoint)
    for path in [*saved_model_files(output_dir), *(Path(output_dir) / name for name in MODEL_SIDE_FILES)]:
        path.unlink(missing_ok=True)


def prepare_output_dir(training_args, overwrite: bool = False, model_name_or_path: str | None = None
                       ) -> tuple[str | None, RunLock | None]:
    """Check the output folder and lock it (see the module docstring); returns the checkpoint to resume from (or
    None) and the lock, which the main process holds (None on the other processes of a launch). A folder that holds
    another run is only checked here: `remove_previous_run` clears it once the new run is built."""
    output_dir = training_args.output_dir
    check_writable(output_dir)
    check_not_the_model(output_dir, model_name_or_path)
    main_process = training_args.process_index == 0
    lock = RunLock(output_dir) if main_process else None
    try:
        if main_process:
            clean_interrupted_saves(output_dir)
        resume_from = resolve_resume(training_args)
        if resume_from is not None:
            check_checkpoint(resume_from)
        else:
            refuse_other_run(output_dir, overwrite)
    except BaseException:
        if lock is not None:
            lock.release(remove_new_folder=True)
        raise
    return resume_from, lock


def interrupted_line(training_args, step: int) -> str:
    """What a Ctrl-C during training says: where the run can be resumed from."""
    checkpoint = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
    if checkpoint is None:
        return f"interrupted at step {step}, before any checkpoint was saved: nothing to resume; start the run again."
    return (f"interrupted at step {step}; the newest complete checkpoint is {checkpoint}: resume with "
            "`--resume_from_checkpoint latest` (same output_dir).")
