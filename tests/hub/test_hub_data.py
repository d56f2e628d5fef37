"""Hub-shaped data: dataset configs, prompt templates and system prompts, answer columns, the reasoning-output
verifier, and the one-line errors for each way a recipe can get them wrong (all offline, on stand-ins)."""

import json

import pytest

from thermorl.cli import main as thermorl_main
from thermorl.tasks import load_prompt_dataset, math_verify_reward
from thermorl.tasks.verify import final_answer, gold_answer

GSM8K_TEMPLATE = "{question}\nPut your final answer within \\boxed{}."


# The questions of the GSM8K stand-in's test split (tests/hub/conftest.py).
GSM8K_TEST_QUESTIONS = [
    "Max runs 3 km a day for a week. How far does he run?", "A pizza has 8 slices and 5 are eaten. How many are left?"
]
# --- the verifier on real-looking reasoning output -------------------------------------------------------------

VERDICTS = [
    # (completion, reference, correct)
    ("<think>\n3 + 4 = 7, so \\boxed{7}? No: 3 * 4 = 12.\n</think>\nThe answer is \\boxed{12}.", "... #### 12", True),
    ("<think>\n3 + 4 = 7, so \\boxed{7}? No: 3 * 4 = 12.\n</think>\nThe answer is \\boxed{12}.", "... #### 7", False),
    ("<think>\nHalf of 48 is 24, and 24 + 48 = 72, so the answer", "#### 72", False),  # cut off while thinking
    ("First \\boxed{5}; checking again, it is \\boxed{6}.", "#### 6", True),  # the last boxed answer counts
    ("First \\boxed{5}; checking again, it is \\boxed{6}.", "#### 5", False),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72",
     "Natalia sold 48/2 = 24 clips in May.\n#### 72", True),  # GSM8K's own answer format
    ("5 - 3 = 2 apples are left.\n#### 2\nNext, a different question: 10 + 1 = 11", "#### 2", True),
    ("<think>one half</think>\nSo the probability is \\boxed{\\frac{1}{2}}.", "It is $\\boxed{\\frac12}$.", True),
    ("<think>x</think>\\boxed{\\dfrac{3}{4}}", "so we get $\\boxed{0.75}$", True),
    ("\\boxed{\\frac{3}{4}}", "We get $\\boxed{\\frac{4}{3}}$.", False),
    ("So $x = \\boxed{\\sqrt{2}}$.", "Thus $x = \\boxed{\\sqrt 2}$.", True),
    ("<think></think>\n\n\\boxed{x^2+2x+1}", "$\\boxed{(x+1)^2}$", True),
    ("The answer is \\boxed{1,234}.", "#### 1234", True),
    ("The total is 18 dollars.", "#### 18", True),  # no box: math-verify's last answer in the text
    ("The answer is \\boxed{12", "#### 12", False),  # an unclosed box is no answer
    ("", "#### 3", False),
]


@pytest.mark.parametrize(("completion", "reference", "correct"), VERDICTS)
def test_math_verify_reward_on_reasoning_completions(completion, reference, correct):
    assert math_verify_reward([completion], answer=[reference]) == [float(correct)]
    # TRL hands a conversational completion as a list with one assistant message: same verdict.
    assert math_verify_reward([[{"role": "assistant", "content": completion}]], answer=[reference]) == [float(correct)]


