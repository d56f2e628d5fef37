"""A user's mistake through the `thermorl` command: one line naming the field, exit code 2, nothing already written
lost; `--debug` / THERMORL_DEBUG=1 shows the traceback. Each case runs the CLI in a subprocess; most fail before
any model is loaded."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def thermorl(*args, cwd=None, env=None, launcher=("-m", "thermorl")):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, *launcher, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=600)


PROGRESS_BAR = re.compile(r"\d+%\|")


def assert_user_error(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("thermorl "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    """A recipe that trains the random tiny model for 2 steps of 8 completions (a few seconds)."""
    values = dict(
        model_name_or_path=str(tiny_model_dir), dataset="arithmetic", num_train_examples=16, num_eval_examples=4,
        use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
        max_steps=2, logging_steps=1, save_strategy="no", report_to=[], output_dir=str(tmp_path / "run"), seed=0,
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["is empty", "model_name_or_path"]),
        ("model_name_or_path: !!python/object/apply:os.system [echo hi]\n", ["not valid YAML", "line 1", "tags"]),
        ("learning_rate: 1e-5\ndataset: [arithmetic\n", ["not valid YAML", "line 2, column 10", "flow sequence"]),
        ("- a\n- b\n", ["must be a mapping"]),
        ("learning_rate: 1e-3\nbeta: 0.0\nlearning_rate: 1e-2\n",
         ["not valid YAML", "line 3, column 1", "'learning_rate' is written twice (first at line 1)"]),
    ],
)
def test_broken_recipe_file_is_one_line(tmp_path, text, fragments):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert_user_error(thermorl("train", recipe), str(recipe), *fragments)


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("")
    for result in (thermorl("--debug", "train", recipe), thermorl("train", recipe, "--debug"),
                   thermorl("train", recipe, env={"THERMORL_DEBUG": "1"})):
        assert result.returncode == 2  # a user error stays exit code 2 with --debug
        assert "Traceback" in result.stderr and "is empty" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["--max_steps", "-5"], ["max_steps", "-5"]),
        (["--vas_mode", "online", "--vas_alpha", "nan"], ["vas_alpha", "finite"]),
        (["--model_name_or_path", "./models/not-there"], ["model_name_or_path", "./models/not-there", "no such folder"]),
        (["--resume_from_checkpoint", "latest"], ["resume_from_checkpoint: latest", "no checkpoint"]),
        (["--resume_from_checkpoint", "nowhere/checkpoint-3"], ["resume_from_checkpoint", "nowhere/checkpoint-3"]),
        (["--bf16", "true"], ["bf16", "CPU"]),
        (["--warmup_dataset", "arithmetic:digits=1"], ["warmup_dataset", "only model_name_or_path 'thermorl:tiny'"]),
        # Refused by torch's optimizer and sampler with a traceback, or taken without a word (save_steps 0).
        (["--learning_rate", "nan"], ["'learning_rate' must be a finite number, got nan"]),
        (["--learning_rate", "-1e-4"], ["'learning_rate' must be at least 0, got -0.0001"]),
        (["--per_device_train_batch_size", "0"], ["'per_device_train_batch_size' must be at least 1, got 0"]),
        (["--gradient_accumulation_steps", "0"], ["'gradient_accumulation_steps' must be at least 1, got 0"]),
        (["--beta", "nan"], ["'beta' must be a finite number, got nan"]),
        (["--save_steps", "0"], ["'save_steps' must be more than 0"]),
        (["--policy_loss", "sapo", "--policy_loss_kwargs", "{tau_pos: 1, tau_pos: 2}"],
         ["--policy_loss_kwargs", "'tau_pos' is written twice"]),
    ],
)
def test_value_that_would_fail_later_is_refused_before_training(tiny_recipe, tmp_path, overrides, fragments):
    result = thermorl("train", tiny_recipe, *overrides)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_missing_reward_module_or_function_is_named(tiny_recipe, tmp_path):
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text("def length(completions, **_):\n    return [float(len(c)) for c in completions]\n")
    assert_user_error(thermorl("train", tiny_recipe, "--reward_funcs", "no_such_module:reward"),
                      "no_such_module")
    assert_user_error(thermorl("train", tiny_recipe, "--reward_funcs", f"{reward_file}:lenght"),
                      "has no attribute 'lenght'")
    assert_user_error(thermorl("train", tiny_recipe, "--reward_funcs", f"{tmp_path / 'absent.py'}:f"),
                      "absent.py")


def test_reward_module_that_fails_as_it_is_imported_is_named_with_its_line(tiny_recipe, tmp_path):
    (tmp_path / "syntax_reward.py").write_text("def reward(completions, **_):\n    return [0.0 for c in completions\n")
    (tmp_path / "importing_reward.py").write_text("import os\nraise ImportError('a dependency is missing')\n")
    assert_user_error(thermorl("train", tiny_recipe, "--reward_funcs", f"{tmp_path / 'syntax_reward.py'}:reward"),
                      "reward_funcs: reward file", "raised SyntaxError", "(syntax_reward.py, line 2)")
    assert_user_error(thermorl("train", tiny_recipe, "--reward_funcs", "importing_reward:reward",
                               env={"PYTHONPATH": str(tmp_path)}),
                      "reward module 'importing_reward'", "ImportError: a dependency is missing", "line 2")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [("rows.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=" "answer": "4"}\n',
      ["line 2 is not valid JSON (column 19: Expecting ',' delimiter)"]),
     ("rows.jsonl", '{"prompt": "1+1=", "answer": "2"}\n[1, 2]\n', ["line 2 is a JSON list, not an object"]),
     ("rows.parquet", "not parquet", ["rows.parquet cannot be read: ArrowInvalid: Parquet magic bytes"])],
)
def test_unreadable_data_file_is_one_line_naming_the_line(tiny_recipe, tmp_path, name, content, fragments):
    """One line: the reader's own logged copy of the error (datasets' "Failed to read ...") is not printed first."""
    (tmp_path / name).write_text(content)
    assert_user_error(thermorl("check", tiny_recipe, "--dataset", tmp_path / name), f"dataset file {tmp_path / name}",
                      *fragments)


def test_model_folder_naming_its_own_code_is_refused_by_every_command(tiny_model_dir, tiny_recipe, tmp_path):
    """model_type qwen2 is transformers' own: its class would load and the folder's code be ignored without a word."""
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "code.Model"}}))
    (model / "code.py").write_text("raise SystemExit('the folder code ran')\n")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    before = snapshot(tmp_path)
    refused = f"model '{model}' ships its own Python code (auto_map in its config.json)"
    assert_user_error(thermorl("train", tiny_recipe, "--model_name_or_path", model), refused,
                      "set `trust_remote_code: true` in the recipe")
    assert_user_error(thermorl("check", tiny_recipe, "--model_name_or_path", model), refused)
    assert_user_error(thermorl("eval", "--model", model, "--task", "arithmetic", "--out", tmp_path / "eval"), refused,
                      "pass --trust-remote-code")
    assert_user_error(thermorl("export", "--checkpoint", adapter, "--out", tmp_path / "merged"), refused)
    assert snapshot(tmp_path) == before


def test_output_dir_in_the_model_cache_or_among_the_users_files_is_refused(tiny_model_dir, tiny_recipe, tmp_path):
    """Not the resolved model folder only: no run writes into a cache, a model folder, or a folder of other files,
    and overwrite_output_dir (which removes a run's files) is not offered as the fix."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(tiny_model_dir, cache / "tiny-arithmetic-0123")  # as thermorl:tiny's warm-up leaves it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("notes")
    before = snapshot(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(cache / "tiny-arithmetic-0123")
    for output_dir in (cache / "tiny-arithmetic-0123", link, cache / "new-run"):
        result = thermorl("train", tiny_recipe, "--output_dir", output_dir, "--overwrite_output_dir", "true",
                          env={"THERMORL_CACHE": str(cache)})
        assert_user_error(result, f"output_dir '{output_dir}' is inside thermorl's model cache", "outside it")
    assert_user_error(thermorl("train", tiny_recipe, "--output_dir", mine, "--overwrite_output_dir", "true"),
                      f"output_dir '{mine}' holds files that are not a thermorl run's (config.json, notes.txt)",
                      "choose an empty or new output_dir")
    assert_user_error(thermorl("train", tiny_recipe, "--output_dir", Path(tiny_model_dir) / "run"),
                      f"is inside {tiny_model_dir}, a model folder")
    link.unlink()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "fragments"),
    [(["list", "--foo"], ["thermorl list: error: thermorl list takes no options, got --foo"]),
     (["eval", "--task", "arithmetic"], ["the following arguments are required: --model"]),
     (["eval", "--model", "{model}", "--samples", "0"], ["samples must be an integer >= 1, got 0"]),
     (["eval", "--model", "{model}", "--task", "arithmetc"], ["dataset 'arithmetc': not a built-in task (arithmetic"])],
)
def test_command_line_mistakes_are_one_line_without_the_usage_or_the_wandb_notice(tiny_model_dir, args, fragments):
    """Under WANDB_MODE=offline transformers prints "[INFO] Running in WANDB offline mode" as it is imported."""
    result = thermorl(*(arg.format(model=tiny_model_dir) for arg in args),
                      env={"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})
    assert_user_error(result, *fragments)
    assert "usage:" not in result.stderr and "WANDB" not in result.stdout


def test_check_of_a_recipe_leaving_bf16_unset_applies_the_cpu_defaults_and_names_the_loss(tiny_model_dir, tmp_path):
    """TRL turns bf16 on by default, which a CPU cannot honour and a recipe that never set it should not undo."""
    recipe = tmp_path / "model_only.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_model_dir}\nmax_completion_length: 16\n")  # 256 positions
    result = thermorl("check", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device cpu, bf16 False" in result.stdout
    assert "loss grpo (aggregation='batch_token_mean'" in result.stdout
    assert "from TRL's loss_type 'dapo')" in result.stdout


def test_new_run_over_another_runs_checkpoints_is_refused_and_touches_nothing(tiny_recipe, tmp_path):
    old = tmp_path / "run" / "checkpoint-300"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_bytes(b"old weights")
    (tmp_path / "run" / "trainer_state.json").write_text("{}")
    before = snapshot(tmp_path / "run")
    assert_user_error(thermorl("train", tiny_recipe), "checkpoint-300", "resume_from_checkpoint: latest",
                      "overwrite_output_dir: true")
    assert snapshot(tmp_path / "run") == before


def test_output_dir_that_cannot_be_written_is_named(tiny_recipe, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert_user_error(thermorl("train", tiny_recipe, "--output_dir", blocker / "run"), "output_dir", "cannot be written")
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_named(tiny_recipe, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert_user_error(thermorl("train", tiny_recipe, "--output_dir", folder), "output_dir", "Permission denied")
    finally:
        folder.chmod(0o755)


def test_reward_function_returning_strings_fails_naming_it(tiny_recipe, tmp_path):
    reward_file = tmp_path / "text_rewards.py"
    reward_file.write_text("def as_text(completions, **_):\n    return ['1.0' for _ in completions]\n")
    result = thermorl("train", tiny_recipe, "--reward_funcs", f"{reward_file}:as_text")
    assert_user_error(result, "Reward function 'as_text'", "'1.0' (str)", "example 0")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_run_shows_progress_and_results_and_sends_library_noise_to_its_log(tiny_recipe, tmp_path):
    result = thermorl("train", tiny_recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for noise in ("FutureWarning", "Setting accelerator to CPU", "{'loss'", "Loading weights"):
        assert noise not in output, output
    assert "step 2/2  loss" in output and "reward" in output
    assert f"Model and checkpoints written to {tmp_path / 'run'}" in result.stdout
    log = (tmp_path / "run" / "thermorl.log").read_text()
    assert "FutureWarning" in log  # what the libraries said is kept, in the run's folder

    verbose = thermorl("train", tiny_recipe, "--output_dir", tmp_path / "verbose", "--verbose")
    assert verbose.returncode == 0
    assert "FutureWarning" in verbose.stderr and "'loss'" in verbose.stdout + verbose.stderr


def test_gpu_launch_config_on_a_cpu_machine_names_the_setting(tiny_recipe, tmp_path):
    """accelerate's launcher adds its own report; the worker's line is printed and is the launcher's root cause."""
    result = thermorl("--config_file", ROOT / "launch" / "ddp.yaml", "--num_processes", "2",
                      "-m", "thermorl", "train", tiny_recipe, launcher=("-m", "accelerate.commands.launch"))
    assert result.returncode != 0
    message = "thermorl train: error: The accelerate config sets `mixed_precision: bf16`, but this run is on the CPU"
    assert message in result.stderr
    root_cause = result.stderr[result.stderr.index("Root Cause"):]
    assert message in root_cause
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_launched_by_thermorl_a_recipe_mistake_stops_before_any_worker(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1e-5\n")
    assert_user_error(thermorl("train", bad, "--accelerate_config", "cpu_zero2"), "Unknown recipe key 'learning_rat'")
    assert_user_error(thermorl("train", bad, "--accelerate_config", "zero9"),
                      "--accelerate_config: no file 'zero9'", "built-in: cpu_zero2, cpu_zero3, ddp")
    assert_user_error(thermorl("train", "quickstart", "--num_processes", "2"),
                      "--num_processes set without --accelerate_config")
    assert_user_error(thermorl("train", "--accelerate_config", "zero2"), "thermorl train needs a RECIPE")
    not_a_config = tmp_path / "config.yaml"
    not_a_config.write_text("- a list\n")
    assert_user_error(thermorl("train", "quickstart", "--accelerate_config", not_a_config),
                      f"--accelerate_config {not_a_config}: not an accelerate config")


@pytest.mark.parametrize("config, processes", [("ddp", "2"), ("single", None)])
def test_launched_by_thermorl_a_worker_mistake_is_the_workers_line_and_exit_2(config, processes, tiny_recipe, tmp_path):
    """Unlike `accelerate launch` (above), no launcher report follows: the worker's line, exit 2. `single` runs its
    one process as a subprocess, `ddp` through torch's elastic agent: both failure paths."""
    extra = ("--num_processes", processes, "--main_process_port", free_port()) if processes else ()
    result = thermorl("train", tiny_recipe, "--accelerate_config", config, *extra)
    lines = {line for line in result.stderr.splitlines() if line.strip()}
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and "`mixed_precision: bf16`, but this run is on the CPU" in lines.pop(), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()
    if config == "single":  # --debug reaches the worker, whose traceback then shows
        debug = thermorl("--debug", "train", tiny_recipe, "--accelerate_config", config)
        assert debug.returncode != 0 and "Traceback" in debug.stderr and "mixed_precision: bf16" in debug.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launched_by_thermorl_two_processes_train(tiny_recipe, tmp_path):
    result = thermorl("train", tiny_recipe, "--accelerate_config", "cpu_zero2", "--main_process_port", free_port())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"Model and checkpoints written to {tmp_path / 'run'}") == 1  # the main process's
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_launched_tiny_model_is_warmed_up_once_before_the_workers_start(tmp_path):
    """With no cached warm-up, each worker would run its own SFT inside the process group and the launch failed."""
    values = dict(
        model_name_or_path="thermorl:tiny", tiny_model_size="small", dataset="arithmetic", num_train_examples=64,
        num_eval_examples=8, warmup_examples=64, warmup_epochs=1, use_cpu=True, bf16=False,
        per_device_train_batch_size=8, num_generations=4, max_completion_length=4, max_steps=1, save_strategy="no",
        report_to=[], output_dir=str(tmp_path / "run"),
    )
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(values))
    cache = tmp_path / "cache"
    result = thermorl("train", recipe, "--accelerate_config", "cpu_zero2", "--main_process_port", free_port(),
                      env={"THERMORL_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(cache.glob("tiny-arithmetic-*"))) == 1 and not list(cache.glob(".warmup-*"))
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_launch_checks_keys_and_types_only_and_hands_accelerate_the_worker_command(tmp_path, monkeypatch):
    """4 completions per device with groups of 8 is valid on 8 processes (32 per step): the launching process, whose
    world size is 1, must not refuse it; accelerate gets the config, the launch options and `thermorl train ...`."""
    import accelerate.commands.launch as accelerate_launch

    from thermorl.launcher import launch, split_launch_args

    wide = tmp_path / "wide.yaml"
    wide.write_text("per_device_train_batch_size: 4\nnum_generations: 8\n")
    recipe_argv, options = split_launch_args(
        [str(wide), "--num_processes=8", "--accelerate_config", "zero2", "--seed", "3"])
    assert (recipe_argv, options) == ([str(wide), "--seed", "3"], {"--num_processes": "8", "--accelerate_config": "zero2"})
    launched = []
    monkeypatch.setattr(accelerate_launch, "launch_command", launched.append)
    assert launch(recipe_argv, options) == 0
    (args,) = launched
    assert args.config_file.endswith("zero2.yaml") and args.num_processes == 8 and args.module
    assert [args.training_script, *args.training_script_args] == ["thermorl", "train", str(wide), "--seed", "3"]
    with pytest.raises(ValueError, match="'seed' expects an integer, got 'three'"):
        launch([str(wide), "--seed", "three"], options)


def test_the_tiny_model_warms_up_on_warmup_dataset_and_refuses_another_task(monkeypatch):
    """warmup_dataset: the warm-up trains on it (held-out prompts of `dataset` still excluded); it must be the same
    built-in task as `dataset` (the warm-up teaches that task's answer format), and valid."""
    from thermorl import recipe_inputs
    from thermorl.errors import UserError
    from thermorl.models import warmup
    from thermorl.recipe import ThermoScriptArguments

    calls = []
    monkeypatch.setattr(warmup, "warm_tiny_model", lambda settings, held_out_prompts, show_logs: calls.append(
        (settings.task, held_out_prompts)) or "warmed")
    script_args = ThermoScriptArguments(dataset="arithmetic:digits=1,num_operands=3,max_operands=4,ops=+",
                                        warmup_dataset="arithmetic:digits=1,num_operands=3,ops=+")
    assert recipe_inputs.resolve_model_path("thermorl:tiny", script_args, {"prompt": ["1+2+3+4="]}) == "warmed"
    assert calls == [("arithmetic:digits=1,num_operands=3,ops=+", ["1+2+3+4="])]
    for warmup_dataset, message in (("countdown", "must be the same built-in task as dataset ('arithmetic')"),
                                    ("arithmetic:digitz=1", "unknown option 'digitz'")):
        script_args.warmup_dataset = warmup_dataset
        with pytest.raises(UserError, match=re.escape(message)):
            recipe_inputs.check_model_takes_task("thermorl:tiny", script_args)
    # Checked where a recipe's values become configs, so every command (train, check, bench, quickstart) refuses it.
    from thermorl.recipe import load_recipe

    with pytest.raises(UserError, match=re.escape("must be the same built-in task as dataset ('countdown_steps')")):
        load_recipe("testbed", {"warmup_dataset": "arithmetic"})
