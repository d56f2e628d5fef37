"""A battery of user mistakes, faults and folder hazards, each run through the `thermorl` command as a user would,
with a verdict per case: the standard is one line naming what is wrong, exit code 2, and every file that was there
unchanged (hashed before and after); a case that should work must work and write what it says.

Verdicts: ok; DATA LOST (a watched file changed or vanished); SILENT (exit 0 where a refusal was due, or a wrong
result); TRACEBACK (exit 1 or a traceback); UNCLEAR (exit 2, but not one line, or the line lacks what it must
name). Everything runs on the CPU in a scratch folder, on `thermorl:tiny` (small, warmed up once in the scratch
cache) and a random tiny model folder; each case takes a few seconds (the command's imports).

    python benchmarks/user_error_battery.py                 # all cases (about 10 minutes on 2 cores)
    python benchmarks/user_error_battery.py --only resume   # the cases whose name contains 'resume'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROGRESS_BAR = re.compile(r"\d+%\|")


@dataclass
class Case:
    group: str  # the severity group the case belongs to: a mistake of that kind would be lost, silent, ...
    name: str
    argv: list[str]  # after `thermorl`; {placeholders} are Workspace attributes, {case} the case's own folder
    expect: int = 2
    says: tuple[str, ...] = ()  # fragments of the error line (expect 2) or of stdout (expect 0)
    watch: tuple[str, ...] = ()  # folders whose every file must be unchanged
    setup: Callable[[Workspace, Path], None] | None = None
    check: Callable[[Workspace, Path], str | None] | None = None  # after the command: what is wrong, or None
    env: dict[str, str] = field(default_factory=dict)
    interrupt_after: float | None = None  # send SIGINT once this many seconds have passed


class Workspace:
    """The scratch folder: a recipe, a finished run, a random model folder, the warmed-up tiny model's cache folder,
    data and reward files."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "cache"
        self.hf_home = root / "hf"
        self.recipe = root / "tiny.yaml"
        self.finished = root / "finished"
        self.model = root / "model"
        self.files = root / "files"

    def env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
                "THERMORL_CACHE": str(self.cache), "HF_HOME": str(self.hf_home), "HF_HUB_OFFLINE": "1"}

    def build(self) -> None:
        from thermorl.models.tiny import build_tiny_model

        self.files.mkdir(parents=True)
        values = dict(
            model_name_or_path="thermorl:tiny", tiny_model_size="small", dataset="arithmetic", num_train_examples=64,
            num_eval_examples=8, warmup_examples=64, warmup_epochs=1, use_cpu=True, bf16=False,
            per_device_train_batch_size=8, num_generations=4, max_completion_length=4, max_steps=2, logging_steps=1,
            save_strategy="steps", save_steps=1, report_to=[], disable_tqdm=True, seed=0,
            output_dir=str(self.root / "unused"),
        )
        self.recipe.write_text(yaml.safe_dump(values))
        result = run_thermorl(self, ["train", str(self.recipe), "--output_dir", str(self.finished)])
        if result.returncode != 0:
            raise SystemExit(f"the run every case starts from failed:\n{result.stderr[-3000:]}")
        build_tiny_model(self.model, seed=0, size="small")
        for name, text in FILES.items():
            (self.files / name).write_text(text)
        (self.files / "bad.parquet").write_bytes(b"not a parquet file")

    @property
    def cached_model(self) -> str:
        return str(next(self.cache.glob("tiny-*")))


FILES = {
    "dup.yaml": "model_name_or_path: thermorl:tiny\nlearning_rate: 1e-3\nbeta: 0.0\nlearning_rate: 1e-2\n",
    "only_model.yaml": "model_name_or_path: thermorl:tiny\n",
    "empty.yaml": "",
    "tag.yaml": "model_name_or_path: !!python/object/apply:os.system [echo hi]\n",
    "list.yaml": "- a\n- b\n",
    "syntax_reward.py": "def reward(completions, **_):\n    return [0.0 for c in completions\n",
    "import_reward.py": "import os\nraise ImportError('a dependency is missing')\n",
    "raising_reward.py": "SCALE = 1 / 0\n",
    "text_reward.py": "def reward(completions, **_):\n    return ['1.0' for _ in completions]\n",
    "ok_reward.py": "def reward(completions, **_):\n    return [0.0 for _ in completions]\n",
    "bad_line.jsonl": '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=" "answer": "4"}\n',
    "list_line.jsonl": '{"prompt": "1+1=", "answer": "2"}\n[1, 2]\n',
    "bad.json": '[{"prompt": "1+1="},\n {"prompt": "2+2="\n]\n',
    "bad.csv": 'prompt,answer\n"1+1=,2\n2+2=,4\n',
    "empty.jsonl": "",
    "null_prompt.jsonl": '{"prompt": "1+1=", "answer": "2"}\n{"prompt": null, "answer": "4"}\n',
}


