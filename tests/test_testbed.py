"""The reasoning testbed: countdown_steps (task, verifier, SFT traces), EAD sized to a response length, `thermorl bench`."""

import hashlib
import json
import math
import random
import re
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from thermorl.rollouts.schedules import AnnealedTemperature, annealed_for_length, build_schedule
from thermorl.tasks import get_task

ROW = {"numbers": [1, 4, 5, 7], "target": 9}


def _solvable(numbers, target):
    """Brute force over every order of pairwise + and - (a >= b): an independent reference for the checker."""
    if len(numbers) == 1:
        return numbers[0] == target
    for i in range(len(numbers)):
        for j in range(len(numbers)):
            if i == j:
                continue
            rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
            a, b = numbers[i], numbers[j]
            if _solvable([*rest, a + b], target) or (a >= b and _solvable([*rest, a - b], target)):
                return True
    return False


# --- task ------------------------------------------------------------------------------------------------------


def test_every_instance_is_solved_by_its_stored_trace_and_prompts_are_sorted():
    task = get_task("countdown_steps")
    train, held_out = task.make_splits(300, 100, seed=3)
    assert not set(train["prompt"]) & set(held_out["prompt"])
    for row in list(train) + list(held_out):
        numbers, target = row["prompt"].rstrip(":").split(">")
        assert [int(n) for n in numbers.split()] == row["numbers"] == sorted(row["numbers"])
        assert int(target) == row["target"]
        assert task.is_correct(row["answer"], row)
        assert len(row["answer"].split(",")) == 3


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("7-4=3,5+1=6,6+3=9", True),
        ("  5+4=9,7-1=6,9+6=15\n", False),  # well-formed, wrong target
        ("1+7=8,5-4=1,8+1=9", True),
        (" 1+7=8,5-4=1,8+1=9 ", True),  # surrounding whitespace is allowed
        ("7-4=2,5+1=6,6+2=8", False),  # arithmetic slip in the first step
        ("7-4=3,5+1=6,6+3=10", False),  # slip in the last step
        ("4-7=3,5+1=6,6+3=9", False),  # a - b with a < b is -3, not 3
        ("8-4=4,5+1=6,6+4=10", False),  # 8 is not among the numbers
        ("7-4=3,3+3=6,6+3=9", False),  # 3 used twice, 1 and 5 never
        ("7+5=12,12-4=8", False),  # stops with two numbers left
        ("7-4=3,5+1=6,6+3=9,", False),  # trailing separator
        ("7-4=3,5+1=6,6+3=9x", False),
        ("7*1=7,5-4=1,7+1=8", False),  # only + and -
        ("", False),
        ("9", False),
    ],
)
def test_checker_hand_cases(completion, expected):
    assert get_task("countdown_steps").is_correct(completion, ROW) is expected


def test_extract_answer_keeps_is_correct():
    task = get_task("countdown_steps")
    for completion in ("7-4=3,5+1=6,6+3=9", " 5+4=9,7-1=6,9+6=15 ", "7-4=2,5+1=6,6+2=8"):
        answer = task.extract_answer(completion)
        assert answer == completion.strip()
        assert task.is_correct(answer, ROW) == task.is_correct(completion, ROW)
    assert task.extract_answer("7*4=28") is None
    assert task.extract_answer("seven") is None


def test_options_are_checked():
    with pytest.raises(ValueError, match="num_numbers must be an integer >= 3"):
        get_task("countdown_steps", num_numbers=2)
    with pytest.raises(ValueError, match="max_number must be an integer >= 1"):
        get_task("countdown_steps", max_number=0)


def test_sft_traces_are_exact_take_random_first_steps_and_hit_the_target_when_the_last_two_numbers_can():
    task = get_task("countdown_steps")
    _, held_out = task.make_splits(200, 200, seed=0)
    data = task.make_sft_dataset(3000, seed=1, exclude_prompts=held_out["prompt"])
    assert not set(data["prompt"]) & set(held_out["prompt"])
    assert len(set(data["prompt"])) < len(data)  # prompts repeat, with fresh traces
    first_steps = set()
    for prompt, trace in zip(data["prompt"], data["completion"]):
        numbers_text, target = prompt.rstrip(":").split(">")
        numbers, target = [int(n) for n in numbers_text.split()], int(target)
        steps = trace.split(",")
        assert len(steps) == 3 and task.check_trace(trace, numbers) is not None
        # The two numbers left before the last step: replay the first two steps.
        remaining = list(numbers)
        for step in steps[:2]:
            left, op, right, result = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", step).groups()
            remaining.remove(int(left))
            remaining.remove(int(right))
            remaining.append(int(result))
        assert task.is_correct(trace, {"numbers": numbers, "target": target}) == _solvable(remaining, target)
        if prompt == data["prompt"][0]:
            first_steps.add(steps[0])
    correct = sum(task.is_correct(c, {"numbers": [int(n) for n in p.rstrip(":").split(">")[0].split()],
                                      "target": int(p.rstrip(":").split(">")[1])})
                  for p, c in zip(data["prompt"], data["completion"]))
    # The first steps are random, so most SFT traces fail on prompts that a planned first step would solve.
    assert 0.2 < correct / len(data) < 0.6


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("7-4=3,5+1=6,6+3=9", "correct"),
        ("7-4=3,5+1=6,6-3=3", "missed"),  # 6 and 3 make 9; the last step subtracted
        ("7+5=12,4+1=5,12+5=17", "dead end"),  # 12 and 5 make 17 or 7, never 9
        ("7+1=8,5-4=1,8-1=7", "missed"),  # 8 and 1 make 9
        ("7+5=12,4-1=3,12+3=15", "missed"),  # 12 - 3 makes 9
        (" 7-4=3,5+1=6,6-3=3\n", "missed"),
        ("7-4=3,5+1=6,6+3=8", "malformed"),  # a slip in the last step
        ("7-4=3,5+1=6", "malformed"),  # a step short
        ("4-7=3,5+1=6,6+3=9", "malformed"),  # 4 - 7 is not 3
        ("7-4=3,3+1=4,5+4=9", "correct"),
        ("", "malformed"),
    ],
)
def test_outcome_says_where_a_trace_went_wrong(completion, expected):
    assert get_task("countdown_steps").outcome(completion, ROW) == expected


def _random_prefix_success(numbers, target):
    """Probability, by enumeration, that `sft_trace`'s random first steps leave two numbers that hit the target: each
    ordered pair equally likely, then - (when a >= b) or + with probability 1/2 each."""
    if len(numbers) == 2:
        a, b = numbers
        return float(a + b == target or abs(a - b) == target)
    pairs = [(i, j) for i in range(len(numbers)) for j in range(len(numbers)) if i != j]
    total = 0.0
    for i, j in pairs:
        a, b = numbers[i], numbers[j]
        rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
        plus = _random_prefix_success([*rest, a + b], target)
        total += 0.5 * (plus + _random_prefix_success([*rest, a - b], target)) if a >= b else plus
    return total / len(pairs)


def test_held_out_prompts_are_as_hard_as_training_prompts_when_training_takes_most_prompts():
    """The testbed's split takes 2 512 of the 2 835 prompts. Held-out prompts drawn after the training ones were the
    rarest, which for this generator (a prompt made from a random solution) are the hardest: mean random-prefix
    success 0.29 vs 0.36 in training, 39% vs 18% of prompts under 0.2."""
    train, held_out = get_task("countdown_steps").make_splits(2000, 512, seed=0)
    difficulty = {name: [_random_prefix_success(row["numbers"], row["target"]) for row in rows]
                  for name, rows in (("train", train), ("held_out", held_out))}
    mean = {name: sum(values) / len(values) for name, values in difficulty.items()}
    hard = {name: sum(v < 0.2 for v in values) / len(values) for name, values in difficulty.items()}
    assert abs(mean["train"] - mean["held_out"]) < 0.02
    assert abs(hard["train"] - hard["held_out"]) < 0.05


def test_random_prefix_success_spreads_over_prompts():
    """Difficulty differs by prompt: the share of random first steps that still allow a solution."""
    task = get_task("countdown_steps")
    rng = random.Random(0)
    rates = []
    for row in task.make_dataset(60, seed=5):
        hits = sum(task.is_correct(task.sft_trace(row["numbers"], row["target"], rng), row) for _ in range(40))
        rates.append(hits / 40)
    assert min(rates) < 0.2 and max(rates) > 0.6


