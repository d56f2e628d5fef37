"""Runs that lose nothing: the output folder checked before a run, interrupted saves cleaned up, a full disk named,
reward functions that would train on a silent zero refused, and the CPU thread count chosen by measurement."""

import errno
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

from thermorl.errors import DiskFullError, UserError
from thermorl.run_dir import prepare_output_dir, remove_previous_run
from thermorl.trainers import RewardFunctionError, ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.atomic_checkpoint import clean_interrupted_saves, is_disk_full
from thermorl.trainers.reward_guard import RANGE, guard_reward_funcs

PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]


def run_args(output_dir, resume=None):
    return SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint=resume, process_index=0)


def make_checkpoint(folder, step, content=b"weights"):
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.frombuffer(bytearray(content), dtype=torch.uint8)}, str(path / "model.safetensors"))
    (path / "trainer_state.json").write_text("{}")
    return path


# The output folder ------------------------------------------------------------------------------------------------

def test_overwrite_removes_the_old_runs_checkpoints_and_resume_latest_finds_the_newest(tmp_path):
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200)
    resume_from, lock = prepare_output_dir(run_args(tmp_path, "latest"))
    lock.release()
    assert resume_from == str(tmp_path / "checkpoint-200")
    with pytest.raises(UserError, match=r"checkpoint-100, checkpoint-200.*overwrite_output_dir: true"):
        prepare_output_dir(run_args(tmp_path))
    assert (tmp_path / "checkpoint-200" / "model.safetensors").exists()
    (tmp_path / "model.safetensors").write_bytes(b"the old run's final model")
    resume_from, lock = prepare_output_dir(run_args(tmp_path), overwrite=True)
    lock.release()
    assert resume_from is None
    # Only checked: the old run is removed once the new one is built (train() calls remove_previous_run).
    assert (tmp_path / "checkpoint-200").exists() and (tmp_path / "model.safetensors").exists()
    remove_previous_run(tmp_path)
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "model.safetensors").exists()


def test_a_disk_full_when_the_run_starts_is_named_and_leaves_no_folder(tmp_path, monkeypatch):
    """Writing the lock's record is the first write of a run (the benchmark user_error_battery.py fills a real
    tmpfs); the folders the lock created go again."""
    from pathlib import Path

    from thermorl.run_dir import LOCK_FILE

    write_text = Path.write_text

    def full_disk(path, *args, **kwargs):
        if path.name == LOCK_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(DiskFullError, match=r"The disk holding output_dir '.*new/run' is full: nothing was written; "
                                            r"free space, then start the run"):
        prepare_output_dir(run_args(tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()


def test_interrupted_saves_are_cleaned_and_a_replaced_checkpoint_is_put_back(tmp_path):
    make_checkpoint(tmp_path, 1)
    staging = tmp_path / ".saving-checkpoint-2" / "checkpoint-2"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"half")
    # Killed between publish()'s two renames: the old checkpoint-3 moved aside, the new one not yet in place.
    make_checkpoint(tmp_path, 3, b"complete step 3")
    os.replace(tmp_path / "checkpoint-3", tmp_path / ".replaced-checkpoint-3")
    (tmp_path / ".saving-checkpoint-3" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / ".saving-model").mkdir()  # a final save killed midway
    (tmp_path / ".saving-model" / "model.safetensors").write_bytes(b"half")
    clean_interrupted_saves(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-3"]
    assert b"complete step 3" in (tmp_path / "checkpoint-3" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("max_steps", [0, -2, -5])
def test_max_steps_other_than_minus_one_for_epochs_must_be_positive(max_steps):
    from thermorl.launch_checks import check_run_length

    with pytest.raises(ValueError, match=f"max_steps must be a positive number.*got {max_steps}"):
        check_run_length(SimpleNamespace(max_steps=max_steps))
    check_run_length(SimpleNamespace(max_steps=-1))


def test_missing_local_model_path_is_named_and_hub_ids_pass(tmp_path):
    from thermorl.launch_checks import check_model_path

    for path in ("/abs/not/there", "./model", "../model", "~/nope-model", "outputs/run/checkpoint-3"):
        with pytest.raises(UserError, match="no such folder"):
            check_model_path(path)
    for ok in ("Qwen/Qwen3-0.6B", "gpt2", str(tmp_path)):
        check_model_path(ok)


@pytest.mark.parametrize("field", ["vas_alpha", "vas_beta", "vas_weighted_fraction", "vas_prior_score"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_vas_fields_must_be_finite(field, value, tmp_path):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        ThermoGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{field: value})


# A full disk during a save ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"),
     RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 11232320 vs 11232212")],
)
def test_disk_full_during_a_save_names_the_last_good_checkpoint(tiny_model_dir, varied_reward, fast_grpo_kwargs,
                                                               tmp_path, failure):
    args = ThermoGRPOConfig(**{**fast_grpo_kwargs, "save_strategy": "steps", "save_steps": 1, "max_steps": 2})
    trainer = ThermoGRPOTrainer(model=tiny_model_dir, reward_funcs=varied_reward, args=args,
                                train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}))
    save_optimizer = trainer._save_optimizer_and_scheduler

    def fails_at_step_2(output_dir):
        if trainer.state.global_step == 2:
            raise failure
        save_optimizer(output_dir)

    trainer._save_optimizer_and_scheduler = fails_at_step_2
    with pytest.raises(DiskFullError, match=r"full: checkpoint-2 could not be written.*newest complete checkpoint "
                                            r"is .*checkpoint-1"):
        trainer.train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]
    assert (run / "checkpoint-1" / "optimizer.pt").exists()


