"""ThermoGRPOTrainer: the registry loss inside TRL's trainer, TRL's features kept, bad input stopped loudly."""

import math

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from thermorl.trainers import RewardFunctionError, ThermoGRPOConfig, ThermoGRPOTrainer

PROMPTS = ["12+7=", "3-9=", "40+2=", "5+5="]


def prompt_dataset(prompts=PROMPTS, n=16):
    return Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(n)]})


def make_trainer(model_dir, reward, fast_grpo_kwargs, prompts=PROMPTS, **config):
    args = ThermoGRPOConfig(**{**fast_grpo_kwargs, **config})
    return ThermoGRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=prompt_dataset(prompts))


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def changed(before, model):
    return [name for name, p in model.named_parameters() if name in before and not torch.equal(before[name], p)]


@pytest.mark.parametrize("loss", ["sapo", "grpo", "gspo", "gspo_token", "adpo"])
def test_each_loss_trains_and_logs(loss, tiny_model_dir, varied_reward, fast_grpo_kwargs):
    extra = {"steps_per_generation": 1} if loss == "adpo" else {}
    trainer = make_trainer(tiny_model_dir, varied_reward, fast_grpo_kwargs, policy_loss=loss, max_steps=2, **extra)
    before = snapshot(trainer.model)
    trainer.train()
    assert changed(before, trainer.model), "no weight moved"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    assert all(entry["reward_std"] > 0 for entry in logs)
    expected = {"sapo": "sapo/gate_weight_mean", "grpo": "clip_ratio/region", "gspo": "clip_ratio/region",
                "gspo_token": "clip_ratio/region", "adpo": "adpo/tau"}[loss]
    assert expected in logs[0] and "entropy" in logs[0]


def test_loss_equals_trls_own_computation(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    """The same batch through ThermoGRPOTrainer._compute_loss and TRL's GRPOTrainer._compute_loss (TRL's fields
    choose the registry's sapo; test_trl_parity.py does this for every loss type)."""
    trainer = make_trainer(
        tiny_model_dir, varied_reward, fast_grpo_kwargs,
        loss_type="sapo", sapo_temperature_pos=0.9, sapo_temperature_neg=1.3,
        gradient_accumulation_steps=2, max_steps=1,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS * 2])
    batch["advantages"] = torch.randn_like(batch["advantages"])
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
            torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
            batch["completion_ids"].size(1),
        )
    batch["old_per_token_logps"] = logps + 0.3 * torch.randn_like(logps)
    ours = ThermoGRPOTrainer._compute_loss(trainer, trainer.model, batch)
    ours.backward()
    our_grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad()
    theirs = GRPOTrainer._compute_loss(trainer, trainer.model, batch)
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-6)
    for mine, reference in zip(our_grads, (p.grad for p in trainer.model.parameters()), strict=True):
        assert torch.allclose(mine, reference, atol=1e-6)


def test_multiple_iterations_kl_and_steps_per_generation(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    trainer = make_trainer(
        tiny_model_dir, varied_reward, fast_grpo_kwargs,
        policy_loss="grpo", num_iterations=2, steps_per_generation=2, beta=0.1, max_steps=4,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all("kl" in entry for entry in logs)
    # From the second update on a rollout, pi_theta has moved away from pi_old.
    assert any(abs(entry["ratio/mean"] - 1.0) > 1e-6 for entry in logs[1:])
    assert any(entry["kl"] > 0 for entry in logs[1:])


def test_lora_changes_only_adapter_weights(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    from peft import LoraConfig

    args = ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="sapo", max_steps=2)
    trainer = ThermoGRPOTrainer(
        model=tiny_model_dir, reward_funcs=varied_reward, args=args, train_dataset=prompt_dataset(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    everything = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    moved = [name for name, p in trainer.model.named_parameters() if not torch.equal(everything[name], p)]
    assert moved and all("lora_" in name for name in moved)


def test_reward_function_that_raises_is_named_with_its_example(tiny_model_dir, fast_grpo_kwargs):
    def fussy_reward(completions, prompts, **_):
        return [1 / 0 if p == "3-9=" else 1.0 for p in prompts]

    trainer = make_trainer(tiny_model_dir, fussy_reward, fast_grpo_kwargs, prompts=["3-9=", "12+7="], max_steps=1)
    with pytest.raises(RewardFunctionError, match=r"'fussy_reward' raised ZeroDivisionError.*prompt='3-9='"):
        trainer.train()


def test_non_finite_reward_is_an_error(tiny_model_dir, fast_grpo_kwargs):
    def broken_reward(completions, **_):
        return [float("nan")] * len(completions)

    trainer = make_trainer(tiny_model_dir, broken_reward, fast_grpo_kwargs, max_steps=1)
    with pytest.raises(RewardFunctionError, match="'broken_reward' returned nan"):
        trainer.train()


def test_nan_loss_stops_before_any_update(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    trainer = make_trainer(tiny_model_dir, varied_reward, fast_grpo_kwargs, policy_loss="sapo", max_steps=1)
    real_loss = trainer.policy_loss_fn

    def nan_loss(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        return loss * float("nan"), metrics

    trainer.policy_loss_fn = nan_loss
    before = snapshot(trainer.model)
    with pytest.raises(FloatingPointError, match="'sapo' loss is nan"):
        trainer.train()
    assert not changed(before, trainer.model)


def test_config_rejects_unknown_loss_and_parameters(fast_grpo_kwargs):
    with pytest.raises(ValueError, match="Unknown loss 'sappo'.*sapo"):
        ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="sappo")
    with pytest.raises(ValueError, match="'tau_positive'.*tau_pos"):
        ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="sapo", policy_loss_kwargs={"tau_positive": 1.0})


def test_adpo_refuses_split_groups(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    # steps_per_generation 2 splits each rollout in two shuffled halves: groups are torn apart.
    trainer = make_trainer(
        tiny_model_dir, varied_reward, fast_grpo_kwargs, policy_loss="adpo", steps_per_generation=2, max_steps=1
    )
    with pytest.raises(ValueError, match="whole groups"):
        trainer.train()