# --- EAD sized to a response length ----------------------------------------------------------------------------


def test_sized_to_the_papers_length_it_is_the_papers_schedule_at_every_step():
    sized, paper = annealed_for_length(500), AnnealedTemperature()
    positions = torch.arange(0, 1200)
    assert sized.warmup_tokens == 10
    for step in (0, 1, 7, 100):
        assert torch.allclose(sized.temperatures(positions, step), paper.temperatures(positions, step), atol=1e-5)


def test_sized_to_20_tokens_it_cools_from_tau_max_to_tau_min_at_three_quarters_of_them():
    schedule = build_schedule({"type": "annealed_for_length", "response_tokens": 20, "horizon_growth": 0.0})
    temps = schedule.temperatures(torch.arange(21), step=0)
    assert temps[0] == pytest.approx(1.2)
    # The paper reaches tau_min at 20 * 25 * ln(2.1) of 500 tokens; scaled to 20 tokens that is d0 = 20 (horizon
    # scale 1): tau = 1 + 1.2 - exp(t / 20), which reaches 0.1 at t = 20 ln 2.1 = 14.8.
    d0 = 20.0
    assert temps[5] == pytest.approx(2.2 - math.exp(5 / d0), abs=1e-6)
    assert temps[14] > 0.1 and temps[15] == pytest.approx(0.1) and temps[20] == pytest.approx(0.1)
    assert torch.equal(schedule.temperatures(torch.arange(21), step=300), temps)  # no growth
    growing = annealed_for_length(20)
    assert growing.temperatures(torch.tensor([10]), step=50) > growing.temperatures(torch.tensor([10]), step=0)


def test_sizing_errors_name_the_argument():
    with pytest.raises(ValueError, match="response_tokens must be an int >= 1"):
        annealed_for_length(0)
    with pytest.raises(ValueError, match="cool_fraction must be > 0"):
        annealed_for_length(20, cool_fraction=0.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['d0'\]"):
        build_schedule({"type": "annealed_for_length", "response_tokens": 20, "d0": 3})


# --- thermorl bench --------------------------------------------------------------------------------------------


def test_mean_interval_is_the_student_t_interval():
    from thermorl.bench.stats import mean_interval

    result = mean_interval([0.2, 0.4])
    assert result["mean"] == pytest.approx(0.3)
    assert result["ci95"] == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2))
    five = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert mean_interval(five)["ci95"] == pytest.approx(2.776 * 0.158113883 / math.sqrt(5), rel=1e-6)
    assert mean_interval([0.7]) == {"mean": 0.7, "ci95": 0.0, "n": 1}


def _write_arms(path, **changes):
    spec = {
        "recipe": "testbed",
        "overrides": {"max_steps": 2, "warmup_examples": 64, "warmup_epochs": 1, "num_train_examples": 32,
                      "num_eval_examples": 12, "per_device_train_batch_size": 8, "num_generations": 4},
        "baseline": "fixed-1.0",
        "seeds": [0],
        "evaluation": {"samples": 2, "every": 1, "batch_size": 64, "temperatures": [0.7, 1.0]},
        "arms": {"fixed-1.0": {"temperature": 1.0},
                 "ead": {"temperature_schedule": {"type": "annealed_for_length", "response_tokens": 20}}},
    }
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arms": {"a": {"learning_rat": 1e-4}}, "baseline": "a"}, r"arm 'a': Unknown recipe key 'learning_rat'"),
        ({"baseline": "fixed-2"}, r"baseline 'fixed-2' is not one of the arms"),
        ({"baseline": {"ead": "fixed-2"}}, r"baseline \{'ead': 'fixed-2'\}: 'fixed-2' is not one of the arms"),
        ({"baseline": {"ead": "ead"}}, r"an arm is not compared with itself"),
        ({"baseline": {"ead": ["fixed-1.0", "fixed-2"]}}, r"'fixed-2' is not one of the arms"),
        ({"baseline": {"ead": ["fixed-1.0", "ead"]}}, r"an arm is not compared with itself"),
        ({"baseline": {"ead": []}}, r"baseline \{'ead': \[\]\}: name at least one baseline"),
        ({"signals": "entropy"}, r"'signals' must be a list of logged metric names"),
        ({"seeds": [0, 0]}, r"'seeds' lists a seed twice"),
        ({"evaluation": {"samples": 0}}, r"evaluation.samples must be an integer >= 1"),
        ({"evaluation": {"temperatures": [0.6, 1.2]}}, r"evaluation.temperatures must include 1.0"),
        ({"evaluation": {"temperatures": [1.0, 1.0]}}, r"evaluation.temperatures must be a list of two or more"),
        ({"evaluation": {"vote_threshold": 0}}, r"evaluation.vote_threshold must be a number in \(0, 1\]"),
        ({"evaluation": {"temperatures": [0.6, 1.0], "samples": 1}}, r"evaluation.temperatures needs evaluation.samples >= 2"),
        ({"arm": {}}, r"unknown key\(s\) \['arm'\]"),
        ({"evaluation": {"last_checkpoints": 0}}, r"evaluation.last_checkpoints must be an integer >= 1, got 0"),
        ({"confirmatory": {"metric": "pass@1 greedy"}}, r"confirmatory must be a list of \{metric, arm, baseline\}"),
        ({"confirmatory": [{"metric": "pass@1 greedy", "arm": "ead"}]},
         r"confirmatory\[0\] must be a mapping with exactly the keys \['metric', 'arm', 'baseline'\]"),
        ({"confirmatory": [{"metric": "pass@1 greedy", "arm": "ead", "baseline": "fixed-2"}]},
         r"confirmatory\[0\].baseline 'fixed-2' is not one of the arms"),
        ({"confirmatory": [{"metric": "pass@1 greedy", "arm": "ead", "baseline": "ead"}]},
         r"confirmatory\[0\]: an arm is not compared with itself"),
        ({"confirmatory": [{"metric": "pass@1 T=0.8", "arm": "ead", "baseline": "fixed-1.0"}]},
         r"confirmatory\[0\].metric 'pass@1 T=0.8' is not a metric of this bench"),
        # A mean over checkpoints is a metric only where the arms file scores them.
        ({"confirmatory": [{"metric": "pass@1 greedy (mean of last 3)", "arm": "ead", "baseline": "fixed-1.0"}]},
         r"metric 'pass@1 greedy \(mean of last 3\)' is not a metric of this bench"),
        ({"confirmatory": [{"metric": "pass@1 greedy", "arm": "ead", "baseline": "fixed-1.0"},
                           {"metric": "pass@1 greedy", "arm": "ead", "baseline": "fixed-1.0"}]},
         r"confirmatory\[1\] declares .* twice"),
    ],
)
def test_arms_file_mistakes_are_one_line_errors(tmp_path, changes, message):
    from thermorl.bench.arms import load_arms

    with pytest.raises(ValueError, match=message):
        load_arms(_write_arms(tmp_path / "arms.yaml", **changes))


