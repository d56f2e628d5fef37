"""The output folder of a run, checked before anything is trained or written.

- It must be writable (a read-only folder otherwise fails at the first checkpoint, minutes in).
- It must not be the model being trained (`model_name_or_path`), nor hold it in one of its checkpoint-N folders:
  the final save would overwrite the base model's weights, checkpoint rotation would delete them.
- It must be an empty folder, a new one, or a run's own (its thermorl_recipe.yaml or checkpoint-N folders): a
  folder of other files (a model folder, the user's own files) would have its config.json and others overwritten.
  Nor may it lie inside another run, a checkpoint, a model folder or a model cache (thermorl's, Hugging Face's),
  compared as resolved paths: that run's checkpoint rotation or overwrite would delete it, and a run written into
  a cached model would change the model later runs start from.
- One run at a time: the run's main process holds a lock (fcntl.flock on the folder) for the whole run, and a
  second run started on the same folder is refused with a line naming the first (`.thermorl-run.lock` in the folder
  holds its pid, host, start time and command while it runs). The operating system drops the lock when its process
  ends, however it ends, so a killed run never blocks the next one.
- A new run does not start in a folder that holds another run (its checkpoint-N folders or its saved final model):
  the Trainer would write among the old checkpoints and rotate them away, and the final save would replace the old
  model. The user resumes it (`resume_from_checkpoint: latest`), picks another folder, or sets
  `overwrite_output_dir: true`, which removes the old checkpoints and model files first.
- `resume_from_checkpoint` must name a checkpoint that exists (`latest` in a folder without one is an error, not a
  silent start from scratch) and that is complete: every file its trainer wrote there present and of the size
  written (trainers/atomic_checkpoint.py lists them), every safetensors and torch file whole, trainer_state.json
  readable. A damaged one is named with the newest complete checkpoint before it.
- Resuming a checkpoint that is already at max_steps trains nothing (the Trainer would take one more step, save
  and rotate a checkpoint away); when the run's final save did not complete (killed, disk full), it is redone from
  that checkpoint (`final_save_done`).
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

from .console import LOG_FILE_NAME
from .errors import DiskFullError, UserError
from .run_recipe import RUN_RECIPE_FILE
from .recipe_inputs import HELD_OUT_FILE
from .trainers.atomic_checkpoint import (
    CHECKPOINT_FILES, REPLACED_PREFIX, STAGING_PREFIX, clean_interrupted_saves, is_disk_full,
)

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


# thermorl's own files in a run folder, beside the run's checkpoints and model (a folder holding only these holds no
# run and nothing of the user's). The run's recipe (RUN_RECIPE_FILE) marks a run folder.
RUN_RECORD_FILES = (LOCK_FILE, LOG_FILE_NAME, HELD_OUT_FILE)
OWN_TRANSIENT_PREFIXES = (".thermorl-probe-", STAGING_PREFIX, REPLACED_PREFIX)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def model_caches() -> list[tuple[Path, str]]:
    """The folders model files are cached in, which no run writes into: (folder, how to name it)."""
    from huggingface_hub import constants

    from .models.cache import cache_root

    return [(_resolved(cache_root()), "thermorl's model cache ($THERMORL_CACHE)"),
            (_resolved(constants.HF_HOME), "the Hugging Face cache ($HF_HOME)")]


def is_run_folder(folder: str | os.PathLike) -> bool:
    """A thermorl run's output folder: its saved recipe, or a Trainer's checkpoint-N folders."""
    return (Path(folder) / RUN_RECIPE_FILE).is_file() or bool(checkpoints_in(folder))


def is_model_folder(folder: str | os.PathLike) -> bool:
    """A saved model (or adapter): a config beside weights."""
    folder = Path(folder)
    configured = (folder / CONFIG_NAME).is_file() or (folder / "adapter_config.json").is_file()
    return configured and any(p.name != TRAINER_STATE_NAME for p in saved_model_files(folder))


def _kind_of_folder(folder: Path) -> str | None:
    """What a folder a run must not be written inside is, and why; None for any other folder."""
    if checkpoint_step(folder) is not None:
        return "a checkpoint folder, which checkpoint rotation deletes with all it holds"
    if is_run_folder(folder):
        return "the output folder of another run, whose files and this run's would mix"
    if is_model_folder(folder):
        return "a model folder, whose files and this run's would mix"
    return None


def check_output_place(output_dir: str | os.PathLike) -> None:
    """output_dir is not inside a model cache, another run, a checkpoint or a model folder, and is not itself a
    checkpoint (see the module docstring); compared as resolved paths, so no spelling or link gets around it."""
    output = _resolved(output_dir)
    for cache, name in model_caches():
        if output == cache or cache in output.parents:
            raise UserError(f"output_dir '{output_dir}' is inside {name}, {cache}, whose model folders runs start "
                            "from: a run written there would change them; choose an output_dir outside it.")
    if output.is_dir() and checkpoint_step(output) is not None and (output / TRAINER_STATE_NAME).is_file():
        raise UserError(f"output_dir '{output_dir}' is a checkpoint of another run: choose another output_dir (resume "
                        "that run with `resume_from_checkpoint` and its own output_dir).")
    for folder in output.parents:
        kind = _kind_of_folder(folder)
        if kind is not None:
            raise UserError(f"output_dir '{output_dir}' is inside {folder}, {kind}: choose an output_dir outside "
                            "it.")


def foreign_files(output_dir: str | os.PathLike) -> list[str]:
    """What a folder that holds no run holds besides thermorl's own records: files a run must not write among."""
    folder = Path(output_dir)
    if not folder.is_dir() or is_run_folder(folder):
        return []

    def own(name: str) -> bool:
        rank_log = name.startswith("thermorl.rank") and name.endswith(".log")  # console.log_to_run_folder's
        return name in RUN_RECORD_FILES or rank_log or name.startswith(OWN_TRANSIENT_PREFIXES)

    return sorted(name for name in os.listdir(folder) if not own(name))


