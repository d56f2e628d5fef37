import json
import string
import threading
from fractions import Fraction

import pytest
from datasets import Dataset

from thermorl.errors import UserError
from thermorl.tasks import (
    TASKS,
    get_task,
    load_callable,
    load_prompt_dataset,
    math_verify_reward,
    parse_task_spec,
    resolve_reward_funcs,
    task_from_spec,
)
from thermorl.tasks.rewards import math_verify_reward as rewards_module_function

PRINTABLE = set(string.printable) - set("\t\r\x0b\x0c")
GARBAGE = ["", "   ", "abc", "$$$", "}}}}", "\\frac{", "\\boxed{", "((((((((", "9**9**9", "\x00\x01", "1e999999",
           "85" * 100 + "x", "__import__('os').system('true')", "nan", "inf", "1/0", "[1, 2]"]


# --- registry -------------------------------------------------------------------------------


def test_registry_lists_builtin_tasks_and_rejects_unknown_names_and_options():
    assert set(TASKS) == {"arithmetic", "countdown", "countdown_steps", "chat_arithmetic", "word_problems",
                          "chat_countdown"}
    listed = r"unknown task 'algebra'.*'arithmetic', 'chat_arithmetic', 'chat_countdown', 'countdown'"
    with pytest.raises(ValueError, match=listed):
        get_task("algebra")
    with pytest.raises(ValueError, match="unknown option 'digitz'"):
        get_task("arithmetic", digitz=3)
    with pytest.raises(ValueError, match="ops must be"):
        get_task("arithmetic", ops="+/")
    with pytest.raises(ValueError, match="num_operands"):
        get_task("arithmetic", num_operands=1)
    with pytest.raises(ValueError, match="max_number"):
        get_task("countdown", max_number=0)


def test_parse_task_spec_reads_typed_options():
    assert parse_task_spec("arithmetic") == ("arithmetic", {})
    assert parse_task_spec("arithmetic:digits=3,ops=+-*,allow_negative=false") == (
        "arithmetic",
        {"digits": 3, "ops": "+-*", "allow_negative": False},
    )
    with pytest.raises(ValueError, match="'digits' in 'arithmetic:digits' is not of the form key=value"):
        parse_task_spec("arithmetic:digits")


# --- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [{"name": "arithmetic"}, {"name": "countdown"}])
def test_same_seed_gives_identical_rows_and_other_seed_differs(spec):
    task = get_task(spec["name"])
    first, again, other = task.make_dataset(50, seed=3), task.make_dataset(50, seed=3), task.make_dataset(50, seed=4)
    assert first.to_list() == again.to_list()
    assert first["prompt"] != other["prompt"]
    assert len(set(first["prompt"])) == 50


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "countdown_steps"])
def test_splits_are_disjoint_and_repeat(name):
    task = get_task(name)
    train, held_out = task.make_splits(300, 100, seed=0)
    assert len(train) == 300 and len(held_out) == 100
    assert not set(train["prompt"]) & set(held_out["prompt"])
    again = task.make_splits(300, 100, seed=0)
    assert (again[0].to_list(), again[1].to_list()) == (train.to_list(), held_out.to_list())
    assert set(task.make_splits(300, 100, seed=1)[1]["prompt"]) != set(held_out["prompt"])


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
@pytest.mark.parametrize("sizes, what", [((10, 0), "held-out"), ((10, -3), "held-out"), ((0, 10), "training")])
def test_split_sizes_must_be_positive(name, sizes, what):
    with pytest.raises(ValueError, match=f"number of {what} rows must be a positive integer"):
        get_task(name).make_splits(*sizes, seed=0)


def test_an_even_tasks_training_split_is_make_dataset():
    task = get_task("arithmetic")
    assert task.make_splits(300, 100, seed=0)[0].to_list() == task.make_dataset(300, seed=0).to_list()


@pytest.mark.parametrize("name", ["countdown", "countdown_steps"])
def test_an_uneven_tasks_splits_come_from_one_draw_in_random_order(name):
    task = get_task(name)
    train, held_out = task.make_splits(300, 100, seed=0)
    together = list(task.make_dataset(400, seed=0)["prompt"])
    assert sorted(list(train["prompt"]) + list(held_out["prompt"])) == sorted(together)
    # Not the first 300 drawn: those are the likeliest prompts, which would leave the held-out set the rarest.
    assert set(train["prompt"]) != set(together[:300])