def test_arms_that_start_differently_are_refused(tmp_path, capsys):
    from thermorl.cli import main

    arms = _write_arms(tmp_path / "arms.yaml", arms={"a": {}, "b": {"max_steps": 3}}, baseline="a")
    assert main(["bench", str(arms), "--out", str(tmp_path / "out")]) == 2
    assert "arms 'a' and 'b' differ in ['rollouts sampled (max_steps x batch / num_iterations)']" in capsys.readouterr().err
    # Reusing each rollout batch twice over twice the steps samples as many rollouts: the same budget.
    reuse = _write_arms(tmp_path / "reuse.yaml", arms={"a": {}, "b": {"max_steps": 4, "num_iterations": 2}}, baseline="a")
    from thermorl.bench.arms import check_arms_share_start, load_arms

    check_arms_share_start(load_arms(reuse), {})
    with pytest.raises(ValueError, match="differ in"):  # twice the steps without the reuse: twice the rollouts
        check_arms_share_start(load_arms(reuse), {"num_iterations": 1})
    unseeded = _write_arms(tmp_path / "unseeded.yaml", overrides={"dataset_seed": None, "max_steps": 2})
    assert main(["bench", str(unseeded), "--out", str(tmp_path / "out")]) == 2
    assert "arm 'ead': dataset_seed is unset, so each seed would draw its own prompts" in capsys.readouterr().err
    warm = _write_arms(tmp_path / "warm.yaml", arms={"a": {}, "b": {"warmup_dataset": "countdown_steps:num_numbers=3"}},
                       baseline="a")
    assert main(["bench", str(warm), "--out", str(tmp_path / "out")]) == 2
    assert "arms 'a' and 'b' differ in ['warmup_dataset']" in capsys.readouterr().err
    assert main(["bench", str(arms), "--out", str(tmp_path / "out"), "--arms", "a", "c"]) == 2
    assert "--arms: ['c'] not in the arms file, whose arms are ['a', 'b']" in capsys.readouterr().err
    # Two steps evaluated every step: two checkpoints to average, not three.
    three = _write_arms(tmp_path / "three.yaml", evaluation={"samples": 2, "every": 1, "last_checkpoints": 3})
    assert main(["bench", str(three), "--out", str(tmp_path / "out")]) == 2
    assert ("evaluation.last_checkpoints 3: arm 'ead' evaluates only 2 checkpoint(s) (every 1 of its 2 steps, "
            "and the last)") in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def test_bench_smoke_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    """1 seed, 2 arms, 2 steps on tiny sizes: per-run JSON, aggregate report, PNG; a rerun does nothing new."""
    from thermorl.cli import main

    import trl

    monkeypatch.setenv("THERMORL_CACHE", str(tmp_path / "cache"))
    family = [{"metric": "pass@1 greedy (mean of last 2)", "arm": "ead", "baseline": "fixed-1.0"}]
    arms = _write_arms(tmp_path / "arms.yaml", confirmatory=family, evaluation={
        "samples": 2, "every": 1, "batch_size": 64, "temperatures": [0.7, 1.0], "last_checkpoints": 2})
    out = tmp_path / "out"
    assert main(["bench", str(arms), "--out", str(out), "--threads", "2"]) == 0
    assert "2 run(s) to do, 0 already done" in capsys.readouterr().out
    run = json.loads((out / "runs" / "ead" / "seed0.json").read_text())
    assert [p["step"] for p in run["curve"]] == [1, 2]
    # Issue 33: the run's environment, the weights it started from, per-prompt outcomes, its last 2 checkpoints
    # scored in full, and the family declared when it ran.
    environment = run["environment"]
    assert (environment["torch"], environment["trl"], environment["torch_threads"]) == (torch.__version__,
                                                                                       trl.__version__, 2)
    assert environment["transformers"] and environment["thermorl"] and environment["cpu"]
    weights = run["start_weights"]
    assert weights["sha256"] == hashlib.sha256((Path(weights["path"]) / "model.safetensors").read_bytes()).hexdigest()
    outcomes = run["prompt_outcomes"]
    assert outcomes["samples"] == 2 and len(outcomes["correct"]["greedy"]) == run["held_out_prompts"] == 12
    assert statistics.fmean(outcomes["correct"]["greedy"]) == pytest.approx(run["final"]["pass@1 greedy"])
    assert sum(outcomes["correct"]["T=1"]) / 24 == pytest.approx(run["final"]["pass@1 T=1"])
    assert sum(outcomes["correct"]["T=0.7"]) / 24 == pytest.approx(run["grid"]["per temperature pass@1"]["0.7"])
    assert [checkpoint["step"] for checkpoint in run["checkpoints"]] == [1]
    assert run["curve"][0]["pass@1 greedy"] == run["checkpoints"][0]["final"]["pass@1 greedy"]
    assert run["checkpoints"][0]["prompt_outcomes"]["prompts_sha256"] == outcomes["prompts_sha256"]
    assert run["confirmatory"] == family
    assert [step for step, _ in run["reward"]] == [1, 2]
    assert run["rollouts_per_step"] == 8
    assert run["recipe"]["temperature_schedule"]["type"] == "annealed_for_length"
    assert set(run["final"]) == {"pass@1 greedy", "pass@1 T=1", "pass@k T=1", "worst@k T=1"}
    assert all(0.0 <= v <= 1.0 for v in run["final"].values())
    assert run["final"]["worst@k T=1"] <= run["final"]["pass@1 T=1"] <= run["final"]["pass@k T=1"]
    grid = run["grid"]
    assert set(grid["per temperature pass@1"]) == {"0.7", "1"}
    assert grid["per temperature pass@1"]["1"] == run["final"]["pass@1 T=1"]  # the T=1 metrics are the grid's samples
    assert grid["best single T pass@k"] <= grid["pass@all"] and grid["spread pass@k"] <= grid["pass@all"]
    # countdown_steps' answers are traces, not canonical: no vote numbers, the reason instead.
    assert grid["vote samples saved"] is None and "not canonical" in grid["vote n/a"]
    assert [point["samples"] for point in grid["equal budget curve"]] == [1, 2]

    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == {"fixed-1.0", "ead"}
    fixed = report["arms"]["fixed-1.0"]
    assert [p["step"] for p in fixed["curve"]] == [0, 1, 2]
    assert [p["rollouts"] for p in fixed["curve"]] == [0, 8, 16]
    assert fixed["curve"][0]["pass@1 T=1"]["mean"] == report["start"]["pass@1 T=1"]
    assert fixed["final"]["pass@1 T=1"]["mean"] == json.loads(
        (out / "runs" / "fixed-1.0" / "seed0.json").read_text())["final"]["pass@1 T=1"]
    assert fixed["steps_to_baseline_final"] is not None  # the baseline reaches its own final accuracy
    assert (out / "bench.png").stat().st_size > 10_000
    assert "| fixed-1.0 | 1 |" in (out / "report.md").read_text()
    assert "Across temperatures 0.7, 1 (2 samples at each)" in (out / "report.md").read_text()
    assert set(report["arms"]["ead"]["grid"]) >= {"pass@all", "vote early exit", "best single T"}
    assert "grid" in report["start"]
    assert set(fixed["pass@1 by temperature"]) == {"pass@1 greedy", "pass@1 T=0.7", "pass@1 T=1"}
    assert [row["arm"] for row in report["paired"]["comparisons"]] == ["ead"] * 6  # 3 decodings, final and mean
    confirmatory = report["paired"]["comparisons"][0]
    assert (confirmatory["metric"], confirmatory["role"]) == ("pass@1 greedy (mean of last 2)", "exploratory")
    assert confirmatory["why"] == "declared confirmatory, but 1 seed(s) < 10"
    assert confirmatory["comparison"]["prompt bootstrap"]["prompts"] == 12
    assert report["start weights"] == weights
    assert "| ead | fixed-1.0 | pass@1 T=0.7 | 1 |" in (out / "report.md").read_text()
    assert f"Start model weights: SHA-256 {weights['sha256']}" in (out / "report.md").read_text()
    # Every numeric training metric, over the run and its last quarter; the report shows the default signals.
    zero_std = run["training"]["frac_reward_zero_std"]
    assert 0.0 <= zero_std["mean"] <= 1.0 and 0.0 <= zero_std["last quarter"] <= 1.0
    assert run["training"]["ratio/min"]["mean"] <= 1.0 + 1e-6 <= run["training"]["ratio/max"]["mean"] + 2e-6
    assert set(report["arms"]["ead"]["signals"]) == {"frac_reward_zero_std", "entropy"}
    assert "Training signals" in (out / "report.md").read_text()

    before = (out / "runs" / "ead" / "seed0.json").read_text()
    assert main(["bench", str(arms), "--out", str(out)]) == 0
    assert "0 run(s) to do, 2 already done" in capsys.readouterr().out
    assert (out / "runs" / "ead" / "seed0.json").read_text() == before

    # --report: the report from what is finished, naming what is not; nothing runs.
    assert main(["bench", str(arms), "--out", str(out), "--seeds", "0", "1", "--report"]) == 0
    printed = capsys.readouterr().out
    assert "not finished: ead seed 1, fixed-1.0 seed 1" in printed and "run(s) to do" not in printed
    assert not (out / "runs" / "ead" / "seed1.plan.json").exists()
    assert json.loads((out / "report.json").read_text())["arms"]["ead"]["seeds"] == [0]
    assert main(["bench", str(arms), "--out", str(tmp_path / "empty"), "--report"]) == 2
    assert "--report: no finished run in" in capsys.readouterr().err

    # The same settings given on the command line (as text) reuse the runs.
    assert main(["bench", str(arms), "--out", str(out), "--max_steps", "2"]) == 0
    assert "0 run(s) to do, 2 already done" in capsys.readouterr().out

    # Same folder, other settings: refused, nothing overwritten.
    assert main(["bench", str(arms), "--out", str(out), "--learning_rate", "3e-4"]) == 2
    assert "was made with other settings" in capsys.readouterr().err
    assert (out / "runs" / "ead" / "seed0.json").read_text() == before


