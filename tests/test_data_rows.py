"""Every data row is checked as the dataset loads, in one place that `thermorl train`, `check` and `eval` share: a
bad row ends with one line naming the file, the row (1-based) and the column, exit code 2, before anything is
written; so do prompts longer than the model has positions for, and out-of-range beta / epsilon / temperature."""

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from thermorl.cli import main

GOOD_ROWS = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(16)]
BAD_ROW = 7  # 1-based, as the messages count rows


def write_jsonl(path: Path, rows: list, bad_row: dict | None = None) -> Path:
    rows = list(rows)
    if bad_row is not None:
        rows[BAD_ROW - 1] = bad_row
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    """A recipe training the random tiny model (256 positions) on a data file for 2 steps, and the output folder of
    an earlier run stopped before its first checkpoint (its recipe), holding a file that a refused run must leave as
    it is."""
    reward_file = tmp_path / "length_reward.py"
    reward_file.write_text("def length(completions, **_):\n    return [float(len(c)) for c in completions]\n")
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("kept")
    (output_dir / "thermorl_recipe.yaml").write_text("model_name_or_path: thermorl:tiny\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(tiny_model_dir), dataset=str(write_jsonl(tmp_path / "data.jsonl", GOOD_ROWS)),
        reward_funcs=[f"{reward_file}:length"], use_cpu=True, bf16=False, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=4, max_steps=2, logging_steps=1, save_strategy="no", report_to=[],
        output_dir=str(output_dir), seed=0,
    )))
    return dict(recipe=recipe, reward=f"{reward_file}:length", model=tiny_model_dir, output_dir=output_dir,
                tmp_path=tmp_path)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of `thermorl ARGS` run in this process; argparse's usage errors exit through SystemExit."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str, usage_allowed: bool = False) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    if usage_allowed:  # `thermorl eval` reports some errors as argparse usage errors: usage, then the error line
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("thermorl "), err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train_check_and_eval_refuse(capsys, setup, data: Path, *fragments: str) -> None:
    before = snapshot(setup["output_dir"])
    for command in ("train", "check"):
        code, err = run_cli(capsys, command, setup["recipe"], "--dataset", data)
        assert_one_line_error(code, err, f"dataset '{data}'", *fragments)
    assert snapshot(setup["output_dir"]) == before
    eval_out = setup["tmp_path"] / "eval"
    code, err = run_cli(capsys, "eval", "--model", setup["model"], "--task", data, "--reward-fn", setup["reward"],
                        "--samples", 1, "--temperatures", "1.0", "--max-new-tokens", 4, "--out", eval_out,
                        "--no-progress")
    assert_one_line_error(code, err, f"dataset '{data}'", *fragments, usage_allowed=True)
    assert not eval_out.exists()


@pytest.mark.parametrize(
    ("bad_row", "problem"),
    [
        ({"prompt": ["a", "b"], "answer": "1"}, "list ['a', 'b'] where a string prompt or a conversation"),
        ({"prompt": "", "answer": "1"}, "empty prompt"),
        ({"prompt": "  \n", "answer": "1"}, "empty prompt"),
        ({"prompt": 5, "answer": "1"}, "int 5 where a string prompt"),
        ({"prompt": None, "answer": "1"}, "no prompt (null)"),
        ({"prompt": "3+3=", "answer": None}, "column 'answer': no reference answer (null)"),
    ],
)
def test_a_bad_row_is_named_by_train_check_and_eval(capsys, setup, bad_row, problem):
    data = write_jsonl(setup["tmp_path"] / "bad.jsonl", GOOD_ROWS, bad_row)
    train_check_and_eval_refuse(capsys, setup, data, f"row {BAD_ROW} (1-based)", problem)


def test_all_empty_prompts_name_row_1(capsys, setup):
    data = write_jsonl(setup["tmp_path"] / "empty.jsonl", [{"prompt": "", "answer": "1"}] * 16)
    train_check_and_eval_refuse(capsys, setup, data, "row 1 (1-based), column 'prompt': empty prompt")


def test_an_invalid_utf8_byte_is_named_with_its_row(capsys, setup):
    data = setup["tmp_path"] / "latin1.jsonl"
    lines = [json.dumps(row).encode() for row in GOOD_ROWS]
    lines[8] = lines[8].replace(b"+1=", b"+\xff1=")  # row 9
    data.write_bytes(b"\n".join(lines) + b"\n")
    train_check_and_eval_refuse(capsys, setup, data, "row 9 (1-based), column 'prompt': not valid UTF-8", "0xff")


def test_a_prompt_longer_than_the_model_positions_is_refused_within_seconds(capsys, setup):
    data = write_jsonl(setup["tmp_path"] / "long.jsonl", GOOD_ROWS, {"prompt": "1" * 100_000, "answer": "1"})
    started = time.perf_counter()
    train_check_and_eval_refuse(capsys, setup, data, f"row {BAD_ROW} (1-based)", "100000 tokens",
                                "256 positions", "1 of 16 prompts are too long")
    assert time.perf_counter() - started < 120  # it ran out of memory before; now it is refused before training


def test_completion_length_filling_the_model_positions_is_refused(capsys, setup):
    code, err = run_cli(capsys, "check", setup["recipe"], "--max_completion_length", 256)
    assert_one_line_error(code, err, "max_completion_length 256 leaves no room for a prompt", "256 positions")


def test_a_string_prompt_among_conversations_is_named(capsys, setup):
    conversation = [{"role": "user", "content": "1+1="}]
    rows = [{"prompt": conversation, "answer": "2"}] * 16
    data = write_jsonl(setup["tmp_path"] / "mixed.jsonl", rows, {"prompt": "1+1=", "answer": "2"})
    code, err = run_cli(capsys, "check", setup["recipe"], "--dataset", data)
    assert_one_line_error(code, err, f"row {BAD_ROW} (1-based)", "a string prompt, but row 1 is a conversation")


def test_conversations_and_good_rows_pass():
    from thermorl.errors import UserError
    from thermorl.tasks.rows import check_rows

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}]
    check_rows(Dataset.from_dict({"prompt": [conversation] * 3, "answer": ["2"] * 3}), "chat.jsonl")
    check_rows(Dataset.from_list(GOOD_ROWS), "data.jsonl")
    with pytest.raises(UserError, match=r"row 2 \(1-based\), column 'prompt': empty conversation"):
        check_rows(Dataset.from_dict({"prompt": [conversation, []]}), "chat.jsonl")


def test_a_null_in_a_prompt_template_column_is_named(capsys, setup):
    rows = [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(16)]
    data = write_jsonl(setup["tmp_path"] / "questions.jsonl", rows, {"question": None, "answer": "1"})
    code, err = run_cli(capsys, "check", setup["recipe"], "--dataset", data, "--prompt_template", "Q: {question}")
    assert_one_line_error(code, err, f"row {BAD_ROW} (1-based), column 'question'", "null")


@pytest.mark.parametrize(("field", "value"), [("beta", -0.5), ("temperature", 0), ("temperature", -1)])
def test_out_of_range_loss_and_sampling_fields_are_refused(capsys, setup, field, value):
    before = snapshot(setup["output_dir"])
    for command in ("train", "check"):
        code, err = run_cli(capsys, command, setup["recipe"], f"--{field}", value)
        assert_one_line_error(code, err, f"{field} ", "must be")
    assert snapshot(setup["output_dir"]) == before


def test_good_rows_still_train(capsys, setup):
    code, err = run_cli(capsys, "train", setup["recipe"])
    assert code == 0, err[-3000:]
    assert (setup["output_dir"] / "notes.txt").read_text() == "kept"
