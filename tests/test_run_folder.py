"""Run folders through the `thermorl` command: one run at a time, never over the model or another run,
resumes that are complete, damaged or changed said in one line, and Ctrl-C naming the checkpoint to resume from.
Each case copies one short run (2 steps, a checkpoint at each) and works on the copy."""

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_user_errors import assert_user_error, snapshot, thermorl
from thermorl.run_dir import LOCK_FILE, damaged_file

PROGRESS_BAR_PARTS = ("it/s]", "s/it]", "it]")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_model_dir):
    """The random tiny model for 2 steps of 8 completions, a checkpoint at each step."""
    folder = tmp_path_factory.mktemp("recipe")
    values = dict(
        model_name_or_path=str(tiny_model_dir), dataset="arithmetic", num_train_examples=16, num_eval_examples=4,
        use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
        max_steps=2, logging_steps=1, save_strategy="steps", save_steps=1, report_to=[], seed=0,
        learning_rate=1e-2, disable_tqdm=True, output_dir=str(folder / "unused"),
    )
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def finished_run(recipe, tmp_path_factory):
    """A finished run's folder: checkpoint-1, checkpoint-2, the final model, its recipe."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = thermorl("train", recipe, "--output_dir", run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def stderr_lines(result):
    return [line for line in result.stderr.splitlines()
            if line.strip() and not line.rstrip().endswith(PROGRESS_BAR_PARTS)]


# Item 1: one run at a time ----------------------------------------------------------------------------------------

def test_second_run_on_a_locked_folder_is_refused_naming_the_first_and_a_killed_one_does_not_block(recipe, tmp_path):
    folder = tmp_path / "shared"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from thermorl.run_dir import RunLock; RunLock(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(600)", str(folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        # Importing thermorl may print a line first (W&B's offline notice under WANDB_MODE=offline).
        lines = iter(holder.stdout.readline, "")
        assert any(line.strip() == "locked" for line in lines)
        before = snapshot(folder)
        assert_user_error(thermorl("train", recipe, "--output_dir", folder), f"output_dir '{folder}' is in use by "
                          f"another run (pid {holder.pid} on ", "started ", "choose another output_dir")
        assert snapshot(folder) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = thermorl("train", recipe, "--output_dir", folder, "--max_steps", "1")  # the OS dropped the lock
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "checkpoint-1").is_dir() and not (folder / LOCK_FILE).exists()


# Item 2: never over the model being trained -----------------------------------------------------------------------

def test_output_dir_that_is_the_model_however_spelled_is_refused(recipe, tiny_model_dir, tmp_path):
    tiny_model_dir = Path(tiny_model_dir)
    before = snapshot(tiny_model_dir)
    spelled_otherwise = tiny_model_dir.parent / "." / tiny_model_dir.name
    assert_user_error(thermorl("train", recipe, "--output_dir", spelled_otherwise),
                      "is the folder of the model", "choose another output_dir")
    link = tmp_path / "link-to-model"
    link.symlink_to(tiny_model_dir)
    assert_user_error(thermorl("train", recipe, "--output_dir", link), "is the folder of the model")
    assert snapshot(tiny_model_dir) == before


def test_model_in_a_checkpoint_of_the_output_dir_is_refused(run, recipe):
    before = snapshot(run)
    assert_user_error(thermorl("train", recipe, "--output_dir", run, "--overwrite_output_dir", "true",
                               "--model_name_or_path", run / "checkpoint-2"),
                      "is a checkpoint inside output_dir", "choose another output_dir")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("inside", "fragment"),
    [("checkpoint-2/sub", "is inside {run}/checkpoint-2, a checkpoint folder, which checkpoint rotation deletes with "
                          "all it holds: choose an output_dir outside it"),
     ("checkpoint-2", "is a checkpoint of another run: choose another output_dir"),
     ("nested", "is inside {run}, the output folder of another run, whose files and this run's would mix: choose")],
)
def test_output_dir_inside_another_run_or_its_checkpoint_is_refused(run, recipe, inside, fragment):
    """A later resume of that run with save_total_limit would rotate the checkpoint away, and this run with it."""
    before = snapshot(run)
    assert_user_error(thermorl("train", recipe, "--output_dir", run / inside, "--overwrite_output_dir", "true"),
                      f"output_dir '{run / inside}' {fragment.format(run=run)}")
    assert snapshot(run) == before


# Item 3: another run's checkpoints or final model are not replaced without overwrite_output_dir -------------------

def test_new_run_over_a_finished_run_is_refused_and_overwrite_replaces_all_of_it(run, recipe):
    before = snapshot(run)
    assert_user_error(thermorl("train", recipe, "--output_dir", run, "--learning_rate", "1e-3"),
                      "already holds another run (checkpoint-1, checkpoint-2, model.safetensors",
                      "resume_from_checkpoint: latest", "overwrite_output_dir: true")
    assert snapshot(run) == before
    # overwrite_output_dir with a mistake found while the run is built (its data, rewards or model): the old run stays.
    assert_user_error(thermorl("train", recipe, "--output_dir", run, "--overwrite_output_dir", "true",
                               "--reward_funcs", "no_such_module:reward"), "no_such_module")
    assert snapshot(run) == before

    result = thermorl("train", recipe, "--output_dir", run, "--learning_rate", "1e-3", "--overwrite_output_dir", "true",
                      "--save_strategy", "no", "--max_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(run.glob("checkpoint-*"))  # the old run's checkpoints went with it
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 1  # the new run's


def test_a_saved_final_model_alone_counts_as_a_run(run, recipe):
    for checkpoint in run.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # what a run with `save_strategy: no` leaves
    before = snapshot(run)
    result = thermorl("train", recipe, "--output_dir", run, "--save_strategy", "no")
    assert_user_error(result, "already holds another run (model.safetensors", "overwrite_output_dir: true")
    assert "resume_from_checkpoint" not in result.stderr  # nothing to resume
    assert snapshot(run) == before


def test_quickstart_recipe_does_not_overwrite_through_thermorl_train():
    from thermorl.recipe import read_recipe

    assert "overwrite_output_dir" not in read_recipe("quickstart")


# Item 4: a complete run is said to be complete --------------------------------------------------------------------

@pytest.mark.parametrize("max_steps", ["2", "1"])
def test_resuming_a_complete_run_says_so_and_writes_nothing(run, recipe, max_steps):
    before = snapshot(run)
    result = thermorl("train", recipe, "--output_dir", run, "--resume_from_checkpoint", "latest",
                      "--max_steps", max_steps)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"The run is complete: {run / 'checkpoint-2'} is at step 2, and max_steps {max_steps} ends it" in result.stdout
    assert "Traceback" not in result.stderr
    assert snapshot(run) == before


# Item 5: a resumed run keeps its settings -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("override", "fragment"),
    [(("--learning_rate", "1e-3"), "learning_rate 0.01 (now 0.001: the checkpoint's optimizer and scheduler state"),
     (("--per_device_train_batch_size", "16"), "per_device_train_batch_size 8 (now 16: it changes what is trained)"),
     (("--policy_loss", "sapo"), "policy_loss None (now 'sapo': it changes what is trained)")],
)
def test_resume_with_a_setting_it_cannot_change_is_refused(run, recipe, override, fragment):
    before = snapshot(run)
    assert_user_error(thermorl("train", recipe, "--output_dir", run, "--resume_from_checkpoint", "latest",
                               "--max_steps", "3", *override),
                      f"resume_from_checkpoint '{run / 'checkpoint-2'}'", fragment, "thermorl_recipe.yaml")
    assert snapshot(run) == before


def test_resume_may_extend_the_run_and_change_logging_and_says_when_it_cannot_compare(run, recipe):
    result = thermorl("train", recipe, "--output_dir", run, "--resume_from_checkpoint", "latest", "--max_steps", "3",
                      "--logging_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoint-3").is_dir() and "cannot be compared" not in result.stdout
    assert yaml.safe_load((run / "thermorl_recipe.yaml").read_text())["max_steps"] == 3  # the run's recipe now

    (run / "thermorl_recipe.yaml").unlink()  # a run folder from before recipes were kept
    result = thermorl("train", recipe, "--output_dir", run, "--resume_from_checkpoint", "latest", "--max_steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming {run / 'checkpoint-3'}: no thermorl_recipe.yaml beside" in result.stdout
    assert "settings cannot be compared" in result.stdout and (run / "checkpoint-4").is_dir()


def test_every_field_named_in_the_resume_rules_is_a_recipe_field():
    from thermorl.recipe import _recipe_fields, recipe_dataclasses
    from thermorl.run_recipe import FREE_ON_RESUME, OPTIMIZER_STATE_FIELDS

    assert FREE_ON_RESUME | OPTIMIZER_STATE_FIELDS <= set(_recipe_fields(recipe_dataclasses("grpo")))
    assert not FREE_ON_RESUME & OPTIMIZER_STATE_FIELDS


# Item 8: Ctrl-C ---------------------------------------------------------------------------------------------------

def interruptible():
    """For a child that Ctrl-C must reach: SIGINT at its default, as in a terminal. A test run started in the
    background by a non-interactive shell (`pytest &`) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the run would train on, untouched by the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_names_the_newest_checkpoint_exits_130_and_the_checkpoint_resumes(recipe, tmp_path):
    folder = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "thermorl", "train", recipe, "--output_dir", folder,
                                "--max_steps", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
                               preexec_fn=interruptible)
    deadline = time.monotonic() + 300
    while not (folder / "checkpoint-2").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()  # a run the signal did not stop must not train on after the test
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert len(lines) == 1 and lines[0].startswith("thermorl train: interrupted at step "), stderr[-3000:]
    newest = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert f"the newest complete checkpoint is {newest}: resume with `--resume_from_checkpoint latest`" in lines[0]
    assert damaged_file(newest) is None and not (folder / LOCK_FILE).exists()

    step = int(newest.name.split("-")[1])
    result = thermorl("train", recipe, "--output_dir", folder, "--resume_from_checkpoint", "latest",
                      "--max_steps", step + 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / f"checkpoint-{step + 1}").is_dir()


