"""Recipes through `thermorl.train.train`: LoRA (adapter checkpoint, eval, merged export), W&B offline and
TensorBoard logging, resuming without loss, atomic checkpoints, and launch settings refused with the setting named."""

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from thermorl.cli import main as thermorl_main
from thermorl.recipe import load_recipe
from thermorl.train import train
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.atomic_checkpoint import STAGING_PREFIX

DRIVER = Path(__file__).with_name("distributed_driver.py")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(ThermoGRPOConfig)}
# EAD and VAS switched on in the logging and resume runs once ThermoGRPOConfig has their fields, with what they log.
FEATURES = {
    "ead": ({"temperature_schedule": {"type": "annealed", "tau_max": 1.2, "tau_min": 0.1, "warmup_tokens": 0,
                                      "d0": 2.0, "alpha": 0.5, "d_max": 8.0, "horizon_scale": 1.0}},
            ["ead/temperature_mean", "ead/tis_weight_mean"]),
    "vas": ({"vas_mode": "online"}, ["vas/"]),
}
PRESENT = {name: spec for name, spec in FEATURES.items() if set(spec[0]) <= CONFIG_FIELDS}
FEATURE_OVERRIDES = {key: value for settings, _ in PRESENT.values() for key, value in settings.items()}
# thermorl's own metrics every SAPO run logs: its gate, the policy entropy, the share of zero-variance groups.
CORE_METRICS = ["sapo/gate_weight_mean", "entropy", "frac_reward_zero_std"]
FEATURE_METRICS = [metric for _, metrics in PRESENT.values() for metric in metrics]


def recipe(model_dir, output_dir, **overrides) -> dict:
    return {
        "model_name_or_path": model_dir,
        "dataset": "arithmetic",
        "num_train_examples": 32,
        "num_eval_examples": 8,
        "reward_funcs": [f"{DRIVER}:digit_share_reward"],
        "policy_loss": "sapo",
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "learning_rate": 1e-2,
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }


def run(values: dict, callbacks=None):
    return train(*load_recipe(values), callbacks=callbacks)


def logits(model) -> torch.Tensor:
    ids = torch.arange(3, 15).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


def base_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


# ---- LoRA ----------------------------------------------------------------------------------------------------

LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lora") / "run"
    trainer = run(recipe(tiny_model_dir, output_dir, **LORA))
    return trainer, output_dir


def test_lora_recipe_trains_only_the_adapters(lora_run, tiny_model_dir):
    trainer, _ = lora_run
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    params = dict(trainer.model.named_parameters())
    base = {name: p for name, p in params.items() if "lora_" not in name}
    assert all(torch.equal(p, start[name.removeprefix("base_model.model.").replace(".base_layer", "")])
               for name, p in base.items())
    lora_b = [p for name, p in params.items() if "lora_B" in name]  # PEFT starts B at zero
    assert len(lora_b) == 2 * 4 and all(p.abs().sum() > 0 for p in lora_b)
    assert not any(p.requires_grad for p in base.values())


def test_lora_checkpoint_is_an_adapter_that_loads_onto_the_base(lora_run, tiny_model_dir):
    from peft import PeftModel

    trainer, output_dir = lora_run
    assert (output_dir / "adapter_config.json").is_file() and (output_dir / "adapter_model.safetensors").is_file()
    assert not (output_dir / "model.safetensors").exists()
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir), output_dir).eval()
    trainer.model.eval()
    torch.testing.assert_close(logits(reloaded), logits(trainer.model))
    assert not torch.allclose(logits(reloaded), logits(base_model(tiny_model_dir)))


