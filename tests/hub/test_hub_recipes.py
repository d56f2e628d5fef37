"""Every Qwen3 GPU recipe, run as written on the CPU against hub-shaped stand-ins, and `thermorl check` on each;
the run's held-out record, and `thermorl eval` reading it."""

import csv
import json

import pytest
import yaml

from thermorl.cli import main as thermorl_main
from thermorl.recipe import builtin_recipe_path, list_builtin_recipes, load_recipe
from thermorl.tasks import task_from_spec
from thermorl.recipe_inputs import HELD_OUT_FILE
from thermorl.train import train

GPU_RECIPES = [name for name in list_builtin_recipes() if name.startswith("qwen3-")]

# Only the model and the dataset become the stand-ins; the dataset config, system prompt, template, answer column,
# rewards, loss and its settings, chat_template_kwargs and schedule are the recipe's own. Besides, every run here
# - turns vLLM off: the main CI lane has no vLLM (and no GPU); the vLLM path of these recipes is a GPU-machine check,
# - trains on the CPU in fp32 (bf16 needs a GPU),
# - is sized down to two steps of 4 completions of 8 tokens, so each recipe runs in seconds.
CPU_SMALL = {
    "use_vllm": False,
    "use_cpu": True,
    "bf16": False,
    "dtype": "float32",
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_generations": 2,
    "max_completion_length": 8,
    "report_to": [],
    "save_strategy": "no",
    "logging_steps": 1,
    "log_completions": False,
    "disable_tqdm": True,
}


def test_there_is_a_sapo_gspo_and_ead_recipe_for_gsm8k_and_math():
    assert sorted(GPU_RECIPES) == sorted(f"qwen3-0.6b-{data}-{method}" for data in ("gsm8k", "math")
                                         for method in ("sapo", "gspo", "ead"))
    for name in GPU_RECIPES:
        values = yaml.safe_load(builtin_recipe_path(name).read_text())
        assert values["model_name_or_path"] == "Qwen/Qwen3-0.6B"
        assert values["use_vllm"] is True and values["vllm_mode"] == "colocate"
        assert (values["dataset"], values["dataset_config"]) in (
            ("openai/gsm8k", "main"), ("DigitalLearningGmbH/MATH-lighteval", "default"))
        assert "GPU and time:" in builtin_recipe_path(name).read_text()


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_trains_on_the_standins(name, standins, tmp_path):
    values = yaml.safe_load(builtin_recipe_path(name).read_text())
    dataset = standins["gsm8k"] if "gsm8k" in name else standins["math"]
    overrides = {**CPU_SMALL, "model_name_or_path": standins["chat_model"], "dataset": dataset,
                 "output_dir": str(tmp_path / "run")}
    model_args, training_args, script_args = load_recipe(name, overrides)
    assert script_args.dataset_config == values["dataset_config"] and script_args.answer_column == values["answer_column"]

    trainer = train(model_args, training_args, script_args)

    assert trainer.state.global_step == 2
    # The prompt the model saw: the recipe's system prompt and template, through the model's chat template with the
    # recipe's chat_template_kwargs (Qwen3's non-thinking mode opens the reply with an empty think block).
    system, user = trainer.train_dataset[0]["prompt"]
    assert system == {"role": "system", "content": values["system_prompt"]}
    assert user["role"] == "user" and user["content"].endswith("\nPut your final answer within \\boxed{}.")
    rendered = trainer.processing_class.apply_chat_template(
        [system, user], tokenize=False, add_generation_prompt=True, **trainer.chat_template_kwargs)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # The recipe's reward read the reference answers, renamed from its answer column.
    assert "answer" in trainer.train_dataset.column_names
    history = trainer.state.log_history
    assert any("rewards/math_verify_reward/mean" in entry for entry in history)  # (GSPO generates every 4 steps)
    if values.get("temperature_schedule"):  # EAD: rollouts sampled on the recipe's schedule, TIS-corrected
        assert any("ead/temperature_mean" in entry for entry in history)
        assert any("ead/tis_weight_mean" in entry for entry in history)


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_check_resolves_each_gpu_recipe(name, standins, capsys):
    dataset = standins["gsm8k"] if "gsm8k" in name else standins["math"]
    # use_vllm stays on: check only reports the generation backend, and says whether vLLM is installed.
    overrides = ["--model_name_or_path", standins["chat_model"], "--dataset", dataset]
    assert thermorl_main(["check", name, *overrides]) == 0
    out = capsys.readouterr().out
    assert "chat template: yes" in out and "prompts conversational (chat template applies)" in out
    assert "math_verify_reward: [1.0, 0.0]" in out  # right and wrong sample completions, scored by the recipe's reward
    assert "per optimizer step: 128 completions = 16 prompts x 8 generations" in out


