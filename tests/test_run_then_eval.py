"""A short run as a user starts it (`thermorl train RECIPE`, W&B without an API key, the completions table at every
logging step), then `thermorl eval --model RUN_FOLDER` as docs/evaluation.md shows it, without --max-new-tokens."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from thermorl.cli import main as thermorl_main


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """(run folder, the folder the command ran in, its stdout) of 2 steps of the tiny model with report_to wandb,
    log_completions and logging_steps 1, with no W&B key anywhere."""
    root = tmp_path_factory.mktemp("run")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=tiny_model_dir, dataset="arithmetic", num_train_examples=16, num_eval_examples=4,
        use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
        max_steps=2, logging_steps=1, save_strategy="no", report_to=["wandb"], log_completions=True,
        num_completions_to_print=2, output_dir=str(root / "run"), seed=0,
    )))
    cwd = root / "cwd"
    cwd.mkdir()
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("WANDB_") or name == "WANDB_SILENT"}
    wandb_home = root / "wandb-home"  # W&B's settings and caches, away from the home folder
    environment.update(OMP_NUM_THREADS="1", NETRC=str(root / "no-netrc"), WANDB_CONFIG_DIR=str(wandb_home),
                       WANDB_CACHE_DIR=str(wandb_home), WANDB_DATA_DIR=str(wandb_home))
    result = subprocess.run([sys.executable, "-m", "thermorl", "train", str(recipe)], cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", cwd, result.stdout


def test_wandb_offline_run_is_in_the_run_folder_and_each_table_prints_once(run):
    folder, cwd, stdout = run
    offline_runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert f"upload it with: wandb sync {offline_runs[0]}" in stdout
    assert not (cwd / "wandb").exists() and list(cwd.iterdir()) == []
    titles = [line for line in stdout.splitlines() if line.startswith("╭") and " Step " in line]
    assert [title.split(" Step ")[1].split()[0] for title in titles] == ["1", "2"], stdout


def test_eval_of_a_run_folder_defaults_to_its_completion_length(run, tmp_path, capsys):
    folder, _, _ = run
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(folder), "--task", "arithmetic", "--temperatures", "0.0,1.0", "--samples", "2",
            "--no-progress", "--out", str(out)]
    assert thermorl_main(argv) == 0
    assert "--max-new-tokens 4 (the training run's max_completion_length)" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["config"]["max_new_tokens"] == 4


def test_eval_of_a_model_folder_defaults_to_what_fits_its_positions(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "eval"
    argv = ["eval", "--model", tiny_model_dir, "--task", "arithmetic", "--num-questions", "3", "--temperatures", "0.0",
            "--samples", "1", "--no-progress", "--out", str(out)]
    assert thermorl_main(argv) == 0
    with open(out / "questions.csv", newline="") as handle:
        prompts = [row["prompt"] for row in csv.DictReader(handle)]
    longest = max(len(AutoTokenizer.from_pretrained(tiny_model_dir)(prompt)["input_ids"]) for prompt in prompts)
    expected = 256 - longest  # the tiny model's 256 positions, less the longest prompt; TRL's 256 would not fit
    assert f"--max-new-tokens {expected} (what the longest prompt, {longest} tokens" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["config"]["max_new_tokens"] == expected