def test_exclude_prompts_and_too_small_task():
    task = get_task("arithmetic", digits=1, ops="+")  # only 100 distinct prompts exist
    half = task.make_dataset(50, seed=0)
    rest = task.make_dataset(50, seed=1, exclude_prompts=half["prompt"])
    assert len(set(half["prompt"]) | set(rest["prompt"])) == 100
    with pytest.raises(ValueError, match="found only 100 distinct prompts of the 101 requested"):
        task.make_dataset(101, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        task.make_dataset(0, seed=0)


def test_arithmetic_rows_match_python_arithmetic():
    task = get_task("arithmetic", digits=3, num_operands=3, ops="+-*")
    rows = task.make_dataset(200, seed=0).to_list()
    for row in rows:
        assert row["prompt"].endswith("=")
        assert int(row["answer"]) == eval(row["prompt"][:-1])  # our own digits-and-operators string
        assert set(row["prompt"] + row["answer"]) <= PRINTABLE
    operands = [int(x) for row in rows for x in row["prompt"][:-1].replace("-", "+").replace("*", "+").split("+")]
    assert max(operands) >= 100 and max(operands) <= 999
    assert {"+", "-", "*"} <= set("".join(row["prompt"] for row in rows))


def test_arithmetic_max_operands_mixes_problem_sizes_and_checks_its_range():
    task = task_from_spec("arithmetic:digits=1,num_operands=3,max_operands=4,ops=+")
    rows = task.make_dataset(200, seed=0).to_list()
    sizes = [row["prompt"].count("+") + 1 for row in rows]
    assert set(sizes) == {3, 4} and 60 < sizes.count(4) < 140  # uniform over 3-4
    assert all(int(row["answer"]) == sum(int(d) for d in row["prompt"][:-1].split("+")) for row in rows)
    fixed = get_task("arithmetic", digits=1, num_operands=3, ops="+").make_dataset(50, seed=0)["prompt"]
    assert {p.count("+") for p in fixed} == {2}
    with pytest.raises(UserError, match=r"max_operands must be an integer >= num_operands \(3\), got 2"):
        task_from_spec("arithmetic:num_operands=3,max_operands=2")


def test_arithmetic_allow_negative_false_keeps_results_non_negative():
    signed = get_task("arithmetic", ops="-").make_dataset(100, seed=0)["answer"]
    unsigned = get_task("arithmetic", ops="-", allow_negative=False).make_dataset(100, seed=0)["answer"]
    assert any(int(a) < 0 for a in signed)
    assert all(int(a) >= 0 for a in unsigned)


@pytest.mark.parametrize("options", [{}, {"num_numbers": 4, "max_number": 12, "division": True, "max_target": 50}])
def test_every_countdown_instance_is_solved_by_its_stored_answer(options):
    task = get_task("countdown", **options)
    for row in task.make_dataset(300, seed=0).to_list():
        numbers, target = row["numbers"], row["target"]
        assert len(numbers) == task.num_numbers and all(1 <= x <= task.max_number for x in numbers)
        assert 0 <= target <= task.max_target
        assert row["prompt"] == " ".join(map(str, sorted(numbers))) + f">{target}:"
        assert task.is_correct(row["answer"], row)
        # an independent evaluation of our own generated string
        assert abs(eval(row["answer"]) - target) < 1e-9
        assert set(row["prompt"] + row["answer"]) <= PRINTABLE


def test_sft_dataset_pairs_prompt_with_answer():
    task = get_task("countdown")
    sft = task.make_sft_dataset(20, seed=5)
    rows = task.make_dataset(20, seed=5)
    assert sft.column_names == ["prompt", "completion"]
    assert sft["prompt"] == rows["prompt"] and sft["completion"] == rows["answer"]


# --- arithmetic checker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("85", "85", True),
        (" 85\n", "85", True),
        ("+085", "85", True),
        ("85.0", "85", True),  # math-verify fallback
        ("$85$", "85", True),
        ("\\boxed{85}", "85", True),
        ("85.5", "85", False),
        ("85abc", "85", False),
        ("85\n17+3=20", "85", False),
        ("8 5", "85", False),
        ("47+38", "85", False),  # an echo of the prompt
        ("170/2", "85", False),
        ("-85", "85", False),
        ("-12", "-12", True),
        ("12", "-12", False),
        ("-12.0", "-12", True),
        ("0", "0", True),
        ("-0", "0", True),
    ],
)
def test_arithmetic_is_correct_hand_cases(completion, gold, expected):
    assert get_task("arithmetic").is_correct(completion, {"answer": gold}) is expected