def test_grid_summary_against_hand_counts():
    """Two prompts, temperatures 0.5 and 1.0, two samples each, with completions fixed by hand."""
    from thermorl.bench.run import grid_summary
    from thermorl.evaluation.pipeline import as_verifier, score
    from thermorl.tasks.countdown_steps import CountdownStepsTask

    right0, wrong0 = "7-4=3,5+1=6,6+3=9", "7+5=12,12+4=16,16-1=15"
    right1, wrong1 = "4+3=7,7+2=9,9+1=10", "4-3=1,2+1=3,3+1=4"
    rows = [{"prompt": "1 4 5 7>9:", "numbers": [1, 4, 5, 7], "target": 9},
            {"prompt": "1 2 3 4>10:", "numbers": [1, 2, 3, 4], "target": 10}]
    table = [[[right0, right0], [wrong0, right0]], [[wrong1, wrong1], [wrong1, right1]]]
    answers, correct = score(as_verifier(CountdownStepsTask(), list(rows[0])), rows, table)
    # The votes are counted as if the traces were canonical answers, to check the counting on hand-made tables.
    scores = grid_summary([0.5, 1.0], answers, correct, {"vote_round_size": 1, "vote_threshold": 0.8},
                          canonical_answers=True)
    assert scores["per temperature pass@1"] == {"0.5": 0.5, "1": 0.5}
    # pass@2: T=0.5 solves prompt 0 only, T=1 both.
    assert (scores["best single T"], scores["best single T pass@k"]) == (1.0, 1.0)
    # One sample at each temperature: prompt 0 always solved, prompt 1 half the time (T=1's 1 right of 2).
    assert scores["spread pass@k"] == pytest.approx(0.75)
    assert scores["pass@all"] == 1.0
    # Pooled majority: prompt 0 -> right0 (3 of 4), prompt 1 -> wrong1 (3 of 4).
    assert scores["vote all samples"] == 0.5
    # Round 1 (one sample per temperature): prompt 1 agrees on wrong1 and exits after 2 of 4 samples; prompt 0
    # disagrees, then T=1 is split 1-1 after round 2, so it votes on all 4 (right0).
    assert scores["vote early exit"] == 0.5
    assert scores["vote samples saved"] == pytest.approx(0.25)
    # The equal-budget curve: at 1 sample, T=0.5 and T=1 both solve half; spread picks one at random (0.5).
    assert scores["equal budget curve"][0] == {"samples": 1, "best single T": 0.5, "best single T pass@k": 0.5,
                                               "spread pass@k": 0.5}
    assert scores["equal budget curve"][-1]["spread pass@k"] == scores["spread pass@k"]

    # countdown_steps' traces are not canonical answers: the vote metrics are n/a, with the reason.
    assert CountdownStepsTask.canonical_answers is False
    not_canonical = grid_summary([0.5, 1.0], answers, correct, {"vote_round_size": 1, "vote_threshold": 0.8},
                                 canonical_answers=False)
    assert [not_canonical[m] for m in ("vote all samples", "vote early exit", "vote samples saved")] == [None] * 3
    assert "not canonical" in not_canonical["vote n/a"]
    assert not_canonical["spread pass@k"] == scores["spread pass@k"]


def test_rollouts_outside_training_batches_count_on_the_rollouts_axis():
    from thermorl.bench.report import extra_rollouts_at

    run = {"extra_rollouts": [[1, 8000.0], [75, 8000.0], [76, 16000.0]]}
    assert [extra_rollouts_at(run, step) for step in (0, 1, 75, 76, 300)] == [0.0, 8000.0, 8000.0, 16000.0, 16000.0]
    assert extra_rollouts_at({}, 300) == 0.0  # runs of other arms (and results written before the field existed)


def test_reward_curve_keeps_the_steps_it_was_logged_at(tmp_path):
    """With two optimizer steps per rollout batch the reward is logged every other step: the report's (and the
    plot's) reward curve keeps those steps, averaging the seeds step by step."""
    from thermorl.bench.report import aggregate

    def write(arm, seed, rewards):
        run = {"seed": seed, "reward": rewards, "rollouts_per_step": 64.0, "seconds": 60.0,
               "curve": [{"step": 4, "pass@1 greedy": 0.3, "pass@1 T=1": 0.2}],
               "final": {"pass@1 greedy": 0.3, "pass@1 T=1": 0.2, "pass@k T=1": 0.5, "worst@k T=1": 0.0}}
        path = tmp_path / "runs" / arm / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))

    write("two-steps", 0, [[1, 0.2], [3, 0.4]])
    write("two-steps", 1, [[1, 0.4], [3, 0.6]])
    spec = {"arms": {"two-steps": {}}, "seeds": [0, 1], "baseline": "two-steps",
            "evaluation": {"samples": 8, "temperatures": None}}
    start = {"pass@1 greedy": 0.3, "pass@1 T=1": 0.1}
    report = aggregate(spec, tmp_path, start)
    assert report["arms"]["two-steps"]["reward_mean_over_seeds"] == [[1, pytest.approx(0.3)], [3, pytest.approx(0.5)]]


# --- the fair study's tooling: matched footing, paired statistics, validation split, canonical answers ------------


def _write_run(out, arm, seed, final, grid=None):
    run = {"seed": seed, "reward": [[1, 0.1]], "rollouts_per_step": 64.0, "seconds": 60.0,
           "curve": [{"step": 2, "pass@1 greedy": final["pass@1 greedy"], "pass@1 T=1": final["pass@1 T=1"]}],
           "final": final}
    if grid is not None:
        run["grid"] = grid
    path = out / "runs" / arm / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))


def _final(greedy, at_1):
    return {"pass@1 greedy": greedy, "pass@1 T=1": at_1, "pass@k T=1": at_1 + 0.1, "worst@k T=1": 0.0}


def _grid(per_temperature, vote=0.5, not_applicable=False):
    grid = {"best single T pass@k": 0.6, "best single T": 1.0, "spread pass@k": 0.6, "pass@all": 0.7,
            "vote all samples": vote, "vote early exit": vote, "vote samples saved": 0.1,
            "per temperature pass@1": per_temperature,
            "equal budget curve": [{"samples": 1, "best single T": 1.0, "best single T pass@k": 0.3,
                                    "spread pass@k": 0.3}]}
    if not_applicable:
        grid.update({"vote all samples": None, "vote early exit": None, "vote samples saved": None,
                     "vote n/a": "the task's answers are not canonical"})
    return grid