def test_disk_full_before_any_checkpoint_says_start_again_not_resume(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    args = ThermoGRPOConfig(**{**fast_grpo_kwargs, "save_strategy": "steps", "save_steps": 1, "max_steps": 1})
    trainer = ThermoGRPOTrainer(model=tiny_model_dir, reward_funcs=varied_reward, args=args,
                                train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}))

    def disk_full(output_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer._save_optimizer_and_scheduler = disk_full
    with pytest.raises(DiskFullError, match=r"full: checkpoint-1 could not be written.*no checkpoint was written "
                                            r"before it, so there is nothing to resume: free space, then start the run "
                                            r"again") as raised:
        trainer.train()
    assert "latest" not in str(raised.value)


def test_disk_full_during_the_final_save_keeps_the_previous_model(tiny_model_dir, varied_reward, fast_grpo_kwargs,
                                                                 tmp_path):
    args = ThermoGRPOConfig(**{**fast_grpo_kwargs, "save_strategy": "steps", "save_steps": 1, "max_steps": 1})
    trainer = ThermoGRPOTrainer(model=tiny_model_dir, reward_funcs=varied_reward, args=args,
                                train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}))
    from safetensors import SafetensorError

    trainer.train()
    run = tmp_path / "run"
    trainer.save_model(str(run))  # a first final model, as a finished run leaves it
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "model.safetensors" in before
    save = trainer._save

    def fills_the_disk(output_dir, state_dict=None):
        save(output_dir, state_dict)  # the files are written, then the disk fills (safetensors' own error type)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    trainer._save = fills_the_disk
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)  # the model that fails to save differs from the saved one
    with pytest.raises(DiskFullError, match=r"full: the final model could not be written \(what was there is "
                                            r"unchanged\); the newest complete checkpoint is .*checkpoint-1"):
        trainer.save_model(str(run))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / ".saving-model").exists()

    trainer._save = save  # with space again, the save replaces the files
    trainer.save_model(str(run))
    assert (run / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert not (run / ".saving-model").exists()


def test_other_save_errors_are_not_called_a_full_disk():
    from safetensors import SafetensorError

    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("CUDA error"))
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)


# Reward functions -------------------------------------------------------------------------------------------------

def call(funcs, completions=("4", "7", "x", "9")):
    completions = list(completions)
    prompts = PROMPTS[: len(completions)]
    return [f(prompts=prompts, completions=completions) for f in guard_reward_funcs(funcs)]


def returns(values):
    def reward(completions, **_):
        return values
    return reward


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([1.0, 1e308, 0.0, 0.0], r"'reward' returned 1e\+308 for example 1 \(prompt='3\+4=', completion='7'\).*at most"),
        ([1.0, 0.0, -3e19, 0.0], r"returned -3e\+19 for example 2"),
        ([1.0, float("inf"), 0.0, 0.0], r"returned inf for example 1.*finite"),
        (["1.0", "0.0", "0.0", "0.0"], r"'reward' returned '1.0' \(str\) for example 0"),
        ([1.0, [0.5], 0.0, 0.0], r"returned \[0.5\] \(list\) for example 1"),
        (0.5, r"'reward' returned float 0.5; it must return a list with one reward per completion \(4 here\)"),
        ("1.0", r"returned str '1.0'"),
        ([1.0, 0.0], r"'reward' returned 2 rewards for 4 completions"),
        ([None, None, None, None], r"'reward' returned None for example 0 .*\(4 of 4 completions\).*reward of 0"),
        ([1.0, None, 0.0, 0.0], r"returned None for example 1"),
    ],
)
def test_unusable_rewards_name_the_function_and_an_example(output, message):
    with pytest.raises(RewardFunctionError, match=message):
        call([returns(output)])


