"""Shared fixtures: a tiny random model on disk, and a fast config for ThermoGRPOTrainer runs on the CPU."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The models here are tiny: a second intra-op thread buys little, and when another process holds the other core
# OpenMP's spinning threads make each forward pass ~30x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from thermorl.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def fast_grpo_kwargs(tmp_path):
    """Settings every short CPU training run in the tests shares."""
    return dict(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        learning_rate=1e-2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


def digit_share_reward(completions, **_):
    """A reward a random model already varies on: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.fixture
def varied_reward():
    return digit_share_reward