def test_report_compares_arms_at_each_evaluation_temperature_and_pairs_them_by_seed(tmp_path):
    """pass@1 at greedy and every grid temperature, mean over seeds per arm, and each arm minus the baseline seed by
    seed (only the seeds both finished), Holm-corrected across the table."""
    from thermorl.bench.report import aggregate, markdown
    from thermorl.bench.stats import holm

    for seed, (cold, hot) in enumerate([(0.30, 0.20), (0.40, 0.30), (0.50, 0.40)]):
        _write_run(tmp_path, "fixed-1.0", seed, _final(0.5, cold), _grid({"0.6": cold + 0.1, "1": cold}))
        if seed < 2:  # fixed-1.2 finished seeds 0 and 1 only
            _write_run(tmp_path, "fixed-1.2", seed, _final(0.6, hot), _grid({"0.6": cold + 0.2, "1": hot}))
    spec = {"arms": {"fixed-1.0": {}, "fixed-1.2": {}}, "seeds": [0, 1, 2], "baseline": "fixed-1.0",
            "evaluation": {"samples": 8, "temperatures": [0.6, 1.0]}}
    start = {"pass@1 greedy": 0.3, "pass@1 T=1": 0.1, "pass@k T=1": 0.4, "worst@k T=1": 0.0,
             "grid": _grid({"0.6": 0.15, "1": 0.1})}
    report = aggregate(spec, tmp_path, start)

    by_t = report["arms"]["fixed-1.2"]["pass@1 by temperature"]
    assert list(by_t) == ["pass@1 greedy", "pass@1 T=0.6", "pass@1 T=1"]
    assert by_t["pass@1 T=0.6"]["mean"] == pytest.approx(0.55) and by_t["pass@1 T=0.6"]["n"] == 2
    assert report["arms"]["fixed-1.0"]["pass@1 by temperature"]["pass@1 T=1"]["mean"] == pytest.approx(0.4)
    assert report["start pass@1 by temperature"] == {"pass@1 greedy": 0.3, "pass@1 T=0.6": 0.15, "pass@1 T=1": 0.1}

    paired = {row["metric"]: row["comparison"] for row in report["paired"]["comparisons"]}
    assert report["paired"]["metrics"] == ["pass@1 greedy", "pass@1 T=0.6", "pass@1 T=1"]
    assert paired["pass@1 T=1"]["seeds"] == [0, 1]  # seed 2: no fixed-1.2 run
    assert paired["pass@1 T=1"]["mean difference"] == pytest.approx(-0.1)
    assert (paired["pass@1 T=1"]["wins"], paired["pass@1 T=1"]["losses"]) == (0, 2)
    assert paired["pass@1 T=0.6"]["mean difference"] == pytest.approx(0.1)
    assert paired["pass@1 T=1"]["p"] == pytest.approx(0.5)  # two seeds: 2 of 4 sign patterns reach |-0.2|
    assert [paired[m]["p holm"] for m in paired] == pytest.approx(holm([paired[m]["p"] for m in paired]))

    table = markdown(report)
    assert "pass@1 by evaluation temperature" in table
    assert "| arm | seeds | greedy | T=0.6 | T=1 |" in table
    assert "| fixed-1.2 | fixed-1.0 | pass@1 T=1 | 2 | -0.100 ± " in table and "0 / 2 / 0 | 0.500 |" in table

    # --compare: another metric of the runs.
    report = aggregate(spec, tmp_path, start, ["pass@k T=1"])
    assert [row["metric"] for row in report["paired"]["comparisons"]] == ["pass@k T=1"]


def test_report_pairs_each_arm_with_its_own_baseline_and_summarises_training_signals(tmp_path):
    """baseline as a mapping: each arm against its own baseline (steps to that baseline's final too), or against
    several (a list: steps to the first one's final; the others are controls), arms outside every pair are not
    compared; the named training signals are averaged over seeds, "not logged" where absent."""
    from thermorl.bench.report import aggregate, markdown

    finals = {"grpo-s4": [(0.30, 0.20), (0.40, 0.30)], "sapo-s4": [(0.35, 0.30), (0.45, 0.40)],
              "grpo-s8": [(0.20, 0.10), (0.30, 0.20)], "sapo-s8": [(0.10, 0.10), (0.20, 0.10)], "other": [(0.5, 0.5)],
              "control": [(0.9, 0.9), (0.9, 0.9)]}
    for arm, by_seed in finals.items():
        for seed, (greedy, at_1) in enumerate(by_seed):
            _write_run(tmp_path, arm, seed, _final(greedy, at_1))
            run_path = tmp_path / "runs" / arm / f"seed{seed}.json"
            run = json.loads(run_path.read_text())
            run["training"] = {"ratio/abs_log_mean": {"mean": 0.01 * (seed + 1), "last quarter": 0.02 * (seed + 1)}}
            if arm.startswith("sapo"):
                run["training"]["sapo/gate_weight_mean"] = {"mean": 0.9, "last quarter": 0.8}
            run_path.write_text(json.dumps(run))
    spec = {"arms": {arm: {} for arm in finals}, "seeds": [0, 1], "evaluation": {"samples": 8, "temperatures": None},
            "baseline": {"sapo-s4": ["grpo-s4", "control"], "sapo-s8": "grpo-s8"},
            "signals": ["ratio/abs_log_mean", "sapo/gate_weight_mean", "never-logged"]}
    report = aggregate(spec, tmp_path, _final(0.3, 0.1))
    rows = {(row["arm"], row["baseline"], row["metric"]): row["comparison"] for row in report["paired"]["comparisons"]}
    assert set(rows) == {(arm, base, metric) for arm, base in [("sapo-s4", "grpo-s4"), ("sapo-s4", "control"),
                                                               ("sapo-s8", "grpo-s8")]
                         for metric in ("pass@1 greedy", "pass@1 T=1")}
    assert report["compared"] == ["sapo-s4", "sapo-s8"]
    assert rows[("sapo-s4", "control", "pass@1 T=1")]["mean difference"] == pytest.approx(-0.55)
    assert rows[("sapo-s4", "grpo-s4", "pass@1 T=1")]["mean difference"] == pytest.approx(0.1)
    assert rows[("sapo-s8", "grpo-s8", "pass@1 T=1")]["mean difference"] == pytest.approx(-0.05)
    arms = report["arms"]
    assert arms["sapo-s4"]["steps_to_baseline_final"] == 2  # reaches grpo-s4's final 0.25 (not control's 0.9)
    assert arms["sapo-s8"]["steps_to_baseline_final"] is None  # 0.10 never reaches grpo-s8's 0.15
    assert "steps_to_baseline_final" not in arms["other"]
    signal = arms["grpo-s4"]["signals"]["ratio/abs_log_mean"]
    assert signal["mean"]["mean"] == pytest.approx(0.015) and signal["last quarter"]["mean"] == pytest.approx(0.03)
    assert "sapo/gate_weight_mean" not in arms["grpo-s4"]["signals"] and "never-logged" not in arms["sapo-s4"]["signals"]
    table = markdown(report)
    assert "steps (rollouts) to its baseline's final T=1 pass@1" in table
    assert arms["sapo-s4"]["rollouts_to_baseline_final"] == next(
        point["rollouts"] for point in arms["sapo-s4"]["curve"] if point["step"] == 2) > 0
    assert f"| 2 ({arms['sapo-s4']['rollouts_to_baseline_final']:,.0f}) |" in table
    assert "| sapo-s4 | grpo-s4 | pass@1 T=1 | 2 | +0.100 ± " in table
    assert "| sapo-s4 | control | pass@1 T=1 | 2 | -0.550 ± " in table
    assert "| grpo-s4 | 0.015 ± " in table and "| not logged |" in table
    assert "never-logged" not in table


def test_run_jsons_written_before_a_field_existed_report_it_as_missing(tmp_path):
    """Format compatibility: old runs have no per-temperature pass@1 (or no grid at all) and no equal-budget curve;
    the report says "missing" for them instead of failing, and the other seeds still count."""
    from thermorl.bench.report import aggregate, markdown

    old_grid = _grid({"0.6": 0.2, "1": 0.3})
    del old_grid["per temperature pass@1"], old_grid["equal budget curve"]
    _write_run(tmp_path, "a", 0, _final(0.5, 0.3), old_grid)
    _write_run(tmp_path, "a", 1, _final(0.5, 0.4), _grid({"0.6": 0.3, "1": 0.4}))
    _write_run(tmp_path, "b", 0, _final(0.4, 0.2))  # no grid
    spec = {"arms": {"a": {}, "b": {}}, "seeds": [0, 1], "baseline": "a",
            "evaluation": {"samples": 8, "temperatures": [0.6, 1.0]}}
    report = aggregate(spec, tmp_path, _final(0.3, 0.1))
    a, b = report["arms"]["a"]["pass@1 by temperature"], report["arms"]["b"]["pass@1 by temperature"]
    assert a["pass@1 T=0.6"] == {"mean": 0.3, "ci95": 0.0, "n": 1, "missing seeds": [0]}
    assert a["pass@1 T=1"]["n"] == 2  # the final T=1 pass@1 every run has
    assert b["pass@1 T=0.6"] is None
    assert "equal budget curve" not in report["arms"]["a"]["grid"]
    assert report["start pass@1 by temperature"]["pass@1 T=0.6"] is None
    table = markdown(report)
    assert "0.300 ± 0.000 (seeds [0] missing)" in table
    assert "| b | 1 | 0.400 ± 0.000 | missing | 0.200 ± 0.000 |" in table
    paired = {row["metric"]: row["comparison"] for row in report["paired"]["comparisons"]}
    assert paired["pass@1 T=0.6"] is None and paired["pass@1 greedy"]["seeds"] == [0]
    assert "| b | a | pass@1 T=0.6 | none shared | missing |" in table


