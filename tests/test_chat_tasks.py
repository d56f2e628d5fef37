"""Chat tasks (tasks/chat.py): every generated answer checked by an independent reading of the question, prompts as
one user message, scoring equal to the `math_verify` reward's."""

import re

import pytest

from thermorl.errors import UserError
from thermorl.tasks import math_verify_reward, task_from_spec


def read_sum(question: str) -> int:
    expression = re.fullmatch(r"What is ([\d +\-×]+)\? Put your final answer within \\boxed\{\}\.", question).group(1)
    return eval(expression.replace("×", "*"))  # digits, spaces and + - * only (matched above)


def read_story(question: str) -> tuple[int, int]:
    """(count after every sentence, number of operations) of a word problem, sentence by sentence."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    count = int(re.fullmatch(r"\w+ has (\d+) \w+\.", sentences[0].strip()).group(1))
    operations = 0
    for sentence in (s.strip() for s in sentences[1:]):
        if sentence.startswith("How many") or sentence.startswith("Put your"):
            continue
        operations += 1
        if match := re.fullmatch(r"(He|She) buys (\d+) packs of (\d+) \w+ each\.", sentence):
            count += int(match.group(2)) * int(match.group(3))
        elif match := re.fullmatch(r"(He|She) finds (\d+) more \w+\.", sentence):
            count += int(match.group(2))
        elif match := re.fullmatch(r"(He|She) gives (\d+) \w+ to a friend\.", sentence):
            count -= int(match.group(2))
        elif re.fullmatch(r"(He|She) gives away half of (his|her) \w+\.", sentence):
            assert count % 2 == 0
            count //= 2
        elif re.fullmatch(r"(He|She) doubles the number of \w+ (he|she) has\.", sentence):
            count *= 2
        else:
            raise AssertionError(f"unknown sentence {sentence!r}")
        assert count > 0, question
    return count, operations


@pytest.mark.parametrize("spec", ["chat_arithmetic", "chat_arithmetic:digits=3,num_operands=3,ops=+-*"])
def test_chat_arithmetic_answers_and_prompts(spec):
    task = task_from_spec(spec)
    digits = task.digits
    train, held_out = task.make_splits(200, 50, seed=0)
    assert not {row[0]["content"] for row in train["prompt"]} & {row[0]["content"] for row in held_out["prompt"]}
    for row in [*train, *held_out]:
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert int(row["answer"]) == read_sum(message["content"])
        assert all(len(operand) == digits for operand in re.findall(r"\d+", message["content"]))


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_word_problem_answers_follow_the_story(steps):
    rows = task_from_spec(f"word_problems:steps={steps}").make_dataset(300, seed=steps)
    kinds = set()
    for row in rows:
        content = row["prompt"][0]["content"]
        count, operations = read_story(content)
        assert (str(count), operations) == (row["answer"], steps)
        kinds |= {word for word in ("buys", "finds", "gives", "half", "doubles") if word in content}
    assert kinds == {"buys", "finds", "gives", "half", "doubles"}


def test_word_problem_operations_option_limits_the_kinds():
    rows = task_from_spec("word_problems:steps=4,operations=bf").make_dataset(100, seed=0)
    assert not any("gives" in row["prompt"][0]["content"] or "doubles" in row["prompt"][0]["content"] for row in rows)


@pytest.mark.parametrize("spec", ["chat_arithmetic", "word_problems"])
def test_scoring_equals_the_math_verify_reward(spec):
    task = task_from_spec(spec)
    row = task.make_dataset(1, seed=0)[0]
    answer = row["answer"]
    completions = [
        f"Let me work it out. The result is \\boxed{{{answer}}}.",
        f"\\boxed{{{int(answer) + 1}}}",
        f"First I thought \\boxed{{{int(answer) + 1}}}, but it is \\boxed{{{answer}}}",
        f"<think>maybe {answer}</think> so \\boxed{{{int(answer) - 1}}}",
        f"The answer is {answer}.",
        "I do not know \\boxed{",
        "",
    ]
    expected = [True, False, True, False, True, False, False]
    assert [task.is_correct(c, row) for c in completions] == expected
    assert math_verify_reward(completions, answer=[answer] * len(completions)) == [float(e) for e in expected]
    assert task.reward_funcs[0](prompts=[row["prompt"]] * 2, completions=completions[:2],
                                answer=[answer] * 2) == [1.0, 0.0]
    assert task.extract_answer(f"so \\boxed{{{answer}.0}}") == answer


def test_chat_tasks_without_worked_solutions_have_no_warm_up_data():
    for spec in ("chat_arithmetic", "chat_countdown"):
        assert not task_from_spec(spec).worked_solutions
        with pytest.raises(UserError, match="no worked solutions"):
            task_from_spec(spec).make_sft_dataset(10, seed=0)


def check_worked_solution(solution: str, question: str) -> None:
    """Each line's arithmetic is right, each continues from the last one's result, the lines follow the story's
    operations and the last boxes the story's answer: read independently of the generator."""
    lines = solution.split("\n")
    count = int(re.fullmatch(r"\w+ starts with (\d+) \w+\.", lines[0]).group(1))
    assert count == int(re.match(r"\w+ has (\d+)", question).group(1))
    for line in lines[1:-1]:
        if match := re.fullmatch(r"(He|She) buys (\d+) packs of (\d+), which is \2 × \3 = (\d+) \w+, "
                                 r"so (\d+) \+ \4 = (\d+)\.", line):
            packs, size, product, before, after = (int(n) for n in match.groups()[1:])
            assert product == packs * size and after == before + product
        elif match := re.fullmatch(r"(He|She) finds (\d+) more: (\d+) \+ \2 = (\d+)\.", line):
            found, before, after = (int(n) for n in match.groups()[1:])
            assert after == before + found
        elif match := re.fullmatch(r"(He|She) gives away (\d+): (\d+) - \2 = (\d+)\.", line):
            given, before, after = (int(n) for n in match.groups()[1:])
            assert after == before - given
        elif match := re.fullmatch(r"(He|She) gives away half: (\d+) ÷ 2 = (\d+)\.", line):
            before, after = (int(n) for n in match.groups()[1:])
            assert after * 2 == before
        elif match := re.fullmatch(r"(He|She) doubles them: (\d+) × 2 = (\d+)\.", line):
            before, after = (int(n) for n in match.groups()[1:])
            assert after == before * 2
        else:
            raise AssertionError(f"unknown line {line!r}")
        assert before == count, line
        count = after
    assert (count, len(lines) - 2) == read_story(question)
    assert re.fullmatch(rf"\w+ has \\boxed\{{{count}\}} \w+ now\.", lines[-1])