def refuse_foreign_files(output_dir: str | os.PathLike) -> None:
    """A run writes only into an empty or new folder, or a run's own (see the module docstring)."""
    names = foreign_files(output_dir)
    if not names:
        return
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    what = "is a model folder" if is_model_folder(output_dir) else "holds files that are not a thermorl run's"
    raise UserError(f"output_dir '{output_dir}' {what} ({shown}): a run would write its model and config among them "
                    "and replace them; choose an empty or new output_dir.")


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
        try:
            (folder / LOCK_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
                                            f"{command}\n")
        except OSError as error:  # a disk already full: nothing of this run is left behind
            self.release(remove_new_folder=True)
            if is_disk_full(error):
                raise DiskFullError(f"The disk holding output_dir '{output_dir}' is full: nothing was written; free "
                                    "space, then start the run.") from None
            raise UserError(f"output_dir '{output_dir}' cannot be written to ({error.strerror or error}): choose "
                            "another output_dir.") from None

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
    listed = folder / CHECKPOINT_FILES
    if listed.is_file():  # what the trainer wrote there (checkpoints saved before the list was kept: the checks below)
        try:
            written = json.loads(listed.read_text())["files"]
        except (ValueError, KeyError, TypeError) as error:
            return f"{CHECKPOINT_FILES} is not valid ({error})"
        for name, size in written.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing (its trainer wrote it there)"
            actual = path.stat().st_size
            if actual < size:
                return f"{name} is truncated ({actual} of the {size} bytes its trainer wrote)"
            if actual != size:
                return f"{name} is {actual} bytes where its trainer wrote {size}"
    return weights_problem(folder)


def weights_problem(folder: str | os.PathLike, files: str = "**/*") -> str | None:
    """What is wrong with the safetensors and torch files in a folder (a checkpoint with its subfolders; a saved
    model, `files` "*": its own files, not its checkpoints'), or None."""
    folder = Path(folder)
    for path in sorted(p for p in folder.glob(files) if p.is_file()):
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


def final_save_done(output_dir: str | os.PathLike, checkpoint: str) -> bool:
    """Whether output_dir holds the final model of a run at `checkpoint`'s step. The final save writes the model,
    then trainer_state.json (Trainer.save_state): a state at that step or later says the model before it is there."""
    try:
        saved = json.loads((Path(output_dir) / TRAINER_STATE_NAME).read_text()).get("global_step", -1)
        reached = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())["global_step"]
    except (OSError, ValueError, KeyError, AttributeError):
        return False
    return saved >= reached


def refuse_other_run(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """A new run does not start in a folder that holds another run, unless `overwrite` (see the module docstring)."""
    refuse_foreign_files(output_dir)
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
    check_output_place(output_dir)
    main_process = training_args.process_index == 0
    lock = RunLock(output_dir) if main_process else None
    try:
        if main_process:
            clean_interrupted_saves(output_dir)
        resume_from = resolve_resume(training_args)
        if resume_from is not None:
            check_checkpoint(resume_from)
            refuse_foreign_files(output_dir)  # a checkpoint of another folder resumed into this one
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


def check_model_to_evaluate(path_or_name: str) -> None:
    """A local model folder `thermorl eval` is about to load: a run folder whose checkpoints went past its final model
    (a resumed run whose final save failed, or that was stopped) holds an older model than its run trained, and is
    named instead of evaluated in its place; damaged weights are named before from_pretrained fails on them with
    safetensors' or torch's traceback."""
    from .evaluation.model_loading import looks_local, resolve_model_dir

    path = Path(path_or_name).expanduser()
    if not looks_local(path_or_name) or not path.is_dir():
        return
    checkpoints = checkpoints_in(path)
    if ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()) and (
            (path / "trainer_state.json").is_file() and checkpoints
            and not final_save_done(path, checkpoints[-1])):
        raise UserError(
            f"{path} holds an older final model than its newest checkpoint {checkpoints[-1].name} (its final save "
            f"did not complete, or the run was stopped): resume the run with `resume_from_checkpoint: latest` to "
            f"save it, or evaluate --model {checkpoints[-1]}"
        )
    model_dir = resolve_model_dir(path)
    problem = weights_problem(model_dir, files="*")
    if problem is not None:
        raise UserError(f"model {path_or_name}: {problem} (in {model_dir}); the model folder is damaged")