def test_vote_columns_say_n_a_where_answers_are_not_canonical(tmp_path):
    from thermorl.bench.report import aggregate, markdown
    from thermorl.tasks import get_task

    assert get_task("arithmetic").canonical_answers is True
    assert get_task("countdown_steps").canonical_answers is False
    assert get_task("countdown").canonical_answers is False
    _write_run(tmp_path, "a", 0, _final(0.5, 0.3), _grid({"0.6": 0.2, "1": 0.3}, not_applicable=True))
    spec = {"arms": {"a": {}}, "seeds": [0], "baseline": "a", "evaluation": {"samples": 8, "temperatures": [0.6, 1.0]}}
    start = {**_final(0.3, 0.1), "grid": _grid({"0.6": 0.1, "1": 0.1}, not_applicable=True)}
    report = aggregate(spec, tmp_path, start)
    grid = report["arms"]["a"]["grid"]
    assert grid["vote early exit"] is None and "not canonical" in grid["vote n/a"]
    assert grid["pass@all"]["mean"] == 0.7
    table = markdown(report)
    assert "| start (warmed-up policy) | 0.600 | 0.600 | 0.700 | n/a | n/a | n/a | 1 |" in table
    assert "| a | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.700 ± 0.000 | n/a | n/a | n/a | 1 |" in table
    assert "Vote columns n/a: the task's answers are not canonical." in table
    assert "| a | 0.300 / 0.300 |" in table  # the equal-budget pass@K curve


@pytest.mark.parametrize(
    "evaluation, argv, message",
    [
        ({"split": "test"}, [], "evaluation.split must be one of ['held_out', 'validation'], got 'test'"),
        ({"validation_examples": 64}, [], "evaluation.validation_examples applies to split validation only"),
        ({"split": "validation", "validation_examples": 0}, [],
         "evaluation.validation_examples must be an integer >= 1, got 0"),
        ({}, ["--compare", "pass@1 T=0.8"], "--compare: ['pass@1 T=0.8'] are not metrics of this bench"),
        ({}, ["--split", "validation"],
         "evaluation.validation_examples 256 must be below num_train_examples (32 in arm"),
    ],
)
def test_split_and_compare_mistakes_are_one_line_errors(tmp_path, capsys, evaluation, argv, message):
    from thermorl.cli import main

    arms = _write_arms(tmp_path / "arms.yaml",
                       evaluation={"samples": 2, "every": 1, "batch_size": 64, "temperatures": [0.7, 1.0], **evaluation})
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("an earlier report\n")
    assert main(["bench", str(arms), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "an earlier report\n"


def test_validation_rows_come_out_of_training_and_leave_held_out_unchanged():
    from types import SimpleNamespace

    from thermorl.recipe_inputs import build_datasets

    args = SimpleNamespace(dataset="countdown_steps", dataset_seed=0, dataset_config=None, dataset_split="train",
                           prompt_column="prompt", prompt_template=None, system_prompt=None, answer_column=None,
                           num_train_examples=300, num_eval_examples=100)
    train, held_out, task = build_datasets(args, seed=5)
    carved_train, carved_held_out, _ = build_datasets(args, seed=5, validation_examples=40)
    _, validation = task.carve_validation(train, 40)
    assert list(carved_held_out["prompt"]) == list(held_out["prompt"])
    assert len(carved_train) == 260 and len(validation) == 40
    assert sorted(list(carved_train["prompt"]) + list(validation["prompt"])) == sorted(train["prompt"])
    assert not set(validation["prompt"]) & set(held_out["prompt"])
    assert list(task.carve_validation(train, 40)[1]["prompt"]) == list(validation["prompt"])  # the same every time
    # Rows at random, not the tail: countdown_steps' later draws are the rarer, harder prompts.
    assert list(validation["prompt"]) != list(train["prompt"])[-40:]
    # The testbed's split (2000 training, 512 held-out prompts, dataset_seed 0) is the one the earlier study used:
    # these hashes were taken with the code before validation rows existed.
    testbed_train, testbed_held_out = task.make_splits(2000, 512, seed=0)
    assert hashlib.sha256("\n".join(testbed_held_out["prompt"]).encode()).hexdigest()[:16] == "c4d27eaf94449587"
    assert hashlib.sha256("\n".join(testbed_train["prompt"]).encode()).hexdigest()[:16] == "793ae3c40c487024"
    from thermorl.errors import UserError

    with pytest.raises(UserError, match="validation rows: must be an integer from 1 to 299"):
        task.carve_validation(train, 300)


def test_ead_quickstart_arms_file_measures_voting_on_canonical_answers_over_the_13_temperature_grid(
        tmp_path, monkeypatch, capsys):
    """benchmarks/ead_quickstart_arms.yaml on tiny numbers: the 13-temperature grid with greedy at 0.0, K = 32 samples,
    rounds of 4: the vote columns are numbers (arithmetic's answers are canonical) and the equal-budget pass@K curve
    reaches K = 32."""
    from pathlib import Path

    from thermorl.bench.arms import load_arms
    from thermorl.cli import main

    arms = Path(__file__).resolve().parents[1] / "benchmarks" / "ead_quickstart_arms.yaml"
    spec = load_arms(arms)
    assert spec["evaluation"]["temperatures"] == [round(0.1 * i, 1) for i in range(13)]
    assert (spec["evaluation"]["samples"], spec["evaluation"]["vote_round_size"]) == (32, 4)
    monkeypatch.setenv("THERMORL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    tiny = ["--max_steps", "1", "--warmup_examples", "64", "--warmup_epochs", "1", "--num_train_examples", "32",
            "--num_eval_examples", "3", "--per_device_train_batch_size", "8", "--num_generations", "4"]
    assert main(["bench", str(arms), "--out", str(out), "--seeds", "0", "--arms", "fixed-1.0", *tiny]) == 0
    grid = json.loads((out / "runs" / "fixed-1.0" / "seed0.json").read_text())["grid"]
    assert "vote n/a" not in grid and 0.0 <= grid["vote samples saved"] < 1.0
    assert [point["samples"] for point in grid["equal budget curve"]] == [1, 2, 4, 8, 16, 32]
    assert set(grid["per temperature pass@1"]) == {f"{0.1 * i:.1f}".rstrip("0").rstrip(".") for i in range(13)}
    table = (out / "report.md").read_text()
    assert "| arm | K=1 | K=2 | K=4 | K=8 | K=16 | K=32 |" in table and "n/a" not in table


def test_bench_on_validation_prompts_scores_them_and_keeps_the_held_out_runs_apart(tmp_path, monkeypatch, capsys):
    """evaluation.split validation: the runs score validation prompts carved out of the training ones (RL leaves
    them out), and the report says it is not the held-out result; `--split held_out` gives the plan runs made
    before the option existed had (no split key), so they keep matching on resume."""
    from thermorl.bench.arms import load_arms, run_plan, with_split
    from thermorl.cli import main

    monkeypatch.setenv("THERMORL_CACHE", str(tmp_path / "cache"))
    evaluation = {"samples": 2, "every": 1, "batch_size": 64, "temperatures": [0.7, 1.0]}
    arms = _write_arms(tmp_path / "arms.yaml", arms={"fixed-1.0": {"temperature": 1.0}},
                       evaluation={**evaluation, "split": "validation", "validation_examples": 8})
    out = tmp_path / "out"
    assert main(["bench", str(arms), "--out", str(out), "--max_steps", "1"]) == 0
    run = json.loads((out / "runs" / "fixed-1.0" / "seed0.json").read_text())
    assert (run["evaluation"]["split"], run["evaluation"]["validation_examples"]) == ("validation", 8)
    assert run["held_out_prompts"] == 8
    assert "Scored on validation prompts" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert (report["split"], report["held_out_prompts"]) == ("validation", 8)

    spec = load_arms(arms)
    spec["evaluation"] = with_split({k: v for k, v in spec["evaluation"].items() if k != "validation_examples"},
                                    "held_out", "--split")
    old = load_arms(_write_arms(tmp_path / "old.yaml", arms={"fixed-1.0": {"temperature": 1.0}}, evaluation=evaluation))
    assert run_plan(spec, "fixed-1.0", 0, {}, tmp_path) == run_plan(old, "fixed-1.0", 0, {}, tmp_path)


@pytest.mark.parametrize("name", ["testbed_arms.yaml", "study_arms.yaml", "ead_quickstart_arms.yaml"])
def test_study_arms_files_load(name):
    from pathlib import Path

    from thermorl.bench.arms import load_arms

    spec = load_arms(Path(__file__).resolve().parents[1] / "benchmarks" / name)
    if name == "ead_quickstart_arms.yaml":  # EAD rescaled to 1-2 character answers, as the file's comment says
        ead = build_schedule(spec["arms"]["ead"]["temperature_schedule"])
        assert ead.temperatures(torch.arange(3), 0).tolist() == pytest.approx([1.2, 0.55, 0.1], abs=0.01)
        assert ead.temperatures(torch.arange(3), 30).tolist() == pytest.approx([1.2, 0.98, 0.71], abs=0.01)
        assert spec["arms"]["portfolio"]["temperature_portfolio"][3] == spec["arms"]["ead"]["temperature_schedule"]
        recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "ead_sapo.yaml").read_text())
        assert recipe["temperature_schedule"] == spec["arms"]["ead"]["temperature_schedule"]  # "the ead arm of"
    else:
        no_growth = spec["arms"]["ead-no-growth"]["temperature_schedule"]
        assert no_growth["horizon_growth"] == 0.0 and build_schedule(no_growth).alpha == 0.0
    if name == "study_arms.yaml":
        methods = {arm.split("-")[0] for arm in spec["arms"]}
        assert {m: sum(arm.startswith(m) for arm in spec["arms"]) for m in methods} == {
            "fixed": 3, "ead": 3, "portfolio": 3, "adpo": 3, "grpo": 3}
        assert spec["evaluation"]["split"] == "validation"
        # ADPO and its control reuse each rollout batch: optimizer steps per generation times the generations must
        # sample as many rollouts as every other arm's.
        for arm in (arm for arm in spec["arms"] if arm.startswith(("adpo", "grpo-reuse"))):
            settings = spec["arms"][arm]
            assert settings["max_steps"] / settings["num_iterations"] == spec["overrides"]["max_steps"]


