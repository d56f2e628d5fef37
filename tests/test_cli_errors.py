"""Through the `thermorl` command: one error type (UserError) is a one-line exit 2, also
with --debug; any other exception keeps its traceback; recipe fields named in messages; overrides parsed by the
field's type; a model folder's own code never runs unless the recipe trusts it."""

import json
import os
import pty
import shutil
import subprocess
import sys

import pytest
import yaml

from thermorl import cli
from tests.test_user_errors import assert_user_error, snapshot, thermorl


@pytest.fixture
def recipe_for(tmp_path, tiny_model_dir):
    """A recipe file for the tiny random model (2 steps of 8 completions on the CPU) with `changes` applied."""
    def write(model_dir=tiny_model_dir, **changes):
        values = dict(
            model_name_or_path=str(model_dir), dataset="arithmetic", num_train_examples=16, num_eval_examples=4,
            use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
            max_steps=2, logging_steps=1, save_strategy="no", report_to=[], output_dir=str(tmp_path / "run"), seed=0,
        )
        values.update(changes)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(values))
        return path
    return write


# Item 11: the recipe's own field and a fix the user can apply, not transformers' do_sample / max_new_tokens.
@pytest.mark.parametrize(
    ("override", "fragments", "foreign"),
    [
        (["--temperature", "0"], ["temperature: must be > 0", "0.1"], "do_sample"),
        (["--max_completion_length", "0"], ["max_completion_length: must be >= 1"], "max_new_tokens"),
    ],
)
@pytest.mark.parametrize("command", ["check", "train"])
def test_sampling_settings_name_the_recipe_field(recipe_for, tmp_path, command, override, fragments, foreign):
    recipe = recipe_for()
    written = tmp_path / "run"
    written.mkdir()
    (written / "notes.txt").write_text("kept")
    before = snapshot(written)
    result = thermorl(command, recipe, *override)
    assert_user_error(result, *fragments)
    assert foreign not in result.stderr
    assert snapshot(written) == before


# Item 12: TRL's own checks of the recipe's values (its config's, its trainer's) stay one line.
@pytest.mark.parametrize(
    ("command", "override", "fragment"),
    [
        ("check", ["--num_generations", "3"], "generation_batch_size (8) must be divisible by num_generations (3)"),
        ("train", ["--sync_ref_model", "true", "--beta", "0"], "`sync_ref_model=True` while `beta=0.0`"),
    ],
)
def test_trl_checks_of_the_recipe_are_one_line(recipe_for, command, override, fragment):
    assert_user_error(thermorl(command, recipe_for(), *override), "error: recipe: ", fragment)


# Item 12: bench's arms file is read like a recipe: a YAML mistake is one line naming its place; no tag runs.
@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("recipe: quickstart\narms: {a: {}\n", ["not valid YAML", "line 2, column 7", "flow mapping"]),
        ("recipe: !!python/object/apply:os.system ['touch {marker}']\narms: {{a: {{}}}}\n",
         ["not valid YAML", "line 1", "!!python"]),
    ],
)
def test_bench_arms_file_yaml_error_is_one_line_and_debug_keeps_exit_2(tmp_path, text, fragments):
    marker = tmp_path / "tag-ran"
    arms = tmp_path / "arms.yaml"
    arms.write_text(text.format(marker=marker) if "{marker}" in text else text)
    assert_user_error(thermorl("bench", arms), f"arms file {arms}", *fragments)
    debug = thermorl("--debug", "bench", arms)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "not valid YAML" in debug.stderr
    assert not marker.exists()


# Item 12: only UserError is a user's mistake; any other ValueError is a bug and keeps its traceback (exit 1).
def test_an_internal_value_error_is_not_reported_as_a_user_error(monkeypatch, capsys):
    def broken(argv):
        raise ValueError("an internal invariant broke")

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["list"])
    assert "error:" not in capsys.readouterr().err


