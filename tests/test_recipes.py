"""Recipes parse through HF's argument parser; typos and wrong types fail at load time, naming the key."""

import re
import subprocess
import sys

import pytest
import yaml

from thermorl.models.names import resolve_named_model
from thermorl.recipe import builtin_recipe_path, list_builtin_recipes, load_recipe

CPU = {"model_name_or_path": "m", "use_cpu": True, "bf16": False}


@pytest.mark.parametrize("name", list_builtin_recipes())
def test_every_builtin_recipe_parses_and_validates(name):
    values = yaml.safe_load(builtin_recipe_path(name).read_text())
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine; the rest is checked as is.
    overrides = {"bf16": False, "use_cpu": True} if values.get("bf16") else {}
    model_args, training_args, script_args = load_recipe(name, overrides)
    # A built-in model name is resolved to its model folder (thermorl:smollm2-135m); others are kept as written.
    assert model_args.model_name_or_path == resolve_named_model(values["model_name_or_path"])
    if "policy_loss" in values:
        assert training_args.policy_loss == values["policy_loss"]
    for key, value in values.get("policy_loss_kwargs", {}).items():
        assert training_args.policy_loss_kwargs[key] == value
    assert script_args.dataset == values["dataset"]


def test_at_least_one_recipe_per_loss_and_real_model_recipes():
    losses = {yaml.safe_load(builtin_recipe_path(n).read_text()).get("policy_loss") for n in list_builtin_recipes()}
    assert {"grpo", "gspo", "sapo", "adpo"} <= losses
    assert any(n.startswith("qwen3") for n in list_builtin_recipes())


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"Unknown recipe key 'learning_rat'.*learning_rate"):
        load_recipe({**CPU, "learning_rat": 1e-5})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("learning_rate", "fast", r"'learning_rate' expects a number"),
        ("max_steps", 2.5, r"'max_steps' expects an integer"),
        ("use_cpu", "yes", r"'use_cpu' expects true/false"),
        ("policy_loss_kwargs", [1, 2], r"'policy_loss_kwargs'"),
    ],
)
def test_wrong_type_is_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_recipe({**CPU, key: value})


def test_yaml_scientific_notation_string_is_a_float():
    # PyYAML reads "1e-5" (no dot) as a string; the field type decides.
    _, training_args, _ = load_recipe({**CPU, "learning_rate": "1e-5"})
    assert training_args.learning_rate == pytest.approx(1e-5)


def test_overrides_from_the_command_line_win():
    model_args, training_args, script_args = load_recipe(
        "sapo", ["--learning_rate", "3e-5", "--max-steps=7", "--dataset", "countdown", "--policy_loss_kwargs",
                 "{tau_pos: 0.5}"]
    )
    assert training_args.learning_rate == pytest.approx(3e-5)
    assert training_args.max_steps == 7
    assert script_args.dataset == "countdown"
    assert training_args.policy_loss_kwargs == {"tau_pos": 0.5}


def test_override_text_is_converted_by_the_field_type_not_by_yaml():
    # YAML would read "no" as False; save_strategy is a string field whose value "no" means no checkpoints.
    _, training_args, _ = load_recipe("sapo", ["--save_strategy", "no", "--bf16", "false", "--report_to", "[]"])
    assert training_args.save_strategy == "no" and training_args.bf16 is False and training_args.report_to == []


def test_loss_parameters_are_validated_through_the_recipe():
    with pytest.raises(ValueError, match="'eps' for loss 'grpo'"):
        load_recipe({**CPU, "policy_loss": "grpo", "policy_loss_kwargs": {"eps": 0.2}})


def test_cli_reports_a_bad_recipe_key_and_exits_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model_name_or_path: m\nnum_generation: 4\n")
    run = subprocess.run(
        [sys.executable, "-m", "thermorl", "train", str(recipe)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "Unknown recipe key 'num_generation'" in run.stderr and "num_generations" in run.stderr


def test_cli_lists_losses_and_tasks():
    run = subprocess.run([sys.executable, "-m", "thermorl", "list"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    assert "sapo: " in run.stdout and "tau_neg=1.05" in run.stdout
    assert not re.search(r"\bbeta=", run.stdout)  # set through the recipe's `beta`; refused in policy_loss_kwargs
    assert "arithmetic" in run.stdout and "quickstart" in run.stdout