def test_final_and_gold_answer_extraction():
    assert final_answer("<think>\\boxed{1}</think> so \\boxed{\\frac{a}{b}} and then \\boxed{2}") == "2"
    assert final_answer("<think>no end") is None
    assert final_answer("x\n#### 72\n") == "72"
    assert gold_answer("Tom had 3.\n#### 1,000") == "1,000"
    assert gold_answer("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer("42") == "42"


# --- configs, templates, system prompts, answer columns -------------------------------------------------------------


def test_a_config_is_required_and_the_error_lists_the_available_ones(standins):
    with pytest.raises(ValueError, match=r"dataset_config is missing: .* has configs \['main', 'socratic'\]"):
        load_prompt_dataset(standins["gsm8k"], prompt_column="question")
    with pytest.raises(ValueError, match=r"dataset_config 'mian' is not one of its configs.*\['main', 'socratic'\]"):
        load_prompt_dataset(standins["gsm8k"], config="mian", prompt_column="question")
    with pytest.raises(ValueError, match=r"dataset_split 'validation'"):
        load_prompt_dataset(standins["gsm8k"], "validation", config="main", prompt_column="question")
    socratic = load_prompt_dataset(standins["gsm8k"], "test", config="socratic", prompt_column="question")
    assert socratic["prompt"] == GSM8K_TEST_QUESTIONS and socratic["answer"][0].startswith("How many?")


def test_template_and_system_prompt_make_conversational_prompts(standins):
    data = load_prompt_dataset(standins["gsm8k"], config="main", prompt_template=GSM8K_TEMPLATE,
                               system_prompt="Be brief.")
    assert data[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tom has 3 boxes of 4 pens. How many pens does he have?\nPut your final answer "
                                    "within \\boxed{}."},
    ]
    assert data[0]["answer"] == "He has 3 * 4 = <<3*4=12>>12 pens.\n#### 12"
    # A template alone gives a user message; a literal "{{word}}" stays braced.
    data = load_prompt_dataset(standins["gsm8k"], config="main", prompt_template="Q: {question} {{x}}")
    assert data[1]["prompt"] == [{"role": "user", "content": "Q: A cake costs $5. How much do 6 cakes cost? {x}"}]


def test_answer_column_is_renamed_to_answer_and_rewards_read_the_boxed_solution(standins):
    data = load_prompt_dataset(standins["math"], config="default", prompt_template="{problem}",
                               answer_column="solution")
    assert "solution" not in data.column_names and data[0]["answer"].endswith("\\boxed{\\frac{3}{4}}$.")
    rows = data.select(range(2))
    completions = ["<think>1/2 + 1/4</think>\\boxed{0.75}", "<think>2x = 8</think>\\boxed{8}"]
    assert math_verify_reward(completions, **{k: rows[k] for k in rows.column_names if k != "prompt"}) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"answer_column: dataset .* has no column 'answer'; its columns are"):
        load_prompt_dataset(standins["math"], config="default", prompt_column="problem", answer_column="answer")


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([{"question": "q", "answer": "1"}], {"prompt_template": "{question} ({level})"},
         r"prompt_template names column\(s\) \['level'\] that dataset .* lacks; its columns are \['question', 'answer'\]"),
        ([{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], "answer": "1"}],
         {"system_prompt": "Be brief."}, r"system_prompt: dataset .* already has a system message"),
        ([{"question": "q"}], {"prompt_template": "{question}", "prompt_column": "question"},
         r"set prompt_template or prompt_column, not both"),
    ],
)
def test_bad_shaping_is_refused_with_the_field_named(tmp_path, rows, kwargs, message):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=message):
        load_prompt_dataset(str(path), **kwargs)


def test_a_conversational_dataset_gets_the_system_prompt(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}) + "\n")
    data = load_prompt_dataset(str(path), system_prompt="Be brief.")
    assert data[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def test_an_empty_data_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match=r"dataset file .*empty.jsonl is empty"):
        load_prompt_dataset(str(path))


# --- the same mistakes through the CLI: one line, exit 2, before any model loads -------------------------------------