def test_usable_rewards_pass_through_unchanged():
    tensor_rewards = [torch.tensor(1.0), np.float32(0.5), np.int64(0), 2]
    assert call([returns(tensor_rewards)]) == [tensor_rewards]
    assert call([returns([RANGE, -RANGE, 0.0, 1.0])])[0][0] == RANGE
    # None from one function is fine where another gives that example a reward (multi-task reward sets).
    partial, other = returns([1.0, None, None, 0.0]), returns([None, 0.5, 0.0, None])
    assert call([partial, other]) == [[1.0, None, None, 0.0], [None, 0.5, 0.0, None]]
    with pytest.raises(RewardFunctionError, match=r"Reward functions 'reward', 'reward' returned None for example 2"):
        call([partial, returns([None, 0.5, None, 1.0])])


def test_huge_reward_stops_training_instead_of_zero_advantages(tiny_model_dir, fast_grpo_kwargs):
    def explosive(completions, **_):
        return [1e308 if i == 3 else 0.0 for i in range(len(completions))]

    args = ThermoGRPOConfig(**{**fast_grpo_kwargs, "max_steps": 1})
    trainer = ThermoGRPOTrainer(model=tiny_model_dir, reward_funcs=explosive, args=args,
                                train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(RewardFunctionError, match=r"'explosive' returned 1e\+308 for example 3"):
        trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


# CPU threads ------------------------------------------------------------------------------------------------------

def test_thread_count_is_chosen_by_timing_the_model_unless_the_user_set_one(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from thermorl import threads

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(threads, "_choice", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads.enable()
    assert threads.use_fastest(model, batch_size=4) is None  # the user's setting stands

    monkeypatch.delenv("OMP_NUM_THREADS")
    threads.enable()
    torch.set_num_threads(2)
    rng = torch.get_rng_state()
    try:
        choice = threads.use_fastest(model, batch_size=4)
        assert set(choice.seconds) == {1, 2} and all(math.isfinite(s) and s > 0 for s in choice.seconds.values())
        assert choice.threads == min(choice.seconds, key=choice.seconds.get) == torch.get_num_threads()
        assert torch.equal(torch.get_rng_state(), rng)  # the run's seeded RNG is not consumed
        assert all(p.grad is None for p in model.parameters())
        assert threads.use_fastest(model, batch_size=4) is choice  # measured once per process
    finally:
        torch.set_num_threads(1)
        monkeypatch.setattr(threads, "_enabled", False)


def test_a_warm_up_another_process_finished_first_is_kept(tmp_path, monkeypatch):
    """Two processes warming up the same tiny model (a bench's parallel runs of one seed): the second to finish
    finds the cache folder taken, keeps the first one's model and leaves no work folder behind; a failure to move
    the model for any other reason is raised."""
    from thermorl.models import cache, warmup

    settings = warmup.WarmupSettings(task="arithmetic:digits=1", examples=16, epochs=1, model_size="small")
    real_replace = os.replace

    def finished_elsewhere_first(source, destination):
        destination.mkdir()
        (destination / "config.json").write_text("{}")  # the other process's complete model
        real_replace(source, destination)  # a non-empty destination folder: OSError

    monkeypatch.setattr(cache.os, "replace", finished_elsewhere_first)
    path = warmup.warm_tiny_model(settings, cache_dir=tmp_path)
    assert (tmp_path / os.path.basename(path) / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.path.basename(path)]

    def disk_trouble(source, destination):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(cache.os, "replace", disk_trouble)
    with pytest.raises(OSError, match="I/O error"):
        warmup.warm_tiny_model(warmup.WarmupSettings(task="arithmetic:digits=1", examples=16, epochs=1,
                                                     model_size="small", seed=1), cache_dir=tmp_path)
