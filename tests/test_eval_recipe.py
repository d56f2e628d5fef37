"""`thermorl eval --recipe RECIPE` and `thermorl eval --model RUN_FOLDER` (the run's thermorl_recipe.yaml) evaluate
on the training prompts: the recipe's dataset config, prompt template, system prompt and answer column, rendered with
its chat_template_kwargs exactly as TRL's GRPOTrainer renders them, and scored by the recipe's reward."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "hub"))
from conftest import GSM8K_ROWS, build_chat_model, build_gsm8k_folder  # noqa: E402  (tests/hub/conftest.py)

from thermorl.cli import main as thermorl_main  # noqa: E402
from thermorl.recipe import builtin_recipe_path, resolve_recipe  # noqa: E402
from thermorl.run_recipe import write_run_recipe  # noqa: E402

RECIPE = "qwen3-0.6b-gsm8k-sapo"
FAST = ["--temperatures", "0.0", "--samples", "1", "--max-new-tokens", "2", "--no-progress"]
TEST_ROWS = GSM8K_ROWS[8:10]  # the stand-in's "test" split (see build_gsm8k_folder)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {"chat_model": build_chat_model(root / "chat-model"), "gsm8k": build_gsm8k_folder(root / "gsm8k")}


@pytest.fixture
def fed_prompts(monkeypatch):
    """The prompt strings eval feeds the model; each completion answers the first test row's question."""
    prompts = []

    def fake_sampling(model, tokenizer, texts, temperatures, samples, max_new_tokens, **_):
        prompts.extend(texts)
        return [[[f"The answer is \\boxed{{{TEST_ROWS[0][1].split('#### ')[1]}}}."] * samples for _ in temperatures]
                for _ in texts]

    monkeypatch.setattr("thermorl.evaluation.pipeline.sample_completions", fake_sampling)
    return prompts


def trl_prompt_ids(tokenizer, conversation, chat_template_kwargs):
    """The prompt token ids TRL 1.16's GRPOTrainer generates from (GRPOTrainer._tokenize_prompts)."""
    return tokenizer.apply_chat_template(conversation=[conversation], add_generation_prompt=True, tokenize=True,
                                         return_dict=True, **chat_template_kwargs)["input_ids"][0]


def assert_training_prompts(prompts, tokenizer_dir):
    import yaml
    from transformers import AutoTokenizer

    recipe = yaml.safe_load(builtin_recipe_path(RECIPE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(prompts) == len(TEST_ROWS)
    for text, (question, _) in zip(prompts, TEST_ROWS):
        conversation = [{"role": "system", "content": recipe["system_prompt"]},
                        {"role": "user", "content": recipe["prompt_template"].replace("{question}", question)}]
        expected = trl_prompt_ids(tokenizer, conversation, recipe["chat_template_kwargs"])
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(expected)
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking: false


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_eval_with_a_recipe_feeds_the_training_prompts_and_scores_with_its_reward(standins, fed_prompts, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--model", standins["chat_model"], "--recipe", RECIPE, "--dataset", standins["gsm8k"],
            "--out", str(out), *FAST]
    assert thermorl_main(argv) == 0
    assert_training_prompts(fed_prompts, standins["chat_model"])
    report = read_report(out)
    # The recipe's math_verify reward against the answer column: the first row's answer is right, the second's not.
    assert report["per_temperature"][0]["accuracy"] == 0.5
    assert report["config"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_eval_on_a_run_folder_uses_its_saved_recipe(standins, fed_prompts, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(standins["chat_model"], run / "checkpoint-1")
    write_run_recipe(run, resolve_recipe(RECIPE, {"dataset": standins["gsm8k"]}))
    out = tmp_path / "eval"
    assert thermorl_main(["eval", "--model", str(run / "checkpoint-1"), "--out", str(out), *FAST]) == 0
    assert_training_prompts(fed_prompts, standins["chat_model"])
    assert read_report(out)["config"]["task"] == standins["gsm8k"]


def test_eval_refuses_task_with_a_recipe_and_recipe_fields_without_one(standins, tmp_path, capsys):
    argv = ["eval", "--model", standins["chat_model"], "--recipe", RECIPE, "--task", standins["gsm8k"],
            "--out", str(tmp_path / "a"), *FAST]
    assert thermorl_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--task and --recipe both say which data to evaluate" in err
    argv = ["eval", "--model", standins["chat_model"], "--task", standins["gsm8k"], "--system_prompt", "Hi",
            "--out", str(tmp_path / "b"), *FAST]
    assert thermorl_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--system_prompt Hi: not an option of thermorl eval" in err
    assert "Traceback" not in err and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_eval_refuses_split_flags_a_recipe_would_override(standins, tmp_path, capsys):
    argv = ["eval", "--model", standins["chat_model"], "--recipe", "quickstart", "--data-seed", "3",
            "--out", str(tmp_path / "a"), *FAST]
    assert thermorl_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-seed: the recipe evaluated here sets the split" in err