def _cli_error(capsys, argv) -> str:
    assert thermorl_main(argv) == 2
    err = capsys.readouterr().err
    # One error line; the rest of stderr is datasets' progress bars.
    lines = [line for line in err.splitlines() if line.startswith("thermorl ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


CPU_RUN = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--use_vllm", "false", "--report_to", "[]"]


@pytest.mark.parametrize("command", ["train", "check"])
def test_recipe_mistakes_fail_before_the_model_loads(command, standins, tmp_path, capsys):
    # An empty model folder, which cannot load: each error below must come first, from the data alone.
    (tmp_path / "empty-model").mkdir()
    recipe = ["qwen3-0.6b-gsm8k-sapo", *CPU_RUN, "--model_name_or_path", str(tmp_path / "empty-model"),
              "--output_dir", str(tmp_path / "out")]
    error = _cli_error(capsys, [command, *recipe, "--dataset", standins["gsm8k"], "--dataset_config", "null"])
    assert "dataset_config is missing" in error and "['main', 'socratic']" in error
    error = _cli_error(capsys, [command, *recipe, "--dataset", standins["math"], "--dataset_config", "default"])
    assert "prompt_template names column(s) ['question']" in error and "problem" in error
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    error = _cli_error(capsys, [command, *recipe, "--dataset", str(empty), "--dataset_config", "null"])
    assert "is empty" in error
    assert not (tmp_path / "out").exists()


def test_a_chat_recipe_on_a_model_without_a_chat_template_is_refused(standins, tiny_model_dir, tmp_path, capsys):
    recipe = ["qwen3-0.6b-gsm8k-sapo", *CPU_RUN, "--model_name_or_path", tiny_model_dir, "--dataset", standins["gsm8k"],
              "--output_dir", str(tmp_path / "out")]
    for command in ("train", "check"):
        error = _cli_error(capsys, [command, *recipe])
        assert "model_name_or_path" in error and "has no chat template" in error


def test_the_tiny_model_with_a_users_dataset_names_the_model_to_use(standins, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    recipe = ["quickstart", "--dataset", str(data), "--reward_funcs", "[math_verify]", "--output_dir", str(tmp_path / "o")]
    for command in ("train", "check"):
        error = _cli_error(capsys, [command, *recipe])
        assert "'thermorl:tiny' is warmed up on built-in tasks only" in error and "Qwen/Qwen3-0.6B" in error


def test_check_renders_the_prompt_through_the_chat_template(standins, capsys):
    assert thermorl_main(["check", "qwen3-0.6b-math-sapo", "--model_name_or_path", standins["chat_model"],
                          "--dataset", standins["math"]]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>system\n  | You are a helpful assistant" in out
    assert "<|im_start|>user\n  | What is $\\frac{1}{2} + \\frac{1}{4}$?\n  | Put your final answer within \\boxed{}." in out
    assert "<|im_start|>assistant\n  | <think>" in out  # enable_thinking: false, from chat_template_kwargs
    assert "math_verify_reward: [1.0, 0.0]" in out
    assert "(config default), split train: 24 rows" in out


def test_the_readme_reward_function_example_runs_as_trl_calls_it():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```python")[1:] if "def short_and_right" in b).split("```")[0]
    namespace = {}
    exec(block, namespace)
    completions = [[{"role": "assistant", "content": "<think>7 * 6</think>\n\\boxed{42}"}],
                   [{"role": "assistant", "content": "\\boxed{41}"}]]
    rewards = namespace["short_and_right"](prompts=[[{"role": "user", "content": "6 * 7?"}]] * 2, completions=completions,
                                           answer=["#### 42"] * 2, completion_ids=[[], []], trainer_state=None)
    lengths = [len(c[0]["content"]) for c in completions]
    assert rewards == pytest.approx([1.0 - 0.001 * lengths[0], -0.001 * lengths[1]])


def test_check_on_a_tiny_model_recipe_scores_the_tasks_answer(capsys):
    assert thermorl_main(["check", "quickstart"]) == 0  # offline, no warm-up: the plan only
    out = capsys.readouterr().out
    assert "model: thermorl:tiny (tiny character-level Qwen2" in out and "chat template: none" in out
    assert "700 rows" in out and "256 held-out rows" in out and "prompts plain text" in out
    assert "arithmetic_correct: [1.0, 0.0]" in out
    assert "per optimizer step: 64 completions = 8 prompts x 8 generations" in out


def test_an_unreachable_hub_dataset_or_model_is_one_line_naming_the_field(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    from thermorl.recipe import load_recipe
    from thermorl.recipe_inputs import load_tokenizer

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached
    with pytest.raises(ValueError, match=r"dataset 'thermorl-test/absent': .*point dataset at a local copy"):
        load_prompt_dataset("thermorl-test/absent", config="main")
    model_args, _, _ = load_recipe({"model_name_or_path": "thermorl-test/absent-model", "use_cpu": True})
    with pytest.raises(ValueError, match=r"^model_name_or_path 'thermorl-test/absent-model': [^\n]*$"):
        load_tokenizer(model_args)