def test_adpo_controls_arms_run_the_configurations_stage_1_tuned():
    """benchmarks/regime_adpo_controls_arms.yaml says its ADPO and GRPO-reuse arms are the configurations chosen on
    validation in study_arms.yaml, ADPO without reuse is ADPO's with one update per batch, and all four sample the same
    rollouts: its run plans agree with study_arms.yaml's on everything but the split and evaluation."""
    from pathlib import Path

    from thermorl.bench.arms import load_arms, run_plan

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    controls, study = load_arms(benchmarks / "regime_adpo_controls_arms.yaml"), load_arms(benchmarks / "study_arms.yaml")

    def recipe(spec, arm):
        return {k: v for k, v in run_plan(spec, arm, 0, {}, Path("/r"))["recipe"].items() if k != "output_dir"}

    for arm in ("adpo-soft-target", "grpo-reuse-clip-0.1", "fixed-0.8"):
        assert recipe(controls, arm) == recipe(study, arm)
    with_reuse, without = recipe(controls, "adpo-soft-target"), recipe(controls, "adpo-no-reuse")
    assert (with_reuse["num_iterations"], with_reuse["max_steps"]) == (2, 600)
    assert (without.get("num_iterations", 1), without["max_steps"]) == (1, 300)
    assert {k: v for k, v in without.items() if k not in ("num_iterations", "max_steps")} == {
        k: v for k, v in with_reuse.items() if k not in ("num_iterations", "max_steps")}
    assert [row["baseline"] for row in controls["confirmatory"]] == [
        "grpo-reuse-clip-0.1", "grpo-reuse-clip-0.1", "fixed-0.8", "fixed-0.8", "adpo-no-reuse"]


def test_k64_arms_file_trains_as_the_ead_quickstart_arms_and_only_samples_more():
    """benchmarks/ead_quickstart_k64_arms.yaml says its runs train with ead_quickstart_arms.yaml's settings and only
    the evaluation draws 64 samples per temperature instead of 32: every run plan but the sample count agrees."""
    from pathlib import Path

    from thermorl.bench.arms import load_arms, run_plan

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    k32, k64 = load_arms(benchmarks / "ead_quickstart_arms.yaml"), load_arms(benchmarks / "ead_quickstart_k64_arms.yaml")
    assert (k32["evaluation"]["samples"], k64["evaluation"]["samples"]) == (32, 64)
    assert k64["seeds"] == k32["seeds"] and k64["baseline"] == k32["baseline"]
    for arm in k64["arms"]:
        for seed in k64["seeds"]:
            plans = [run_plan(spec, arm, seed, {}, Path("run")) for spec in (k32, k64)]
            for plan in plans:
                plan["evaluation"] = {k: v for k, v in plan["evaluation"].items() if k != "samples"}
            assert plans[0] == plans[1]


def test_horizon_growth_makes_the_testbed_ead_arm_a_hot_fixed_temperature():
    """Why the testbed has an EAD arm without growth: sized to 20 tokens with the paper's growth, every position of a 22-token trace is
    above 1.0 by step 25 and the mean is ~1.19 at step 300; without growth step 300 is step 0 (1.2 down to 0.1)."""
    positions = torch.arange(22)
    growth = annealed_for_length(20)
    assert growth.temperatures(positions, 0).min() == pytest.approx(0.1)
    assert growth.temperatures(positions, 25).min() > 1.0
    assert growth.temperatures(positions, 300).mean() == pytest.approx(1.19, abs=0.01)
    no_growth = annealed_for_length(20, horizon_growth=0.0)
    assert torch.equal(no_growth.temperatures(positions, 300), no_growth.temperatures(positions, 0))


# --- issue 33: robust numbers, recorded environment and start weights, pre-declared families ----------------------

_PROMPTS = ["p0", "p1", "p2", "p3"]


def _scored(greedy_hits, t06_counts, t1_counts, k=2):
    """One scored checkpoint of 4 prompts, k samples at T=0.6 and T=1, made from per-prompt counts by hand:
    prompt_outcomes on correct tables with that many right samples first, and the metrics worked out by hand."""
    from thermorl.bench.run import prompt_outcomes

    greedy = [[[bool(hit)]] for hit in greedy_hits]
    correct = [[[i < c06 for i in range(k)], [i < c1 for i in range(k)]] for c06, c1 in zip(t06_counts, t1_counts)]
    outcomes = prompt_outcomes(_PROMPTS, [0.6, 1.0], greedy, correct)
    final = {"pass@1 greedy": sum(greedy_hits) / 4, "pass@1 T=1": sum(t1_counts) / (4 * k),
             "pass@k T=1": sum(c > 0 for c in t1_counts) / 4, "worst@k T=1": sum(c == k for c in t1_counts) / 4}
    grid = _grid({"0.6": sum(t06_counts) / (4 * k), "1": final["pass@1 T=1"]})
    grid["pass@all"] = sum(a > 0 or b > 0 for a, b in zip(t06_counts, t1_counts)) / 4
    return {"final": final, "grid": grid, "prompt_outcomes": outcomes}