# --- held-out rows: written by train, read by eval -------------------------------------------------------------------

QUICKSTART_TASK = "arithmetic:digits=1,num_operands=3,ops=+"  # 1000 distinct prompts in all


@pytest.fixture(scope="module")
def quickstart_shaped_run(tiny_model_dir, tmp_path_factory):
    """A one-step run with the quickstart's split (700 training, 256 held-out prompts, seed 0) on the tiny model."""
    output_dir = tmp_path_factory.mktemp("run") / "quickstart"
    overrides = {**CPU_SMALL, "model_name_or_path": tiny_model_dir, "output_dir": str(output_dir), "max_steps": 1,
                 "max_completion_length": 3}
    train(*load_recipe("quickstart", overrides))
    return output_dir


def test_train_records_the_held_out_split(quickstart_shaped_run):
    record = json.loads((quickstart_shaped_run / HELD_OUT_FILE).read_text())
    train_rows, held_out = task_from_spec(QUICKSTART_TASK).make_splits(700, 256, seed=0)
    assert record["dataset"] == QUICKSTART_TASK and record["seed"] == 0
    assert (record["num_train_examples"], record["num_eval_examples"]) == (700, 256)
    assert record["prompts"] == held_out["prompt"] and not set(record["prompts"]) & set(train_rows["prompt"])


def _evaluated_prompts(out_dir) -> list[str]:
    with open(out_dir / "questions.csv") as file:
        return [row["prompt"] for row in csv.DictReader(file)]


EVAL_FAST = ["--temperatures", "0.0", "--samples", "1", "--max-new-tokens", "3", "--no-progress"]


def test_eval_defaults_to_the_runs_task_and_held_out_rows(quickstart_shaped_run, tmp_path):
    held_out = json.loads((quickstart_shaped_run / HELD_OUT_FILE).read_text())["prompts"]
    # The docs' example: the quickstart task on the quickstart's output folder (its 1000 prompts cannot give the
    # 2000 training rows eval used to ask for).
    argv = ["eval", "--model", str(quickstart_shaped_run), "--task", QUICKSTART_TASK, "--num-questions", "5",
            "--out", str(tmp_path / "a"), *EVAL_FAST]
    assert thermorl_main(argv) == 0
    assert _evaluated_prompts(tmp_path / "a") == held_out[:5]
    # Without --task, the run's own task.
    argv = ["eval", "--model", str(quickstart_shaped_run), "--num-questions", "3", "--out", str(tmp_path / "b"), *EVAL_FAST]
    assert thermorl_main(argv) == 0
    assert _evaluated_prompts(tmp_path / "b") == held_out[:3]


def test_eval_without_a_run_uses_the_recipe_defaults_or_the_flags(tiny_model_dir, tmp_path, capsys):
    argv = ["eval", "--model", tiny_model_dir, "--task", QUICKSTART_TASK, "--out", str(tmp_path / "e"), *EVAL_FAST]
    assert thermorl_main(argv) == 2  # one line naming the flags, exit 2
    error = capsys.readouterr().err
    assert "held-out rows are drawn apart from 2048 training rows (seed 42)" in error and "--num-train-examples" in error
    argv += ["--num-train-examples", "700", "--data-seed", "0", "--num-questions", "4"]
    assert thermorl_main(argv) == 0
    assert _evaluated_prompts(tmp_path / "e") == task_from_spec(QUICKSTART_TASK).make_splits(700, 4, seed=0)[1]["prompt"]
    assert thermorl_main(["eval", "--model", tiny_model_dir, "--out", str(tmp_path / "f"), *EVAL_FAST]) == 2
    assert f"--task is required: {tiny_model_dir} holds no {HELD_OUT_FILE}" in capsys.readouterr().err
