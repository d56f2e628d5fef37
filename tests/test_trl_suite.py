"""scripts/trl_suite.py, the harness that runs TRL's own GRPOTrainer tests against ThermoGRPOTrainer: its offline
stand-ins load as the hub ones do, the copy swaps the trainer and the hub names, and a test that passes on plain
TRL and fails with thermorl is reported (exit 1) unless it is a known exception."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("trl_suite", ROOT / "scripts" / "trl_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dataset_stand_in_loads_like_the_hub_one(suite, tmp_path):
    from datasets import load_dataset

    folder = str(suite.write_dataset(tmp_path / "zen"))
    standard = load_dataset(folder, "standard_prompt_only", split="train")
    assert standard[0] == {"prompt": suite.STANDARD_PROMPTS[0]} and len(standard) == len(suite.STANDARD_PROMPTS)
    conversational = load_dataset(folder, "conversational_prompt_only", split="test")
    assert conversational[1]["prompt"] == [{"role": "user", "content": suite.TEST_PROMPTS[1]}]
    with pytest.raises(ValueError, match="Config name is missing"):
        load_dataset(folder)  # no default config, as on the hub


def test_the_model_stand_ins_load_as_a_chat_model_and_a_one_label_reward_model(suite, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    folders = suite.write_models(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folders["reward"])
    reward = AutoModelForSequenceClassification.from_pretrained(folders["reward"])
    scores = reward(**tokenizer(["a b", "c d e"], return_tensors="pt", padding=True)).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    chat = AutoTokenizer.from_pretrained(folders["causal"])
    assert chat.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")
    assert AutoModelForCausalLM.from_pretrained(folders["causal"]).config.vocab_size == len(chat)


TRL_LIKE_TESTS = '''
from trl import GRPOConfig, GRPOTrainer

MODEL = "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"


class TestGRPOTrainer:
    def test_names_a_local_model(self):
        assert MODEL.startswith("/")

    def test_is_plain_trl(self):
        assert GRPOTrainer.__name__ == "GRPOTrainer"

    def test_known(self):
        assert GRPOConfig.__name__ == "GRPOConfig"
'''


def test_a_test_that_only_plain_trl_passes_is_reported_unless_known(suite, tmp_path, monkeypatch, capsys):
    tests = tmp_path / "trl-tests"
    tests.mkdir()
    (tests / "__init__.py").touch()
    (tests / "test_grpo_trainer.py").write_text(TRL_LIKE_TESTS)
    monkeypatch.setattr(suite, "KNOWN_EXCEPTIONS", {"TestGRPOTrainer::test_known": "the config is thermorl's"})
    assert suite.main([str(tests), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "3 of 3 tests pass on plain TRL; with thermorl 2 of them do not" in out
    assert "TestGRPOTrainer::test_is_plain_trl: failed" in out
    assert "TestGRPOTrainer::test_known: failed" in out and "[known: the config is thermorl's]" in out
    copy = (tmp_path / "out" / "thermorl" / "tests" / "test_grpo_trainer.py").read_text()
    assert "ThermoGRPOTrainer as GRPOTrainer" in copy and "trl-internal-testing" not in copy

    monkeypatch.setattr(suite, "KNOWN_EXCEPTIONS", {"TestGRPOTrainer::test_known": "x",
                                                    "TestGRPOTrainer::test_is_plain_trl": "y"})
    assert suite.main([str(tests), "--out", str(tmp_path / "out")]) == 0


def test_a_folder_without_trls_tests_is_one_line_and_exit_2(suite, tmp_path, capsys):
    assert suite.main([str(tmp_path)]) == 2
    assert "test_grpo_trainer.py not found" in capsys.readouterr().err
