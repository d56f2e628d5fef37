"""Multi-temperature evaluation: metrics, early-exit voting, per-row temperature sampling, CLI end to end."""

import itertools
import json
import re

import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForCausalLM

from thermorl.errors import UserError
from thermorl.eval_command import eval_command
from thermorl.evaluation import (
    MultiTemperatureEvalCallback,
    RecordedAnswers,
    Verifier,
    best_single_temperature,
    evaluate,
    load_policy,
    maj_at_k,
    majority_vote,
    multi_temperature_vote,
    parse_temperatures,
    pass_at_all,
    pass_at_k,
    vote,
)
from thermorl.evaluation.metrics import spread_pass_at_budget
from thermorl.evaluation.sampling import plan_calls, sample_completions
from thermorl.models.tiny import build_char_tokenizer, build_tiny_model

# ---------------------------------------------------------------- metrics


def brute_force_pass_at_k(n, c, k):
    """Fraction of the k-subsets of n samples (c of them correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration_of_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n_and_rejects_bad_counts():
    # C(1000, 500) overflows a float; the product form does not: 1 - (1 - 1/1000) ... = c/n at k=1.
    assert pass_at_k(1000, 3, 1) == pytest.approx(0.003)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_ignores_none_but_counts_it_in_the_share():
    assert majority_vote(["7", None, "7", "3"]) == ("7", 0.5)
    assert majority_vote([None, None, "3"]) == ("3", pytest.approx(1 / 3))
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote(["2", "5", "5", "2"]) == ("2", 0.5)  # tie: first seen


def test_maj_at_k_on_a_hand_made_table():
    answers = ["3", "7", "7", "7", "3"]
    correct = [True, False, False, False, True]
    assert maj_at_k(answers, correct, 1) is True  # "3"
    assert maj_at_k(answers, correct, 2) is True  # tie "3"/"7", first seen "3"
    assert maj_at_k(answers, correct, 3) is False  # "7" twice
    assert maj_at_k(answers, correct, 5) is False  # "7" three times
    assert maj_at_k([None, None, "3"], [False, False, True], 3) is True
    assert maj_at_k([None, None], [False, False], 2) is False


def test_pass_at_all_and_best_single_temperature_on_a_hand_made_table():
    # [question][temperature][sample], 2 temperatures x 2 samples.
    table = [
        [[False, False], [True, False]],  # solved only at the second temperature
        [[True, True], [False, False]],  # solved only at the first
        [[False, False], [False, False]],  # never
    ]
    assert pass_at_all(table) == pytest.approx(2 / 3)
    # k = 1: question 0 solved w.p. 1/2, question 1 w.p. 1, question 2 never.
    assert pass_at_all(table, k=1) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # Per temperature pass@1: (0 + 1 + 0)/3 and (0.5 + 0 + 0)/3; pass@2: 1/3 and 1/3 (first wins the tie).
    assert best_single_temperature(table, [0.2, 0.8], 1) == (0.2, pytest.approx(1 / 3))
    assert best_single_temperature(table, [0.2, 0.8], 2) == (0.2, pytest.approx(1 / 3))
    assert best_single_temperature(table, [0.2, 0.8], 3) is None  # beyond the samples drawn


def brute_force_spread(table, budget):
    """Average over every way to give budget % T temperatures one extra sample, by enumeration."""
    num_temperatures = len(table[0])
    base, extra = divmod(budget, num_temperatures)
    solved = 0.0
    for question in table:
        outcomes = []
        for lucky in itertools.combinations(range(num_temperatures), extra):
            fail = 1.0
            for t, samples in enumerate(question):
                k = base + (t in lucky)
                if k:
                    fail *= 1 - brute_force_pass_at_k(len(samples), sum(samples), k)
            outcomes.append(1 - fail)
        solved += sum(outcomes) / len(outcomes)
    return solved / len(table)


def test_spread_budget_matches_enumeration():
    generator = torch.Generator().manual_seed(0)
    table = (torch.rand(5, 3, 4, generator=generator) < 0.3).tolist()  # 5 questions, 3 temperatures, 4 samples
    for budget in range(1, 13):
        assert spread_pass_at_budget(table, budget) == pytest.approx(brute_force_spread(table, budget), abs=1e-12)
    assert spread_pass_at_budget(table, 12) == pytest.approx(pass_at_all(table))
    with pytest.raises(ValueError, match="cannot be spread"):
        spread_pass_at_budget(table, 13)


# ---------------------------------------------------------------- early-exit voting


def stream_from(rounds):
    """A synthetic stream: rounds[r][question][temperature] is the list of answers drawn in round r."""
    calls = []

    def draw(questions, count):
        r = len(calls)
        calls.append((list(questions), count))
        return [rounds[r][q] for q in questions]

    return draw, calls


def test_vote_exits_at_the_first_round_where_all_temperatures_are_confident_and_agree():
    rounds = [
        [[["5", "5"], ["5", "4"]]],  # T2 at 1/2: not confident
        [[["5", "5"], ["5", "5"]]],  # T2 at 3/4 < 0.8: still not
        [[["5", "5"], ["5", "5"]]],  # T2 at 5/6 >= 0.8, T1 at 6/6, both "5": exit here
        [[["9", "9"], ["9", "9"]]],
    ]
    draw, calls = stream_from(rounds)
    (result,) = multi_temperature_vote(draw, 1, 2, max_samples=8, samples_per_round=2, threshold=0.8)
    assert result.answer == "5" and result.exited_early
    assert result.samples_used == 3 * 2 * 2 and result.budget == 16
    assert len(calls) == 3


def test_vote_never_exits_on_disagreeing_or_unconfident_temperatures_and_spends_the_budget():
    rounds = [
        [
            [["5", "5"], ["6", "6"]],  # question 0: both confident, disagree
            [["5", "5"], ["5", None]],  # question 1: second temperature at 1/2 (None dilutes)
            [["8", "8"], ["8", "8"]],  # question 2: exits in round 1
        ],
        [[["5", "5"], ["6", "6"]], [["5", "5"], [None, None]]],
    ]
    draw, calls = stream_from([[rounds[0][q] for q in range(3)], rounds[1]])
    results = multi_temperature_vote(draw, 3, 2, max_samples=4, samples_per_round=2, threshold=0.8)
    assert [call[0] for call in calls] == [[0, 1, 2], [0, 1]]  # question 2 left after round 1
    assert results[2].answer == "8" and results[2].exited_early and results[2].samples_used == 4
    for result in results[:2]:
        assert not result.exited_early and result.samples_used == result.budget == 8
    assert results[0].answer == "5"  # overall majority: 4 x "5" vs 4 x "6", "5" seen first
    assert results[1].answer == "5"


def test_recorded_answers_replay_matches_the_rule_on_a_full_table():
    table = [[["1", "1", "1", "1"], ["1", "1", "2", "1"]], [["4", "3", "4", "3"], ["3", "3", "3", "3"]]]
    results = multi_temperature_vote(RecordedAnswers(table), 2, 2, max_samples=4, samples_per_round=1)
    # Question 0: round 1 both "1" at share 1 -> exit after 1 sample per temperature.
    assert (results[0].answer, results[0].samples_used, results[0].exited_early) == ("1", 2, True)
    # Question 1: round 1 disagrees ("4" vs "3"), then the first temperature alternates below 0.8:
    # the full budget is spent and the overall majority ("3", 6 of 8) wins.
    assert (results[1].answer, results[1].samples_used, results[1].exited_early) == ("3", 8, False)


def test_vote_rejects_a_stream_of_the_wrong_shape():
    with pytest.raises(ValueError, match="wrong shape"):
        multi_temperature_vote(lambda questions, count: [[["1"]] for _ in questions], 1, 2, 2, 1)


# ---------------------------------------------------------------- per-row temperatures, fixed logits

TOKENIZER = build_char_tokenizer()
LETTERS = "abcd"
BASE_PROBS = torch.tensor([0.5, 0.25, 0.15, 0.10])


def fixed_logit_model():
    """Qwen2 whose logits are the same vector at every position: zero final norm, lm_head = bias only."""
    config = Qwen2Config(
        vocab_size=len(TOKENIZER), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=TOKENIZER.pad_token_id, eos_token_id=TOKENIZER.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.model.norm.weight.data.zero_()
    logits = torch.full((len(TOKENIZER),), -1e4)  # EOS included: every completion runs to max_new_tokens
    logits[TOKENIZER.convert_tokens_to_ids(list(LETTERS))] = BASE_PROBS.log()
    model.lm_head = torch.nn.Linear(16, len(TOKENIZER), bias=True)
    model.lm_head.weight.data.zero_()
    model.lm_head.bias.data.copy_(logits)
    model.generation_config.pad_token_id = TOKENIZER.pad_token_id
    model.generation_config.eos_token_id = TOKENIZER.eos_token_id
    return model.eval()


def chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_every_temperature_in_one_call_and_greedy_decoded_once():
    calls = plan_calls(num_questions=2, temperatures=[0.0, 0.5, 1.0], samples=3, batch_size=100)
    assert len(calls) == 1
    rows = calls[0]
    assert sorted({t for _, t, _ in rows}) == [0, 1, 2]
    assert sum(1 for _, t, _ in rows if t == 0) == 2  # one greedy row per question
    assert len(rows) == 2 * (1 + 2 * 3)
    # A small batch still keeps every temperature of a sample together.
    for call in plan_calls(2, [0.0, 0.5, 1.0], 3, batch_size=4):
        assert {t for _, t, _ in call} >= {1, 2}


def test_each_row_samples_at_its_own_temperature():
    model = fixed_logit_model()
    temperatures = [0.0, 0.5, 1.0, 2.0]
    completions = sample_completions(
        model, TOKENIZER, ["x"], temperatures, samples=300, max_new_tokens=3, batch_size=10_000, progress=False, seed=0
    )
    critical_3_dof = 16.27  # chi-square 99.9% quantile, 3 degrees of freedom
    assert all(text == "aaa" for text in completions[0][0])  # greedy: argmax every time
    for t, temperature in enumerate(temperatures[1:], start=1):
        letters = "".join(completions[0][t])
        assert set(letters) <= set(LETTERS) and len(letters) == 900
        counts = torch.tensor([letters.count(letter) for letter in LETTERS], dtype=torch.float64)
        expected = BASE_PROBS.double() ** (1 / temperature)
        expected /= expected.sum()
        assert chi_square(counts, expected) < critical_3_dof, temperature
        # and the samples are distinguishable from the base (T=1) distribution when T != 1
        if temperature != 1.0:
            assert chi_square(counts, BASE_PROBS.double()) > 2 * critical_3_dof
    again = sample_completions(
        model, TOKENIZER, ["x"], temperatures, samples=300, max_new_tokens=3, batch_size=10_000, progress=False, seed=0
    )
    assert again == completions  # deterministic with a seed


class FirstLetterIsA(Verifier):
    """Correct iff the completion starts with "a"; the vote is over the first letter."""

    def correct(self, completions, row):
        return [text.startswith(row["answer"]) for text in completions]

    def extract_answer(self, completion):
        return completion[:1] or None


def test_evaluate_on_fixed_logits_gives_the_known_accuracies():
    model = fixed_logit_model()
    dataset = Dataset.from_list([{"prompt": p, "answer": "a"} for p in ["x", "y", "z"]])
    report = evaluate(
        model, TOKENIZER, dataset, FirstLetterIsA(), [0.0, 1.0], samples=64, max_new_tokens=1, progress=False
    )
    greedy, hot = report["per_temperature"]
    assert greedy["accuracy"] == 1.0 and greedy["maj_at_k"]["64"] == 1.0
    assert hot["accuracy"] == pytest.approx(0.5, abs=0.1)  # p("a") = 0.5 at T = 1
    assert hot["pass_at_k"]["4"] == pytest.approx(1 - 0.5**4, abs=0.05)
    assert report["pass_at_all"] == 1.0
    # One sample spread over {greedy, T=1}: half the time greedy (always right), else one T=1 draw.
    assert report["equal_budget_curve"][0]["spread_over_temperatures"] == pytest.approx(0.5 + 0.5 * hot["accuracy"])
    assert report["equal_budget_curve"][0]["best_single_temperature"] == 0.0
    # T=1 holds "a" at ~50% < 0.8: no question can exit, the vote spends the full budget.
    assert report["voting"]["samples_used_fraction"] == 1.0 and report["voting"]["accuracy"] == 1.0


def test_live_vote_exits_after_one_round_when_every_temperature_agrees():
    model = fixed_logit_model()
    dataset = [{"prompt": "x", "answer": "a"}, {"prompt": "y", "answer": "a"}]
    outcome = vote(
        model, TOKENIZER, dataset, FirstLetterIsA(), [0.0, 0.05], max_samples=8, round_size=2, max_new_tokens=1
    )
    assert outcome["accuracy"] == 1.0
    assert outcome["mean_samples_used"] == 2 * 2 and outcome["budget_per_question"] == 16
    assert all(item["vote"].exited_early for item in outcome["results"])


# ---------------------------------------------------------------- end to end on the tiny model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_eval_command_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    import logging

    from thermorl import console

    console.configure()  # as the thermorl command does: library records go to the log file, not the console
    # As in a fresh `thermorl eval` process: no earlier run's log file is the records' target yet.
    monkeypatch.setattr(console._file_records, "target", None)
    logging.getLogger("transformers.generation").warning("a library warning before --out exists")
    out = tmp_path / "eval"
    argv = ["--model", tiny_model_dir, "--task", "arithmetic", "--temperatures", "0.0,0.7,1.0", "--samples", "4",
            "--num-questions", "6", "--max-new-tokens", "4", "--out", str(out), "--vote-round-size", "2",
            "--no-progress"]
    assert eval_command(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_questions"] == 6 and report["temperatures"] == [0.0, 0.7, 1.0]
    fractions = [report["pass_at_all"], report["voting"]["accuracy"], report["voting"]["samples_used_fraction"]]
    for row in report["per_temperature"]:
        assert list(row["pass_at_k"]) == ["1", "2", "4"]
        fractions += [row["accuracy"], *row["pass_at_k"].values(), *row["maj_at_k"].values()]
    fractions += [point["pass_at_all"] for point in report["pass_at_all_curve"]]
    for point in report["equal_budget_curve"]:
        fractions += [point["spread_over_temperatures"], point["best_single_pass_at_k"]]
    assert [point["total_samples"] for point in report["equal_budget_curve"]] == [1, 2, 4]
    assert all(0.0 <= value <= 1.0 for value in fractions)
    assert 0 < report["voting"]["mean_samples_used"] <= report["voting"]["budget_per_question"] == 12
    lines = (out / "questions.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("question,prompt,reference")
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6 * 3 * 4
    for name in ("pass_at_k.png", "equal_budget.png", "accuracy_vs_temperature.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a library warning before --out exists" in (out / "thermorl.log").read_text()


def test_load_policy_finds_the_latest_checkpoint_and_its_run_tokenizer(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    build_tiny_model(run / "checkpoint-2", seed=1)
    build_tiny_model(run / "checkpoint-10", seed=2)
    for checkpoint in ("checkpoint-2", "checkpoint-10"):
        for file in (run / checkpoint).glob("tokenizer*"):
            file.unlink()
    build_char_tokenizer().save_pretrained(run)
    model, tokenizer = load_policy(str(run))
    expected, _ = load_policy(str(run / "checkpoint-10"))
    assert torch.equal(model.model.embed_tokens.weight, expected.model.embed_tokens.weight)
    other, _ = load_policy(str(run / "checkpoint-2"))
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert tokenizer("12+3=")["input_ids"] == build_char_tokenizer()("12+3=")["input_ids"]


def test_load_policy_merges_a_lora_adapter_onto_its_base(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = load_policy(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        merged, tokenizer = load_policy(str(tmp_path / "adapter"))
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)
        plain, _ = load_policy(tiny_model_dir)
        assert not torch.allclose(plain(ids).logits, expected, atol=1e-4)
    assert tokenizer.pad_token == "<pad>"


# ---------------------------------------------------------------- training callback


def test_callback_logs_through_the_trainer_every_n_steps(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = fixed_logit_model()
    train = Dataset.from_list([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}] * 8)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=0.0, report_to=[],
        logging_steps=2, save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=TOKENIZER)
    eval_rows = Dataset.from_list([{"prompt": "x", "answer": "a"}])
    callback = MultiTemperatureEvalCallback(
        trainer, eval_rows, FirstLetterIsA(), temperatures=[0.0, 1.0], samples=4, every_n_steps=2, max_new_tokens=1
    )
    trainer.add_callback(callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval_multitemp/pass_at_all" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    # The trainer's own logs at those steps still happen.
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [2, 4]
    for entry in logged:
        assert entry["eval_multitemp/accuracy_t0"] == 1.0  # greedy picks "a"
        assert 0.0 <= entry["eval_multitemp/accuracy_t1"] <= 1.0
        assert entry["eval_multitemp/pass_at_all"] == 1.0
    # The evaluation restores train mode and leaves the training RNG where it was.
    model.train()
    rng_state = torch.random.get_rng_state()
    callback.on_step_end(args, trainer.state, trainer.control, model=model, processing_class=TOKENIZER)
    assert model.training and torch.equal(torch.random.get_rng_state(), rng_state)


# ---------------------------------------------------------------- bad input, rejected before sampling


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty"),
        ("0.2,-0.1", ">= 0"),
        ("0.2,abc", "'abc' is not a number"),
        ("0:1", "start:stop:step"),
        ("0:1:0", "step > 0"),
        ("1:0:0.1", "stop 0.0 < start 1.0"),
        ("0.5,0.5", "more than once"),
    ],
)
def test_bad_temperature_grids_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_temperatures(spec)


def test_temperature_range_includes_its_stop():
    assert parse_temperatures("0.0:1.2:0.1") == [round(0.1 * i, 1) for i in range(13)]
    assert parse_temperatures("0.2, 0.6,1") == [0.2, 0.6, 1.0]


class NoSampling:
    """A model stand-in that fails the test if anything tries to generate with it."""

    def __getattr__(self, name):
        raise AssertionError(f"sampling started ({name}) before the input was checked")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperatures": []}, "temperature grid is empty"),
        ({"temperatures": [0.5, -1.0]}, ">= 0"),
        ({"samples": 0}, "samples must be an integer >= 1"),
        ({"dataset": [{"prompt": "1+1="}]}, "no \\['answer'\\] column"),
        ({"dataset": []}, "dataset is empty"),
    ],
)
def test_evaluate_rejects_bad_input_before_sampling(kwargs, message):
    arguments = {"dataset": [{"prompt": "1+1=", "answer": "2"}], "temperatures": [0.0, 1.0], "samples": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate(NoSampling(), TOKENIZER, arguments.pop("dataset"), None, **arguments)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperatures", "0.1,x"], "'x' is not a number"),
        (["--temperatures", "-0.5"], ">= 0"),
        (["--samples", "0"], "samples must be an integer >= 1, got 0"),
        (["--vote-threshold", "1.5"], "vote_threshold must be in (0, 1]"),
        (["--model", "./no/such/model"], "model path does not exist: ./no/such/model"),
    ],
)
def test_eval_command_rejects_bad_input(extra, message, tiny_model_dir, tmp_path):
    argv = ["--model", tiny_model_dir, "--task", "arithmetic", "--out", str(tmp_path / "out"), *extra]
    with pytest.raises(UserError, match=re.escape(message)):  # the `thermorl` command: one line, exit code 2
        eval_command(argv)
    assert not (tmp_path / "out").exists()


def test_eval_command_rejects_a_dataset_without_answers(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1="}) + "\n" for i in range(3)))
    with pytest.raises(UserError, match=re.escape("no ['answer'] column")):
        eval_command(["--model", tiny_model_dir, "--task", str(data), "--out", str(tmp_path / "out")])


def test_load_policy_does_not_try_the_hub_for_missing_local_paths(tmp_path):
    for path in ("./missing-model", str(tmp_path / "nope"), "~/missing/model/dir", "outputs/run/checkpoint-5"):
        with pytest.raises(UserError, match="model path does not exist"):
            load_policy(path)