# Item 13: a value for a string field stays the text typed, braces and all; collections still parse where a field
# takes one.
def test_string_override_starting_with_a_brace_stays_a_string(recipe_for, tmp_path, tiny_model_dir):
    chat_model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, chat_model)
    tokenizer_config = chat_model / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer_config.write_text(json.dumps(config))
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(16)))
    recipe = recipe_for(model_dir=chat_model, dataset=str(data), reward_funcs=["math_verify"])
    result = thermorl("check", recipe, "--prompt_template", "{question}\nAnswer:", "--reward_funcs",
                      "[math_verify]", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 0+1=" in result.stdout and "| Answer:" in result.stdout


# Item 14: a model folder that ships its own code (config.json auto_map), run with a terminal that answers "y".
@pytest.fixture
def custom_code_model(tmp_path, tiny_model_dir):
    folder = tmp_path / "custom-code-model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "custom-code-ran"
    (folder / "custom_code.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import Qwen2Config\n\n\n"
        "class CustomConfig(Qwen2Config):\n    model_type = 'custom_qwen'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_qwen", auto_map={"AutoConfig": "custom_code.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def thermorl_on_a_terminal(*args, cwd):
    """`thermorl ARGS` with stdin a pseudo-terminal on which "y" is already typed (the answer to a [y/N] prompt)."""
    controller, terminal = pty.openpty()
    os.write(controller, b"y\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
                   "HF_MODULES_CACHE": str(cwd / "hf-modules")}
    try:
        return subprocess.run([sys.executable, "-m", "thermorl", *map(str, args)], stdin=terminal,
                              capture_output=True, text=True, cwd=cwd, env=environment, timeout=600)
    finally:
        os.close(controller)
        os.close(terminal)


@pytest.mark.parametrize("command", ["check", "train"])
def test_model_code_is_not_run_unless_the_recipe_trusts_it(recipe_for, tmp_path, custom_code_model, command):
    folder, marker = custom_code_model
    result = thermorl_on_a_terminal(command, recipe_for(model_dir=folder), cwd=tmp_path)
    assert_user_error(result, str(folder), "ships its own Python code", "trust_remote_code: true")
    assert "[y/N]" not in result.stdout + result.stderr
    assert not marker.exists()


def test_recipe_trust_remote_code_true_runs_the_model_code(recipe_for, tmp_path, custom_code_model):
    folder, marker = custom_code_model
    result = thermorl_on_a_terminal("check", recipe_for(model_dir=folder, trust_remote_code=True), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom_qwen" in result.stdout and marker.exists()


def test_eval_does_not_run_model_code_without_its_flag(tmp_path, custom_code_model):
    folder, marker = custom_code_model
    result = thermorl_on_a_terminal("eval", "--model", folder, "--task", "arithmetic", "--num-questions", "2",
                                    "--samples", "1", "--temperatures", "1.0", "--out", tmp_path / "eval", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ships its own Python code" in result.stderr and "--trust-remote-code" in result.stderr
    assert not marker.exists()


# Item 12: datasets' error on a malformed data file is the user's (converted where the file enters datasets).
def test_malformed_data_file_is_one_line(recipe_for, tmp_path):
    data = tmp_path / "broken.csv"
    data.write_text('prompt,answer\n"1+1=,2\n')
    result = thermorl("check", recipe_for(dataset=str(data), reward_funcs=["math_verify"]))
    assert_user_error(result, f"dataset file {data} cannot be read", "EOF inside string")


@pytest.mark.parametrize(("args", "fragment"), [(["--jobs", "x"], "argument --jobs: invalid int value: 'x'"),
                                                (["--split", "test"], "argument --split: invalid choice: 'test'")])
def test_a_bench_option_mistake_is_one_line_without_the_usage_text(tmp_path, args, fragment):
    result = thermorl("bench", tmp_path / "arms.yaml", *args)
    assert_user_error(result, fragment)
    assert "usage:" not in result.stderr