def test_export_merges_the_adapter_and_eval_reads_both(lora_run, tiny_model_dir, tmp_path):
    from peft import PeftModel

    _, output_dir = lora_run
    merged_dir = tmp_path / "merged"
    assert thermorl_main(["export", "--checkpoint", str(output_dir), "--out", str(merged_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists()
    assert (merged_dir / "thermorl.log").is_file()  # the libraries' records of the merge, not the console
    merged = base_model(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with_adapter = PeftModel.from_pretrained(base_model(tiny_model_dir), output_dir).eval()
    torch.testing.assert_close(logits(merged), logits(with_adapter), atol=1e-5, rtol=1e-5)

    # `thermorl eval` on the adapter folder samples exactly what it samples from the merged model.
    samples = {}
    for name, model in (("adapter", output_dir), ("merged", merged_dir)):
        argv = ["eval", "--model", str(model), "--task", "arithmetic", "--temperatures", "0.0,1.0", "--samples", "2",
                "--num-questions", "4", "--max-new-tokens", "4", "--out", str(tmp_path / name), "--no-progress"]
        assert thermorl_main(argv) == 0
        samples[name] = (tmp_path / name / "samples.jsonl").read_text()
    assert samples["adapter"] == samples["merged"] and len(samples["adapter"].splitlines()) == 4 * 2 * 2


def test_export_never_writes_over_the_base_model_or_another_model(lora_run, tiny_model_dir, tmp_path, capsys):
    import hashlib

    _, output_dir = lora_run
    weights = Path(tiny_model_dir) / "model.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert thermorl_main(["export", "--checkpoint", str(output_dir), "--out", str(tiny_model_dir)]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "would overwrite the model it starts from" in err
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_bytes(b"another model")
    assert thermorl_main(["export", "--checkpoint", str(output_dir), "--out", str(taken)]) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert (taken / "model.safetensors").read_bytes() == b"another model"


def test_export_refuses_a_full_model_checkpoint(tiny_model_dir, tmp_path, capsys):
    assert thermorl_main(["export", "--checkpoint", tiny_model_dir, "--out", str(tmp_path / "out")]) == 2
    assert "has no adapter_config.json: not a LoRA/PEFT checkpoint" in capsys.readouterr().err


# ---- W&B and TensorBoard --------------------------------------------------------------------------------------

WANDB_BLOCK, WANDB_HEADER = 32768, 7  # the .wandb file: LevelDB-style log of 32 KiB blocks, 7-byte record headers


def wandb_records(run_file: Path) -> list:
    """The protobuf `Record`s of a W&B run file."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, pos = [], b"", WANDB_HEADER
    while pos + WANDB_HEADER <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < WANDB_HEADER:  # block trailer too short for a header: padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + WANDB_HEADER : pos + WANDB_HEADER + length]
        pos += WANDB_HEADER + length
        if kind in (1, 4):  # FULL or LAST fragment: a whole record
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_history(run_dir: Path, timeout: float = 60.0) -> list[dict]:
    """The history rows of a finished offline run. W&B's service may still be writing the file when
    `wandb.finish()` returns, so this waits for the run's closing `exit` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(next(run_dir.glob("*.wandb")))
        if any(record.HasField("exit") for record in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records if record.HasField("history")]


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """No API key anywhere; W&B's files under tmp_path. Variables thermorl sets are restored afterwards."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-files"))
    (tmp_path / "wandb-files").mkdir()
    return tmp_path / "wandb-files"


def test_wandb_goes_offline_without_a_key_and_gets_thermorl_metrics(
    no_wandb_key, tiny_model_dir, tmp_path, capsys
):
    import wandb

    values = recipe(tiny_model_dir, tmp_path / "run", report_to=["wandb"], project="thermorl-tests",
                    **FEATURE_OVERRIDES)
    try:
        run(values)
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_PROJECT"] == "thermorl-tests"
        run_dir = Path(wandb.run.settings.sync_dir)
    finally:
        wandb.finish()
    out = capsys.readouterr().out
    assert "no API key" in out and f"upload it with: wandb sync {run_dir}" in out
    assert run_dir.parent == no_wandb_key / "wandb" and run_dir.name.startswith("offline-run-")

    rows = [row for row in wandb_history(run_dir) if "train/loss" in row]
    assert [row["train/global_step"] for row in rows] == [1, 2]
    for metric in CORE_METRICS + FEATURE_METRICS:
        assert all(any(key.startswith(f"train/{metric}") for key in row) for row in rows), metric
    assert all(math.isfinite(row["train/sapo/gate_weight_mean"]) for row in rows)


def test_wandb_stays_online_with_a_key_and_respects_wandb_mode(no_wandb_key, tmp_path, monkeypatch):
    from thermorl.tracking import prepare_reporting, wandb_api_key_available

    args = ThermoGRPOConfig(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, report_to=["wandb"])
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_api_key_available() and prepare_reporting(args) == [] and "WANDB_MODE" not in os.environ
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not wandb_api_key_available()
    assert prepare_reporting(args) == [] and os.environ["WANDB_MODE"] == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert len(prepare_reporting(args)) == 1 and os.environ["WANDB_MODE"] == "offline"


def test_tensorboard_gets_thermorl_metrics(tiny_model_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    run(recipe(tiny_model_dir, tmp_path / "run", report_to=["tensorboard"], **FEATURE_OVERRIDES))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for metric in CORE_METRICS + FEATURE_METRICS:
        assert any(tag.startswith(f"train/{metric}") for tag in tags), metric
    assert [event.step for event in events.Scalars("train/sapo/gate_weight_mean")] == [1, 2]


# ---- resume ---------------------------------------------------------------------------------------------------


class StopAtStep(TrainerCallback):
    """Ends training after optimizer step `step` (its checkpoint saved), as a job killed right after would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.fixture
def trained_prompts(monkeypatch):
    """The prompts every generation step of a run scored, in order."""
    seen: list[list[str]] = []
    original = ThermoGRPOTrainer._calculate_rewards

    def recording(self, inputs, prompts, completions, completion_ids_list):
        seen.append(list(prompts))
        return original(self, inputs, prompts, completions, completion_ids_list)

    monkeypatch.setattr(ThermoGRPOTrainer, "_calculate_rewards", recording)
    return seen


def assert_same_state(mine, theirs, path="state"):
    """Nested dicts / lists / tensors / numbers equal (floats to 1e-6; NaN marks unscored VAS prompts)."""
    if isinstance(mine, torch.Tensor):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5, equal_nan=True, msg=path)
    elif isinstance(mine, dict):
        assert mine.keys() == theirs.keys(), path
        for key in mine:
            assert_same_state(mine[key], theirs[key], f"{path}.{key}")
    elif isinstance(mine, list | tuple):
        assert len(mine) == len(theirs), path
        for i, (a, b) in enumerate(zip(mine, theirs)):
            assert_same_state(a, b, f"{path}[{i}]")
    elif isinstance(mine, float):
        assert math.isclose(mine, theirs, rel_tol=1e-5, abs_tol=1e-6), path
    else:
        assert mine == theirs, path


def step_logs(trainer) -> dict[int, dict]:
    """Logged values per step, without wall-clock ones."""
    return {entry["step"]: {k: v for k, v in entry.items() if "time" not in k and "per_second" not in k}
            for entry in trainer.state.log_history if "loss" in entry}


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_model_dir, tmp_path, trained_prompts):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, **FEATURE_OVERRIDES)
    whole = run(recipe(tiny_model_dir, tmp_path / "whole", **settings))
    whole_prompts = list(trained_prompts)

    trained_prompts.clear()
    run(recipe(tiny_model_dir, tmp_path / "cut", **settings), callbacks=[StopAtStep(2)])
    assert get_last_checkpoint(str(tmp_path / "cut")).endswith("checkpoint-2")
    trained_prompts.clear()
    resumed = run(recipe(tiny_model_dir, tmp_path / "cut", resume_from_checkpoint="latest", **settings))

    assert resumed.state.global_step == 4 and len(trained_prompts) == 2
    assert trained_prompts == whole_prompts[2:]  # the sampler carries on where the cut run stopped
    logs_whole, logs_resumed = step_logs(whole), step_logs(resumed)
    assert_same_state({s: logs_resumed[s] for s in (3, 4)}, {s: logs_whole[s] for s in (3, 4)}, "logs")
    for (name, mine), theirs in zip(resumed.model.named_parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5, msg=name)
    assert_same_state(resumed.optimizer.state_dict(), whole.optimizer.state_dict(), "optimizer")
    if whole.prompts.sampler is not None:
        assert_same_state(resumed.prompts.sampler.state_dict(), whole.prompts.sampler.state_dict(), "vas_sampler")


# ---- atomic checkpoints ---------------------------------------------------------------------------------------


def make_trainer(trainer_class, model_dir, output_dir, **overrides):
    from datasets import Dataset

    from thermorl.tasks.rewards import load_callable

    values = recipe(model_dir, output_dir, save_strategy="steps", save_steps=1, **overrides)
    args = ThermoGRPOConfig(**{k: v for k, v in values.items() if k in CONFIG_FIELDS})
    prompts = Dataset.from_dict({"prompt": ["12+7=", "3-9=", "40+2=", "5+5="] * 4})
    reward = load_callable(values["reward_funcs"][0])
    return trainer_class(model=model_dir, reward_funcs=reward, args=args, train_dataset=prompts)


def crash_while_saving_step(trainer, step: int):
    """Make the save of `step` die after the weights and optimizer are written, before RNG and trainer state."""
    real = trainer._save_rng_state

    def dying(output_dir):
        if trainer.state.global_step == step:
            raise KeyboardInterrupt("killed mid-save")
        real(output_dir)

    trainer._save_rng_state = dying


def test_a_crash_mid_save_leaves_the_last_complete_checkpoint_in_charge(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "run"
    trainer = make_trainer(ThermoGRPOTrainer, tiny_model_dir, output_dir)
    crash_while_saving_step(trainer, 2)
    with pytest.raises(KeyboardInterrupt, match="killed mid-save"):
        trainer.train()
    partial = output_dir / f"{STAGING_PREFIX}checkpoint-2" / "checkpoint-2"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert not (output_dir / "checkpoint-2").exists()
    last = get_last_checkpoint(str(output_dir))
    assert last == str(output_dir / "checkpoint-1")
    AutoModelForCausalLM.from_pretrained(last)

    again = make_trainer(ThermoGRPOTrainer, tiny_model_dir, output_dir)
    again.train(resume_from_checkpoint=last)
    assert again.state.global_step == 2
    assert json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "checkpoint-2"]


def test_without_the_mixin_the_same_crash_leaves_a_partial_checkpoint_that_resume_would_pick(tiny_model_dir, tmp_path):
    """Why AtomicCheckpoints exists: transformers writes checkpoint-N in place."""
    from trl import GRPOTrainer

    output_dir = tmp_path / "run"
    trainer = make_trainer(GRPOTrainer, tiny_model_dir, output_dir)
    crash_while_saving_step(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert get_last_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-2")
    assert not (output_dir / "checkpoint-2" / "trainer_state.json").exists()


def test_atomic_save_keeps_rotation_and_the_best_checkpoint(tiny_model_dir, tmp_path):
    class BestAtStep2(TrainerCallback):  # stands in for an evaluation that found step 2 best
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                state.best_global_step = 2

    output_dir = tmp_path / "run"
    trainer = make_trainer(ThermoGRPOTrainer, tiny_model_dir, output_dir, max_steps=4, save_total_limit=2)
    trainer.add_callback(BestAtStep2())
    trainer.train()
    best = str(output_dir / "checkpoint-2")
    assert trainer.state.best_model_checkpoint == best
    # Rotation down to two checkpoints keeps the newest and the best, and leaves no staging folders behind.
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]
    saved = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["global_step"] == 2 and saved["best_model_checkpoint"] == best


def test_publishing_over_a_checkpoint_of_the_same_step_replaces_it(tmp_path):
    from thermorl.trainers.atomic_checkpoint import publish

    written, final = tmp_path / ".saving-checkpoint-3" / "checkpoint-3", tmp_path / "checkpoint-3"
    written.mkdir(parents=True)
    final.mkdir()
    (written / "new.txt").write_text("new")
    (final / "old.txt").write_text("old")
    publish(str(written), str(final))
    assert [p.name for p in final.iterdir()] == ["new.txt"] and not written.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".saving-checkpoint-3", "checkpoint-3"]