def test_arithmetic_never_raises_on_garbage_and_extract_agrees_with_is_correct():
    task = get_task("arithmetic")
    for completion in GARBAGE:
        assert task.is_correct(completion, {"answer": "85"}) is False
        assert task.extract_answer(completion) is None
    assert task.extract_answer("+085") == "85"
    assert task.extract_answer("$85.0$") == "85"
    assert task.extract_answer(" -7 ") == "-7"
    huge = "9" * 5000  # beyond int()'s 4300-digit limit
    assert task.is_correct(huge, {"answer": "85"}) is False and task.extract_answer(huge) == huge
    assert task.is_correct("-00" + huge, {"answer": "-" + huge}) is True
    for completion in ["85", " +85", "85.0", "\\boxed{85}", "84", "85x"]:
        extracted = task.extract_answer(completion)
        if extracted is not None:
            assert task.is_correct(extracted, {"answer": "85"}) == task.is_correct(completion, {"answer": "85"})


# --- countdown checker ----------------------------------------------------------------------

ROW_3_5_7 = {"numbers": [3, 5, 7], "target": 22}


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("3*5+7", True),
        ("7+5*3", True),  # another valid solution
        (" (5*3)+7 ", True),
        ("5*5-3", False),  # equals 22 but reuses 5 and drops 7
        ("3*5+7+0", False),  # a number that was not given
        ("15+7", False),
        ("3*5+7-1+1", False),
        ("3*5+7=22", False),
        ("-3+5*7-10", False),
        ("3*5+7.0", False),
        ("3*5+7abc", False),
        ("22", False),
        ("abs(22)", False),
        ("x", False),
        ("__import__('os')", False),
        ("3*5+(7)", True),
    ],
)
def test_countdown_checker_hand_cases(completion, expected):
    assert get_task("countdown").is_correct(completion, ROW_3_5_7) is expected


def test_countdown_checker_rejects_missing_numbers_powers_and_division_by_zero():
    task = get_task("countdown")
    assert task.is_correct("3+7", {"numbers": [3, 5, 7], "target": 10}) is False
    assert task.is_correct("9**9**9", {"numbers": [9, 9, 9], "target": 0}) is False  # returns, never evaluated
    assert task.is_correct("9*9*9", {"numbers": [9, 9, 9], "target": 729}) is True
    divisible = get_task("countdown", division=True)
    assert divisible.is_correct("8/(4-2)", {"numbers": [2, 4, 8], "target": 4}) is True
    assert task.is_correct("8/(4-2)", {"numbers": [2, 4, 8], "target": 4}) is False  # "/" not allowed
    assert divisible.is_correct("5/(3-3)", {"numbers": [3, 3, 5], "target": 0}) is False
    assert divisible.is_correct("7/2*2", {"numbers": [2, 2, 7], "target": 7}) is True  # exact fractions
    for completion in GARBAGE:
        assert divisible.is_correct(completion, ROW_3_5_7) is False


def test_countdown_extract_answer():
    task = get_task("countdown")
    assert task.extract_answer(" 3 * 5 + 7 ") == "3*5+7"
    assert task.extract_answer("3*5+7 because") is None
    assert task.extract_answer("9**9") is None


# --- reward functions -----------------------------------------------------------------------


def test_task_reward_functions_score_each_completion():
    (reward,) = get_task("arithmetic").reward_funcs
    assert reward.__name__ == "arithmetic_correct"
    scores = reward(
        prompts=["1+2=", "5-9=", "3+3="],
        completions=["3", "4", " 6"],
        answer=["3", "-4", "6"],
        trainer_state=None,  # TRL passes extra keywords
        completion_ids=[[1], [2], [3]],
    )
    assert scores == [1.0, 0.0, 1.0]
    conversational = [[{"role": "assistant", "content": "-4"}]]
    assert reward(prompts=["5-9="], completions=conversational, answer=["-4"]) == [1.0]
    with pytest.raises(ValueError, match=r"needs dataset columns \['answer'\]"):
        reward(prompts=["1+2="], completions=["3"], solution=["3"])

    (countdown_reward,) = get_task("countdown").reward_funcs
    scores = countdown_reward(
        prompts=["3 5 7>22:"] * 3, completions=["7+3*5", "5*5-3", "9**9**9"], numbers=[[3, 5, 7]] * 3, target=[22] * 3
    )
    assert scores == [1.0, 0.0, 0.0]