def test_ctrl_c_under_a_launch_is_one_line_from_one_worker(recipe, tmp_path):
    from tests.test_user_errors import free_port

    folder = tmp_path / "launched"
    process = subprocess.Popen([sys.executable, "-m", "thermorl", "train", recipe, "--output_dir", folder,
                                "--max_steps", "1000", "--accelerate_config", "cpu_zero2", "--main_process_port",
                                str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
                               start_new_session=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 300
    while not (folder / "checkpoint-2").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the launcher and every worker
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("thermorl train: interrupted at step "), stderr[-3000:]


# Item 9: a damaged checkpoint is named, with the complete one before it -------------------------------------------

def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("name", "damage", "fragment"),
    [("model.safetensors", truncate, "model.safetensors is "),
     ("optimizer.pt", truncate, "optimizer.pt is truncated"),
     ("optimizer.pt", Path.unlink, "optimizer.pt is missing (its trainer wrote it there)"),
     ("trainer_state.json", lambda p: p.write_text('{"global_step": 2,'), "trainer_state.json is not valid JSON")],
)
def test_damaged_newest_checkpoint_names_the_file_and_the_complete_one_before_it(run, recipe, name, damage, fragment):
    damage(run / "checkpoint-2" / name)
    before = snapshot(run)
    assert_user_error(thermorl("train", recipe, "--output_dir", run, "--resume_from_checkpoint", "latest",
                               "--max_steps", "3"),
                      f"resume_from_checkpoint '{run / 'checkpoint-2'}' is damaged: {fragment}",
                      f"resume with `resume_from_checkpoint: {run / 'checkpoint-1'}`")
    assert snapshot(run) == before


# A final save that failed is redone ------------------------------------------------------------------------------

def test_a_failed_final_save_changes_nothing_and_the_resume_redoes_it(run, recipe):
    """A resumed run whose final save meets a full disk: the folder's model, model card and recipe stay those of
    the step-2 model, `thermorl eval` refuses the folder (its final model is older than checkpoint-3), and resuming
    again saves checkpoint-3's model as the final one instead of saying the run is complete."""
    final_files = ("model.safetensors", "README.md", "thermorl_recipe.yaml", "trainer_state.json", "config.json")
    before = {name: (run / name).read_bytes() for name in final_files}
    fault = ("import errno, sys\n"
             "from thermorl.cli import main\n"
             "from thermorl.trainers import atomic_checkpoint\n"
             "def full(folder):\n"
             "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "save = atomic_checkpoint.AtomicCheckpoints.save_model\n"
             "def save_model(self, write, output_dir, one_writer):\n"
             "    return save(self, lambda folder: (write(folder), full(folder)), output_dir, one_writer)\n"
             "atomic_checkpoint.AtomicCheckpoints.save_model = save_model\n"
             "sys.exit(main())\n")
    resume = ["train", recipe, "--output_dir", run, "--resume_from_checkpoint", "latest", "--max_steps", "3"]
    failed = thermorl(*resume, launcher=("-c", fault))
    assert_user_error(failed, "full: the final model could not be written (what was there is unchanged)",
                      f"the newest complete checkpoint is {run / 'checkpoint-3'}")
    assert {name: (run / name).read_bytes() for name in final_files} == before

    assert_user_error(thermorl("eval", "--model", run, "--out", run.parent / "eval"),
                      f"{run} holds an older final model than its newest checkpoint checkpoint-3",
                      f"or evaluate --model {run / 'checkpoint-3'}")

    redone = thermorl(*resume)
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert (f"The run had reached step 3, but its final save had not completed: the final model is saved now from "
            f"{run / 'checkpoint-3'}") in redone.stdout
    assert (run / "model.safetensors").read_bytes() == (run / "checkpoint-3" / "model.safetensors").read_bytes()
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 3
    assert yaml.safe_load((run / "thermorl_recipe.yaml").read_text())["max_steps"] == 3


def test_eval_of_a_model_with_a_truncated_weights_file_is_one_line(run):
    truncate(run / "model.safetensors")
    assert_user_error(thermorl("eval", "--model", run, "--out", run.parent / "eval"),
                      f"model {run}: model.safetensors is ", "the model folder is damaged")