def run_thermorl(ws: Workspace, argv: list[str], env: dict[str, str] | None = None, interrupt_after=None,
                 debug: bool = False):
    command = [sys.executable, "-m", "thermorl", *(["--debug"] if debug else []), *argv]
    environment = {**ws.env(), **(env or {})}
    if interrupt_after is None:
        return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(interrupt_after)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "thermorl.log"}


# Setups and checks -------------------------------------------------------------------------------------------------

def copy_run(ws: Workspace, case: Path) -> None:
    shutil.copytree(ws.finished, case / "run")


def removing(name: str) -> Callable[[Workspace, Path], None]:
    def setup(ws: Workspace, case: Path) -> None:
        copy_run(ws, case)
        (case / "run" / "checkpoint-2" / name).unlink()
    return setup


def truncating(path: str) -> Callable[[Workspace, Path], None]:
    def setup(ws: Workspace, case: Path) -> None:
        copy_run(ws, case)
        file = case / "run" / path
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return setup


def final_save_killed(ws: Workspace, case: Path) -> None:
    """The run folder as a kill -9 during the final save leaves it: checkpoints complete, no final model and state,
    a half-written staging folder."""
    copy_run(ws, case)
    for name in ("model.safetensors", "trainer_state.json", "README.md"):
        (case / "run" / name).unlink()
    (case / "run" / ".saving-model").mkdir()
    (case / "run" / ".saving-model" / "model.safetensors").write_bytes(b"half")


def final_model_is_the_checkpoints(ws: Workspace, case: Path) -> str | None:
    run = case / "run"
    if not (run / "model.safetensors").is_file():
        return "no final model"
    if (run / "model.safetensors").read_bytes() != (run / "checkpoint-2" / "model.safetensors").read_bytes():
        return "the final model differs from checkpoint-2's"
    if json.loads((run / "trainer_state.json").read_text())["global_step"] != 2:
        return "trainer_state.json is not at step 2"
    return None


def final_save_older(ws: Workspace, case: Path) -> None:
    """A resumed run (to step 3) whose final save failed: checkpoint-3 beside the step-2 final model."""
    copy_run(ws, case)
    shutil.copytree(case / "run" / "checkpoint-2", case / "run" / "checkpoint-3")
    state = case / "run" / "checkpoint-3" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "global_step": 3}))
    (case / "run" / "checkpoint-3" / "thermorl_checkpoint_files.json").unlink()  # its sizes no longer hold


def users_folder(ws: Workspace, case: Path) -> None:
    (case / "mine").mkdir()
    (case / "mine" / "config.json").write_text('{"my": "settings"}')
    (case / "mine" / "notes.txt").write_text("my notes")


def records_only(ws: Workspace, case: Path) -> None:
    (case / "records").mkdir()
    (case / "records" / "thermorl.log").write_text("a log of a run stopped before its first checkpoint\n")


def auto_map_model(ws: Workspace, case: Path) -> None:
    """A model folder of a built-in model_type (qwen2) whose config names its own code, which would exit if run."""
    shutil.copytree(ws.model, case / "model")
    config = json.loads((case / "model" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "code.Config", "AutoModelForCausalLM": "code.Model"}
    (case / "model" / "config.json").write_text(json.dumps(config))
    (case / "model" / "code.py").write_text("raise SystemExit('the folder code ran')\n")
    (case / "adapter").mkdir()
    (case / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(case / "model"),
                                                                      "peft_type": "LORA"}))