def test_math_verify_reward_on_free_form_answers():
    completions = ["So the answer is \\boxed{42}.", "41", "$\\frac{1}{2}$", "no idea", "x", "0.5"]
    answers = ["42", "42", "0.5", "1", "1", "1/2"]
    assert math_verify_reward(completions=completions, answer=answers, prompts=[""] * 6) == [1, 0, 1, 0, 0, 1]
    assert math_verify_reward(completions=["7"], answer=[7]) == [1.0]  # CSV columns come back as int


def test_math_verify_reward_works_outside_the_main_thread():
    # math-verify's default timeout uses signal.alarm, which raises in other threads.
    results = []
    worker = threading.Thread(target=lambda: results.append(math_verify_reward(["$\\frac{1}{2}$"], ["0.5"])))
    worker.start()
    worker.join()
    assert results == [[1.0]]


def test_load_callable_and_resolve_reward_funcs(tmp_path):
    assert load_callable("thermorl.tasks.rewards:math_verify_reward") is rewards_module_function
    assert load_callable("thermorl.tasks.rewards.math_verify_reward") is rewards_module_function
    assert load_callable("fractions:Fraction.from_float") == Fraction.from_float
    with pytest.raises(ImportError, match="cannot import module 'thermorl.nothere'"):
        load_callable("thermorl.nothere:reward")
    with pytest.raises(AttributeError, match="'thermorl.tasks.rewards' has no attribute 'missing_reward'"):
        load_callable("thermorl.tasks.rewards.missing_reward")
    with pytest.raises(TypeError, match="'math:pi' is a float, not a callable"):
        load_callable("math:pi")
    with pytest.raises(ValueError, match="'reward' is not of the form"):
        load_callable("reward")

    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text("def length_reward(completions, **_):\n    return [float(len(c)) for c in completions]\n")
    loaded = load_callable(f"{reward_file}:length_reward")
    assert loaded(completions=["ab", "abc"]) == [2.0, 3.0]
    with pytest.raises(UserError, match="absent.py"):
        load_callable(f"{tmp_path / 'absent.py'}:f")

    funcs = resolve_reward_funcs(["math_verify", f"{reward_file}:length_reward"])
    assert funcs[0] is rewards_module_function and funcs[1].__name__ == "length_reward"
    with pytest.raises(ValueError, match=r"unknown reward 'nope'.*\['math_verify'\]"):
        resolve_reward_funcs(["nope"])


# --- datasets -------------------------------------------------------------------------------

ROWS = [{"question": "1+1=", "answer": "2"}, {"question": "2+5=", "answer": "7"}]


def _write(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        path.write_text("question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in ROWS))
    else:
        Dataset.from_list(ROWS).to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_load_prompt_dataset_from_local_files(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    dataset = load_prompt_dataset(str(path), prompt_column="question")
    assert dataset["prompt"] == ["1+1=", "2+5="]
    assert [str(a) for a in dataset["answer"]] == ["2", "7"]  # CSV infers integers
    with pytest.raises(ValueError, match=r"has no column 'prompt'; its columns are \['question', 'answer'\]"):
        load_prompt_dataset(str(path))


def test_load_prompt_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="missing.jsonl"):
        load_prompt_dataset(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "both.jsonl"
    path.write_text(json.dumps({"prompt": "a", "question": "b"}) + "\n")
    with pytest.raises(ValueError, match="both 'question' and 'prompt'"):
        load_prompt_dataset(str(path), prompt_column="question")


def test_load_prompt_dataset_from_task_spec():
    train = load_prompt_dataset("arithmetic:digits=3,ops=+", n_train=60, n_eval=20, seed=1)
    held_out = load_prompt_dataset("arithmetic:digits=3,ops=+", split="test", n_train=60, n_eval=20, seed=1)
    assert len(train) == 60 and len(held_out) == 20
    assert not set(train["prompt"]) & set(held_out["prompt"])
    assert train.to_list() == get_task("arithmetic", digits=3, ops="+").make_dataset(60, seed=1).to_list()
    with pytest.raises(ValueError, match="unknown option 'digitz'"):
        load_prompt_dataset("arithmetic:digitz=3")