def test_word_problem_worked_solutions_are_right_and_skip_the_held_out_prompts():
    task = task_from_spec("word_problems:steps=3")
    assert task.worked_solutions
    train, held_out = task.make_splits(100, 40, seed=0)
    assert train.column_names == held_out.column_names == ["prompt", "answer"]  # the solution is not a column
    excluded = [row[0]["content"] for row in held_out["prompt"]]
    sft = task.make_sft_dataset(300, seed=1, exclude_prompts=excluded)
    assert len(sft) == 300 and not {row[0]["content"] for row in sft["prompt"]} & set(excluded)
    for row in sft:
        (question,), (solution,) = row["prompt"], row["completion"]
        assert (question["role"], solution["role"]) == ("user", "assistant")
        check_worked_solution(solution["content"], question["content"])


def test_chat_countdown_prompts_name_a_solvable_target():
    task = task_from_spec("chat_countdown:num_numbers=4,max_number=20")
    for row in task.make_dataset(100, seed=0):
        (message,) = row["prompt"]
        listed = re.fullmatch(r"Using the numbers ([\d, ]+) and (\d+), each exactly once, with \+, - and × and "
                              r"parentheses, write an expression equal to (\d+)\. Put your final answer within "
                              r"\\boxed\{\}\.", message["content"])
        numbers = sorted([int(n) for n in listed.group(1).split(", ")] + [int(listed.group(2))])
        assert numbers == row["numbers"] and len(numbers) == 4 and int(listed.group(3)) == row["target"]
        # The generated solution, checked independently: each number once, the target's value.
        assert sorted(int(n) for n in re.findall(r"\d+", row["answer"])) == numbers
        assert eval(row["answer"]) == row["target"]  # digits, parentheses and + - * only
        assert task.is_correct(f"\\boxed{{{row['answer']}}}", row)


def test_chat_countdown_reads_expressions_as_chat_models_write_them():
    task = task_from_spec("chat_countdown")
    row = {"numbers": [3, 5, 7], "target": 22}
    right = ["\\boxed{3*5+7}", "So \\boxed{3 \\times 5 + 7 = 22}.", "\\boxed{22 = 7 + 5 × 3}", "\\boxed{$3 \\cdot 5 + 7$}",
             "\\boxed{(7 + 5 \\times 3)}"]
    wrong = ["\\boxed{3*5+7+1}", "\\boxed{3*7+1}", "\\boxed{22}", "\\boxed{=}", "\\boxed{3*5+7 = 23}",
             "3*5+7 without a box, then \\boxed{5*5-3}", "\\boxed{3*5+7"]
    assert [task.is_correct(c, row) for c in right] == [True] * len(right)
    assert [task.is_correct(c, row) for c in wrong] == [False] * len(wrong)
    assert task.extract_answer("\\boxed{3 × 5 + 7}") == task.extract_answer("\\boxed{3*5+7}") == "3*5+7"
    with pytest.raises(UserError, match="num_numbers"):
        task_from_spec("chat_countdown:num_numbers=1")