def abandoned_warmup(ws: Workspace, case: Path) -> None:
    """A warm-up killed with kill -9: its work folder, named after a process that is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (ws.cache / f".warmup-{dead.pid}-killed").mkdir()
    (ws.cache / f".warmup-{dead.pid}-killed" / "model.safetensors").write_bytes(b"x" * 1000)


def no_abandoned_warmup(ws: Workspace, case: Path) -> str | None:
    left = list(ws.cache.glob(".warmup-*"))
    return f"left behind: {left}" if left else None


def full_disk(ws: Workspace, case: Path) -> None:
    folder = case / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        raise Skip("needs root to mount a small tmpfs")
    (folder / "filler").write_bytes(b"\0" * 64 * 1024)  # fills it


def unmount(ws: Workspace, case: Path) -> str | None:
    entries = os.listdir(case / "full")
    subprocess.run(["umount", str(case / "full")], capture_output=True)
    return None if entries == ["filler"] else f"left behind on the full disk: {entries}"


class Skip(Exception):
    pass


TRAIN = ["train", "{recipe}"]
RUN = "{case}/run"
RESUME = [*TRAIN, "--output_dir", RUN, "--resume_from_checkpoint", "latest", "--max_steps", "3"]

CASES = [
    # Data lost: the folders a run may write ---------------------------------------------------------------------
    Case("data lost", "output_dir is thermorl:tiny's cache folder, with overwrite",
         [*TRAIN, "--output_dir", "{cached_model}", "--overwrite_output_dir", "true"],
         says=("inside thermorl's model cache",), watch=("{cache}",)),
    Case("data lost", "output_dir is the cache folder, without overwrite (no destructive advice)",
         [*TRAIN, "--output_dir", "{cached_model}"], says=("choose an output_dir outside it",), watch=("{cache}",)),
    Case("data lost", "output_dir is a new folder in the cache", [*TRAIN, "--output_dir", "{cache}/my-run"],
         says=("inside thermorl's model cache",), watch=("{cache}",)),
    Case("data lost", "output_dir is a link to the cache folder", [*TRAIN, "--output_dir", "{case}/link"],
         setup=lambda ws, case: (case / "link").symlink_to(ws.cached_model),
         says=("inside thermorl's model cache",), watch=("{cache}",)),
    Case("data lost", "output_dir inside the Hugging Face cache", [*TRAIN, "--output_dir", "{hf_home}/hub/run"],
         says=("Hugging Face cache",)),
    Case("data lost", "output_dir inside another run's checkpoint", [*TRAIN, "--output_dir", f"{RUN}/checkpoint-2/sub"],
         setup=copy_run, says=("a checkpoint folder",), watch=(RUN,)),
    Case("data lost", "output_dir is another run's checkpoint", [*TRAIN, "--output_dir", f"{RUN}/checkpoint-2",
                                                                 "--overwrite_output_dir", "true"],
         setup=copy_run, says=("is a checkpoint of another run",), watch=(RUN,)),
    Case("data lost", "output_dir inside another run's folder", [*TRAIN, "--output_dir", f"{RUN}/nested"],
         setup=copy_run, says=("the output folder of another run",), watch=(RUN,)),
    Case("data lost", "output_dir inside a model folder", [*TRAIN, "--output_dir", "{model}/run"],
         says=("a model folder",), watch=("{model}",)),
    Case("data lost", "output_dir is a model folder, with overwrite",
         [*TRAIN, "--output_dir", "{model}", "--overwrite_output_dir", "true"], says=("is a model folder",),
         watch=("{model}",)),
    Case("data lost", "output_dir is a folder of the user's files", [*TRAIN, "--output_dir", "{case}/mine"],
         setup=users_folder, says=("config.json, notes.txt", "empty or new output_dir"), watch=("{case}/mine",)),
    Case("data lost", "output_dir is a folder of the user's files, with overwrite",
         [*TRAIN, "--output_dir", "{case}/mine", "--overwrite_output_dir", "true"], setup=users_folder,
         says=("not a thermorl run's",), watch=("{case}/mine",)),
    Case("data lost", "output_dir is the model trained, spelled with ./",
         [*TRAIN, "--model_name_or_path", "{model}", "--output_dir", "{root}/./model"],
         says=("is the folder of the model",), watch=("{model}",)),
    Case("data lost", "model_name_or_path is a checkpoint in output_dir",
         [*TRAIN, "--model_name_or_path", f"{RUN}/checkpoint-2", "--output_dir", RUN, "--overwrite_output_dir", "true"],
         setup=copy_run, says=("is a checkpoint inside output_dir",), watch=(RUN,)),
    Case("data lost", "output_dir holds a finished run", [*TRAIN, "--output_dir", RUN, "--learning_rate", "1e-3"],
         setup=copy_run, says=("already holds another run", "overwrite_output_dir: true"), watch=(RUN,)),
    Case("data lost", "overwrite with a reward mistake keeps the old run",
         [*TRAIN, "--output_dir", RUN, "--overwrite_output_dir", "true", "--reward_funcs", "no_such_module:reward"],
         setup=copy_run, says=("no_such_module",), watch=(RUN,)),
    Case("data lost", "output_dir below a file", [*TRAIN, "--output_dir", "{files}/dup.yaml/run"],
         says=("cannot be written",), watch=("{files}",)),
    Case("data lost", "resume another run's checkpoint into the user's folder",
         [*TRAIN, "--output_dir", "{case}/mine", "--resume_from_checkpoint", f"{RUN}/checkpoint-2", "--max_steps", "3"],
         setup=lambda ws, case: (copy_run(ws, case), users_folder(ws, case)), says=("not a thermorl run's",),
         watch=("{case}/mine", RUN)),
    Case("data lost", "disk full when the run starts", [*TRAIN, "--output_dir", "{case}/full/run"], setup=full_disk,
         says=("is full", "nothing was written"), check=unmount),
    Case("works", "a folder holding only thermorl's records takes a run", [*TRAIN, "--output_dir", "{case}/records"],
         setup=records_only, expect=0, says=("Model and checkpoints written to",)),
    # Silent and wrong: resume, the final save, duplicate keys, code in a model folder ---------------------------
    Case("silent", "resume: optimizer.pt missing", RESUME, setup=removing("optimizer.pt"),
         says=("optimizer.pt is missing", "checkpoint-1"), watch=(RUN,)),
    Case("silent", "resume: scheduler.pt missing", RESUME, setup=removing("scheduler.pt"),
         says=("scheduler.pt is missing",), watch=(RUN,)),
    Case("silent", "resume: rng_state.pth missing", RESUME, setup=removing("rng_state.pth"),
         says=("rng_state.pth is missing",), watch=(RUN,)),
    Case("silent", "resume: model.safetensors truncated", RESUME, setup=truncating("checkpoint-2/model.safetensors"),
         says=("model.safetensors is",), watch=(RUN,)),
    Case("silent", "resume: optimizer.pt truncated", RESUME, setup=truncating("checkpoint-2/optimizer.pt"),
         says=("optimizer.pt is",), watch=(RUN,)),
    Case("silent", "resume: trainer_state.json cut short", RESUME, setup=truncating("checkpoint-2/trainer_state.json"),
         says=("trainer_state.json is",), watch=(RUN,)),
    Case("silent", "resume latest with no checkpoint", [*TRAIN, "--output_dir", "{case}/new",
                                                        "--resume_from_checkpoint", "latest"],
         says=("no checkpoint-N folder",)),
    Case("silent", "resume with another learning_rate", [*RESUME, "--learning_rate", "1e-3"], setup=copy_run,
         says=("learning_rate",), watch=(RUN,)),
    Case("works", "resume of a complete run says so and writes nothing",
         [*TRAIN, "--output_dir", RUN, "--resume_from_checkpoint", "latest"], setup=copy_run, expect=0,
         says=("The run is complete",), watch=(RUN,)),
    Case("silent", "final save killed: resume redoes it",
         [*TRAIN, "--output_dir", RUN, "--resume_from_checkpoint", "latest"], setup=final_save_killed, expect=0,
         says=("final save had not completed",), check=final_model_is_the_checkpoints),
    Case("silent", "eval of a run whose final model is older than its newest checkpoint",
         ["eval", "--model", RUN, "--out", "{case}/eval"], setup=final_save_older,
         says=("older final model than its newest checkpoint checkpoint-3",), watch=(RUN,)),
    Case("silent", "recipe with a key written twice", ["train", "{files}/dup.yaml"],
         says=("'learning_rate' is written twice", "line 4")),
    Case("silent", "override mapping with a key written twice",
         [*TRAIN, "--policy_loss", "sapo", "--policy_loss_kwargs", "{{tau_pos: 1, tau_pos: 2}}"],
         says=("'tau_pos' is written twice",)),
    Case("silent", "train: model folder with auto_map and model_type qwen2",
         [*TRAIN, "--model_name_or_path", "{case}/model", "--output_dir", "{case}/run"], setup=auto_map_model,
         says=("ships its own Python code", "trust_remote_code: true"), watch=("{case}/model",)),
    Case("silent", "check: model folder with auto_map", ["check", "{recipe}", "--model_name_or_path", "{case}/model"],
         setup=auto_map_model, says=("ships its own Python code",)),
    Case("silent", "eval: model folder with auto_map",
         ["eval", "--model", "{case}/model", "--task", "arithmetic", "--out", "{case}/eval"], setup=auto_map_model,
         says=("ships its own Python code", "--trust-remote-code")),
    Case("silent", "export: base model with auto_map",
         ["export", "--checkpoint", "{case}/adapter", "--out", "{case}/merged"], setup=auto_map_model,
         says=("ships its own Python code",)),
    Case("silent", "save_steps 0", [*TRAIN, "--output_dir", "{case}/run", "--save_steps", "0"], says=("save_steps",)),
    # Tracebacks for user mistakes -------------------------------------------------------------------------------
    Case("traceback", "learning_rate nan", [*TRAIN, "--learning_rate", "nan"], says=("learning_rate",)),
    Case("traceback", "learning_rate negative", [*TRAIN, "--learning_rate", "-1e-4"], says=("learning_rate",)),
    Case("traceback", "per_device_train_batch_size 0", [*TRAIN, "--per_device_train_batch_size", "0"],
         says=("per_device_train_batch_size",)),
    Case("traceback", "gradient_accumulation_steps 0", [*TRAIN, "--gradient_accumulation_steps", "0"],
         says=("gradient_accumulation_steps",)),
    Case("traceback", "beta nan", [*TRAIN, "--beta", "nan"], says=("'beta'",)),
    Case("traceback", "beta negative", [*TRAIN, "--beta", "-0.1"], says=("beta -0.1",)),
    Case("traceback", "temperature nan", [*TRAIN, "--temperature", "nan"], says=("'temperature'",)),
    Case("traceback", "logging_steps 0", [*TRAIN, "--logging_steps", "0"], says=("logging_steps",)),
    Case("traceback", "max_steps 0", [*TRAIN, "--max_steps", "0"], says=("max_steps",)),
    Case("traceback", "reward file with a syntax error",
         [*TRAIN, "--output_dir", "{case}/run", "--reward_funcs", "{files}/syntax_reward.py:reward"],
         says=("SyntaxError", "syntax_reward.py", "line 2")),
    Case("traceback", "reward file raising ImportError",
         [*TRAIN, "--output_dir", "{case}/run", "--reward_funcs", "{files}/import_reward.py:reward"],
         says=("ImportError", "a dependency is missing", "line 2")),
    Case("traceback", "reward module raising on import",
         [*TRAIN, "--output_dir", "{case}/run", "--reward_funcs", "raising_reward:reward"],
         env={"PYTHONPATH": "{files}"}, says=("ZeroDivisionError", "raising_reward")),
    Case("traceback", "eval of a model with a truncated model.safetensors",
         ["eval", "--model", RUN, "--out", "{case}/eval"], setup=truncating("model.safetensors"),
         says=("model.safetensors is", "damaged"), watch=(RUN,)),
    Case("traceback", "reward module not found", [*TRAIN, "--reward_funcs", "no_such_module:reward"],
         says=("no_such_module",)),
    Case("traceback", "reward function not in its file", [*TRAIN, "--reward_funcs", "{files}/ok_reward.py:rewrd"],
         says=("has no attribute 'rewrd'",)),
    Case("traceback", "reward function returning text",
         [*TRAIN, "--output_dir", "{case}/run", "--reward_funcs", "{files}/text_reward.py:reward"],
         says=("'1.0' (str)",)),
    # Unclear messages -------------------------------------------------------------------------------------------
    Case("unclear", "jsonl with a malformed line", ["check", "{recipe}", "--model_name_or_path", "{model}",
                                                    "--dataset", "{files}/bad_line.jsonl"], says=("line 2",)),
    Case("unclear", "jsonl with a line that is not an object",
         ["check", "{recipe}", "--model_name_or_path", "{model}", "--dataset", "{files}/list_line.jsonl"],
         says=("line 2 is a JSON list",)),
    Case("unclear", "json document with a syntax error",
         ["check", "{recipe}", "--model_name_or_path", "{model}", "--dataset", "{files}/bad.json"],
         says=("line 3",)),
    Case("unclear", "csv that cannot be parsed",
         ["check", "{recipe}", "--model_name_or_path", "{model}", "--dataset", "{files}/bad.csv"], says=("bad.csv",)),
    Case("unclear", "parquet that is not parquet",
         ["check", "{recipe}", "--model_name_or_path", "{model}", "--dataset", "{files}/bad.parquet"],
         says=("bad.parquet",)),
    Case("unclear", "empty jsonl", ["check", "{recipe}", "--model_name_or_path", "{model}",
                                    "--dataset", "{files}/empty.jsonl"], says=("is empty",)),
    Case("unclear", "jsonl with a null prompt", ["check", "{recipe}", "--model_name_or_path", "{model}",
                                                 "--dataset", "{files}/null_prompt.jsonl"], says=("row 2",)),
    Case("unclear", "dataset file missing", ["check", "{recipe}", "--model_name_or_path", "{model}",
                                             "--dataset", "{files}/absent.jsonl"], says=("absent.jsonl",)),
    Case("unclear", "dataset name that is no task", [*TRAIN, "--model_name_or_path", "{model}",
                                                     "--dataset", "arithmetc"], says=("not a built-in task",)),
    Case("unclear", "eval --task bogus names the built-in tasks",
         ["eval", "--model", "{finished}", "--task", "bogus", "--out", "{case}/eval"],
         says=("not a built-in task (arithmetic",)),
    Case("works", "a recipe of model_name_or_path only: the CPU defaults apply", ["check", "{files}/only_model.yaml"],
         expect=0, says=("launch: 1 process(es)", "bf16 False")),
    Case("unclear", "empty recipe", ["train", "{files}/empty.yaml"], says=("is empty",)),
    Case("unclear", "recipe with a python tag", ["train", "{files}/tag.yaml"], says=("tags",)),
    Case("unclear", "recipe that is a list", ["train", "{files}/list.yaml"], says=("must be a mapping",)),
    Case("unclear", "unknown recipe key", [*TRAIN, "--learning_rat", "1e-5"], says=("learning_rat",)),
    Case("unclear", "value of the wrong type", [*TRAIN, "--seed", "three"], says=("'seed' expects an integer",)),
    Case("unclear", "model path that does not exist", [*TRAIN, "--model_name_or_path", "./no/such/model"],
         says=("no such folder",)),
    Case("unclear", "eval with --samples 0 is one line", ["eval", "--model", "{finished}", "--samples", "0"],
         says=("samples",)),
    Case("unclear", "eval without --model is one line", ["eval", "--task", "arithmetic"], says=("--model",)),
    Case("unclear", "eval with a bad temperature grid", ["eval", "--model", "{finished}", "--temperatures", "a:b"],
         says=("temperature",)),
    Case("unclear", "export without --out is one line", ["export", "--checkpoint", "{finished}"], says=("--out",)),
    Case("unclear", "list with an option", ["list", "--foo"], says=("--foo",)),
    Case("unclear", "unknown command", ["trian", "{recipe}"], says=("unknown command 'trian'",)),
    Case("works", "check names the loss it runs", ["check", "{recipe}"], expect=0, says=("loss grpo (",)),
    Case("works", "a killed warm-up's folder is removed by the next warm-up",
         [*TRAIN, "--output_dir", "{case}/run", "--max_steps", "1", "--warmup_examples", "72"],
         setup=abandoned_warmup, expect=0, check=no_abandoned_warmup, says=("Model and checkpoints written to",)),
]


def format_args(text: str, ws: Workspace, case: Path) -> str:
    names = {"case": case, "recipe": ws.recipe, "finished": ws.finished, "model": ws.model, "files": ws.files,
             "cache": ws.cache, "hf_home": ws.hf_home, "root": ws.root}
    if "{cached_model}" in text:
        names["cached_model"] = ws.cached_model
    return text.format(**{key: str(value) for key, value in names.items()})


def verdict(case: Case, result, changed: list[str], problem: str | None) -> tuple[str, str]:
    output = result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    shown = lines[-1] if lines else result.stdout.strip().splitlines()[-1:] and result.stdout.strip().splitlines()[-1]
    if changed:
        return "DATA LOST", f"changed: {', '.join(changed[:3])}"
    if "Running in WANDB offline mode" in output:  # every case runs under WANDB_MODE=offline
        return "UNCLEAR", "transformers' W&B offline line is printed"
    if result.returncode == 1 or "Traceback" in output:
        return "TRACEBACK", (lines or ["?"])[-1]
    if case.expect == 2:
        if result.returncode == 0:
            return "SILENT", "exit 0"
        if result.returncode != 2 or len(lines) != 1 or not lines[0].startswith("thermorl"):
            return "UNCLEAR", f"exit {result.returncode}, {len(lines)} lines: {' | '.join(lines)[:300]}"
        missing = [fragment for fragment in case.says if fragment not in lines[0]]
        if missing:
            return "UNCLEAR", f"does not name {missing}: {lines[0]}"
    else:
        if result.returncode != case.expect:
            return "SILENT" if result.returncode == 0 else "UNCLEAR", f"exit {result.returncode}: {lines[-1:]}"
        missing = [fragment for fragment in case.says if fragment not in result.stdout]
        if missing:
            return "SILENT", f"stdout lacks {missing}"
    if problem:
        return "SILENT", problem
    return "ok", str(shown)


def run_case(ws: Workspace, number: int, case: Case) -> tuple[str, str]:
    folder = ws.root / "cases" / f"{number:02d}"
    folder.mkdir(parents=True)
    try:
        if case.setup is not None:
            case.setup(ws, folder)
    except Skip as skip:
        return "skipped", str(skip)
    argv = [format_args(arg, ws, folder) for arg in case.argv]
    watched = [Path(format_args(path, ws, folder)) for path in case.watch]
    before = [snapshot(path) for path in watched]
    env = {key: format_args(value, ws, folder) for key, value in case.env.items()}
    result = run_thermorl(ws, argv, env, case.interrupt_after)
    changed = [f"{path}/{name}" for path, old in zip(watched, before, strict=True)
               for name in sorted(set(old) | set(snapshot(path))) if old.get(name) != snapshot(path).get(name)]
    problem = case.check(ws, folder) if case.check is not None else None
    return verdict(case, result, changed, problem)


def debug_ctrl_c(ws: Workspace) -> tuple[str, str]:
    """--debug with Ctrl-C during training: the traceback, then exit 130 (not death by SIGINT)."""
    result = run_thermorl(ws, [*[format_args(a, ws, ws.root) for a in TRAIN], "--output_dir",
                               str(ws.root / "interrupted"), "--max_steps", "100000"],
                          interrupt_after=25, debug=True)
    if result.returncode == 130 and "thermorl train: interrupted" in result.stderr:
        return "ok", "exit 130 with the traceback and the resume line"
    return "UNCLEAR", f"exit {result.returncode}: {result.stderr[-300:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="thermorl-battery-"))
    ws = Workspace(root)
    started = time.perf_counter()
    try:
        ws.build()
        rows = []
        for number, case in enumerate(CASES, start=1):
            if args.only in case.name:
                rows.append((case.group, case.name, *run_case(ws, number, case)))
                print(f"{rows[-1][2]:>9}  {case.group:<9}  {case.name}", flush=True)
        if args.only in "debug Ctrl-C exits 130":
            rows.append(("unclear", "--debug with Ctrl-C exits 130", *debug_ctrl_c(ws)))
            print(f"{rows[-1][2]:>9}  unclear    --debug with Ctrl-C exits 130", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'verdict':>9}  {'group':<9}  case: what it said")
    for group, name, outcome, said in rows:
        print(f"{outcome:>9}  {group:<9}  {name}: {said[:240]}")
    counts = {outcome: sum(row[2] == outcome for row in rows) for outcome in dict.fromkeys(row[2] for row in rows)}
    print(f"\n{len(rows)} cases in {time.perf_counter() - started:.0f} s: "
          + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
    return 0 if all(row[2] in ("ok", "skipped") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