def test_per_prompt_outcomes_give_each_metric_and_the_mean_over_the_last_checkpoints():
    from thermorl.bench.report import prompt_scores, run_metrics

    last = _scored([1, 0, 1, 0], [2, 2, 0, 1], [2, 1, 0, 0])
    assert last["prompt_outcomes"]["correct"] == {"greedy": [1, 0, 1, 0], "T=0.6": [2, 2, 0, 1], "T=1": [2, 1, 0, 0]}
    assert last["prompt_outcomes"]["samples"] == 2
    run = {**last, "checkpoints": [{"step": 250, **_scored([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0])}]}
    by_hand = {"pass@1 greedy": [1, 0, 1, 0], "pass@1 T=0.6": [1, 1, 0, 0.5], "pass@1 T=1": [1, 0.5, 0, 0],
               "pass@k T=1": [1, 1, 0, 0], "worst@k T=1": [1, 0, 0, 0], "pass@all": [1, 1, 0, 1]}
    metrics = run_metrics(run)
    for metric, scores in by_hand.items():
        assert prompt_scores(run, metric) == pytest.approx(scores), metric
        assert metrics[metric] == pytest.approx(sum(scores) / 4), metric  # the stored number is their mean
        # The earlier checkpoint scored 0 on every prompt: the mean over the last two is half of each score.
        last_two = f"{metric} (mean of last 2)"
        assert prompt_scores(run, last_two) == pytest.approx([s / 2 for s in scores]), metric
        assert metrics[last_two] == pytest.approx(sum(scores) / 8), metric
    # No per-prompt form: the best single temperature is chosen over all prompts.
    assert prompt_scores(run, "best single T pass@k") is None
    assert "pass@1 greedy (mean of last 2)" not in run_metrics(last)  # scored on its final checkpoint only
    assert prompt_scores({"final": last["final"]}, "pass@1 greedy") is None  # a run from before outcomes were kept


def test_report_header_records_weights_and_environment_and_labels_exploratory_rows(tmp_path):
    """10 seeds of `hot` and `base`, 3 of `few`, and `late`, whose runs were made before the family named it: the
    declared row with 10 seeds is confirmatory (a p-value, Holm over the family of 3), the others exploratory with the
    reason, undeclared rows have no p-value; the prompt bootstrap's point is the seed-level mean; the header names
    the start weights and the runs' environment, and the runs that recorded none."""
    from thermorl.bench.report import aggregate, markdown

    family = [{"metric": "pass@1 T=1 (mean of last 2)", "arm": "hot", "baseline": "base"},
              {"metric": "pass@1 greedy", "arm": "few", "baseline": "base"},
              {"metric": "pass@1 greedy", "arm": "late", "baseline": "base"}]
    environment = {"torch": "2.13.0", "transformers": "5.19.0", "trl": "1.16.0", "thermorl": "0.1.0",
                   "thermorl_commit": "0123456789abcdef", "python": "3.12.1", "cpu": "Test CPU", "cpu_count": 2,
                   "torch_threads": 1, "cuda": None}
    counts = {"base": ([1, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 0]), "hot": ([1, 1, 0, 0], [2, 1, 0, 1], [2, 1, 1, 0])}
    counts["few"] = counts["late"] = counts["hot"]
    for arm, seeds in (("base", range(10)), ("hot", range(10)), ("few", range(3)), ("late", range(10))):
        for seed in seeds:
            greedy, t06, t1 = counts[arm]
            # seed 0 of hot does worse on prompt 2, so that the seeds differ
            scored = _scored(greedy, t06, [2, 1, 0, 0] if (arm, seed) == ("hot", 0) else t1)
            _write_run(tmp_path, arm, seed, scored["final"], scored["grid"])
            path = tmp_path / "runs" / arm / f"seed{seed}.json"
            run = {**json.loads(path.read_text()), "prompt_outcomes": scored["prompt_outcomes"],
                   "checkpoints": [{"step": 1, **_scored(*counts["base"])}],
                   "start_weights": {"path": "/m", "sha256": "ab" * 32}}
            if arm != "late":
                run["confirmatory"] = family
            if seed != 9:
                run["environment"] = environment
            path.write_text(json.dumps(run))
    spec = {"arms": {arm: {} for arm in ("base", "hot", "few", "late")}, "seeds": list(range(10)),
            "baseline": "base", "confirmatory": family,
            "evaluation": {"samples": 2, "temperatures": [0.6, 1.0], "last_checkpoints": 2}}
    report = aggregate(spec, tmp_path, _final(0.3, 0.1), None, {"path": "/m", "sha256": "ab" * 32})
    rows = report["paired"]["comparisons"]
    assert [(row["arm"], row["metric"], row["role"]) for row in rows[:3]] == [
        ("hot", "pass@1 T=1 (mean of last 2)", "confirmatory"), ("few", "pass@1 greedy", "exploratory"),
        ("late", "pass@1 greedy", "exploratory")]
    assert rows[1]["why"] == "declared confirmatory, but 3 seed(s) < 10"
    assert rows[2]["why"].startswith("declared after runs were made: 10 run(s) do not record it (late seed 0")
    confirmed = rows[0]["comparison"]
    # Differences of the mean over the last 2 checkpoints at T=1: (2+1+1)/8 - 1/8 = 3/8 on seeds 1-9, 2/8 on seed
    # 0, halved: +0.1875 nine times and +0.125 once, all positive: p = 2 / 1024, Holm x 3 (the family's size).
    assert confirmed["mean difference"] == pytest.approx((9 * 0.1875 + 0.125) / 10)
    assert confirmed["p"] == pytest.approx(2 / 1024) and confirmed["p holm"] == pytest.approx(6 / 1024)
    bootstrap = confirmed["prompt bootstrap"]
    assert bootstrap["mean difference"] == pytest.approx(confirmed["mean difference"]) and bootstrap["prompts"] == 4
    assert bootstrap["ci95"][0] <= confirmed["mean difference"] <= bootstrap["ci95"][1]
    exploratory = [row for row in rows if row["role"] == "exploratory"]
    assert len(exploratory) == len(rows) - 1 and all("p" not in row["comparison"] for row in exploratory)
    # The undeclared rows: every arm against the baseline at each decoding, and each one's mean over checkpoints.
    assert {row["metric"] for row in rows[3:]} == {"pass@1 greedy", "pass@1 T=0.6", "pass@1 T=1",
                                                    "pass@1 greedy (mean of last 2)", "pass@1 T=0.6 (mean of last 2)",
                                                    "pass@1 T=1 (mean of last 2)"}
    assert report["arms"]["hot"]["mean of last 2 checkpoints"]["pass@1 T=1 (mean of last 2)"]["n"] == 10

    table = markdown(report)
    head = table.split("\n| arm |")[0]
    assert f"Start model weights: SHA-256 {'ab' * 32} (/m)." in head
    assert "33 run(s) record these start weights." in head
    assert ("Environment of 30 run(s): torch 2.13.0, transformers 5.19.0, trl 1.16.0, thermorl 0.1.0 (commit "
            "0123456789ab), Python 3.12.1, CPU Test CPU (2 logical), torch threads 1.") in head
    assert "Environment: not recorded by 3 run(s)" in head and "different environments" in head
    assert "Comparisons: 3 confirmatory, declared in the arms file before its runs" in head
    assert "| hot, mean of last 2 checkpoints | 10 | " in table
    assert "| 10 / 0 / 0 | 0.002 | 0.006 | [" in table and "| confirmatory |" in table
    # Greedy differs on prompt 1 only: a resample of the 4 prompts draws it j times, j ~ Binomial(4, 1/4): never with
    # probability 0.32, 3 or 4 times with 0.051, 4 times with 0.004: the 95% interval is [0, 0.75].
    assert ("| few | base | pass@1 greedy | 3 | +0.250 ± 0.000 | 3 / 0 / 0 | — | — | [+0.000, +0.750] | "
            "exploratory: declared confirmatory, but 3 seed(s) < 10 |") in table

    # The same runs reported without a declared family: the legacy table, labelled so, with a p-value on every row.
    legacy = markdown(aggregate({**{k: v for k, v in spec.items() if k != "confirmatory"}}, tmp_path,
                                _final(0.3, 0.1)))
    assert "Comparisons: legacy table." in legacy and "Start model weights: not recorded" in legacy
    # With no start record to compare with, the runs' own record is stated, not called "other weights".
    assert f"33 run(s) started from weights SHA-256 {'ab' * 32}: " in legacy and "other weights" not in legacy
    assert "| legacy |" in legacy and "| — | — |" not in legacy
