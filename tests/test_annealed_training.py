"""EAD inside ThermoGRPOTrainer: rollouts sampled at tau_t, behaviour log-probs in the batch, TIS and its options."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from thermorl.recipe import load_recipe
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.annealed import generate_through, portfolio_members

# Prompts of different lengths, so the generation batch is left-padded.
PROMPTS = ["12+7=", "3-9=", "40+123=", "5+5="]
# Hot enough at every position that no token sits at tau_min 0.5 before step 1; tau_min reached at step 0.
SCHEDULE = {"type": "annealed", "tau_max": 1.2, "tau_min": 0.5, "warmup_tokens": 1, "d0": 1.0, "alpha": 5.0,
            "horizon_scale": 2.0}
EAD_METRICS = ["ead/temperature_mean", "ead/share_at_tau_min", "ead/tis_weight_mean", "ead/tis_weight_max",
               "ead/tis_truncated_share"]


def expected_temperatures(num_positions, step, tau_max=1.2, tau_min=0.5, warmup=1, d0=1.0, alpha=5.0, scale=2.0):
    """EAD's formula written out: 1 in the warm-up, then max(1 + tau_max - exp(t / (scale * d_s)), tau_min)."""
    horizon = d0 + alpha * step
    return torch.tensor([
        1.0 if t < warmup else max(1 + tau_max - math.exp(t / (scale * horizon)), tau_min) for t in range(num_positions)
    ])


def make_trainer(model_dir, fast_grpo_kwargs, reward=None, **config):
    reward = reward or (lambda completions, **_: [float(len(c) % 2) for c in completions])
    settings = {**fast_grpo_kwargs, "max_completion_length": 6, **config}
    dataset = Dataset.from_dict({"prompt": [PROMPTS[i % len(PROMPTS)] for i in range(16)]})
    args = ThermoGRPOConfig(**settings)
    return ThermoGRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset)


def rollout_batch(trainer, seed=0):
    """One generation batch: two groups of 4 (num_generations) with prompts of different lengths."""
    torch.manual_seed(seed)
    return trainer._generate_and_score_completions([{"prompt": p} for p in (PROMPTS[1], PROMPTS[2]) for _ in range(4)])


def recomputed_logps(model_dir, batch, temperatures):
    """log_softmax(logits / tau)[token] from a fresh copy of the model, one full forward pass."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    prompt_width = batch["prompt_ids"].size(1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt_width - 1 : -1]
    logps = torch.log_softmax(logits / temperatures[..., None], dim=-1)
    return logps.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)


@pytest.mark.parametrize("step", [0, 2])
def test_behaviour_logps_are_the_scheduled_distribution(step, tiny_model_dir, fast_grpo_kwargs):
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE)
    trainer.state.global_step = step
    batch = rollout_batch(trainer)
    assert (batch["prompt_mask"] == 0).any(), "the test needs left padding"
    mask = batch["completion_mask"].bool()
    width = batch["completion_ids"].size(1)
    expected = expected_temperatures(width, step)
    assert torch.allclose(batch["behaviour_per_token_temperatures"], expected.expand(len(mask), -1), atol=1e-6)

    behaviour = recomputed_logps(tiny_model_dir, batch, expected)
    assert torch.allclose(batch["behaviour_per_token_logps"][mask], behaviour[mask], atol=1e-5)
    # One update per rollout: no extra pi_old forward; TIS takes pi_old at temperature 1 from the loss's own pass.
    assert "old_per_token_logps" not in batch
    at_one = recomputed_logps(tiny_model_dir, batch, torch.ones(width))
    weights, _ = trainer.tempering.token_weights(at_one, batch["behaviour_per_token_logps"], mask)
    expected_weights = torch.exp(at_one - behaviour).clamp(max=2.0)
    assert torch.allclose(weights[mask], expected_weights[mask], atol=1e-4)


def test_behaviour_logps_survive_shuffle_and_split(tiny_model_dir, fast_grpo_kwargs):
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE,
                           gradient_accumulation_steps=2, max_steps=1)
    trainer.model.train()
    torch.manual_seed(0)
    buffered = trainer._prepare_inputs([{"prompt": p} for p in PROMPTS for _ in range(4)])
    assert buffered["behaviour_per_token_logps"].shape == buffered["completion_ids"].shape
    assert len(buffered["completion_ids"]) == 8
    micro_batches = trainer._buffered_inputs
    rows = torch.cat([b["completion_ids"] for b in micro_batches])
    behaviour = torch.cat([b["behaviour_per_token_logps"] for b in micro_batches])
    batch = {"prompt_ids": torch.cat([b["prompt_ids"] for b in micro_batches]),
             "prompt_mask": torch.cat([b["prompt_mask"] for b in micro_batches]),
             "completion_ids": rows, "completion_mask": torch.cat([b["completion_mask"] for b in micro_batches])}
    mask = batch["completion_mask"].bool()
    expected = recomputed_logps(tiny_model_dir, batch, expected_temperatures(rows.size(1), 0))
    assert torch.allclose(behaviour[mask], expected[mask], atol=1e-5)


def test_tis_weights_and_metrics_on_hand_made_inputs(tiny_model_dir, fast_grpo_kwargs):
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE, tis_cap=2.0)
    trainer.model.train()
    behaviour = torch.log(torch.tensor([[0.5, 0.2, 0.1, 0.3]]))
    old = torch.log(torch.tensor([[0.25, 0.2, 0.4, 0.9]]))  # ratios 0.5, 1, 4 (-> cap 2), 3 (masked out)
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, logged = trainer.tempering.token_weights(old, behaviour, mask)
    assert torch.allclose(weights, torch.tensor([[0.5, 1.0, 2.0, 2.0]]), atol=1e-6)
    assert logged["ead/tis_weight_mean"] == pytest.approx(3.5 / 3, abs=1e-6)
    assert logged["ead/tis_weight_max"] == pytest.approx(2.0, abs=1e-6)
    assert logged["ead/tis_truncated_share"] == pytest.approx(1 / 3, abs=1e-6)


def test_no_weights_without_tis(tiny_model_dir, fast_grpo_kwargs):
    inputs = {"old_per_token_logps": torch.full((1, 2), -1.0), "behaviour_per_token_logps": torch.full((1, 2), -3.0)}
    mask = torch.ones(1, 2)
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE, ead_correction="none")
    assert trainer.tempering.token_weights(inputs["old_per_token_logps"], inputs["behaviour_per_token_logps"], mask) == (None, {})
    batch = rollout_batch(trainer)
    assert "old_per_token_logps" not in batch  # no correction: no extra forward pass either


def test_recompute_at_tau_takes_pi_old_at_the_sampling_temperature(tiny_model_dir, fast_grpo_kwargs):
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE,
                           ead_correction="recompute_at_tau", gradient_accumulation_steps=1)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = rollout_batch(trainer)
    mask = batch["completion_mask"].bool()
    at_tau = recomputed_logps(tiny_model_dir, batch, expected_temperatures(batch["completion_ids"].size(1), 0))
    assert torch.allclose(batch["old_per_token_logps"][mask], at_tau[mask], atol=1e-5)
    assert trainer.tempering.token_weights(batch["old_per_token_logps"], batch["behaviour_per_token_logps"], mask)[0] is None

    trainer._compute_loss(trainer.model, batch)
    trainer.queued_metrics.flush(trainer)  # the loss's metrics reach TRL's buffer at the next log line
    at_one = recomputed_logps(tiny_model_dir, batch, torch.ones(mask.size(1)))
    expected_ratio = torch.exp(at_one - at_tau)[mask].mean().item()  # pi_theta(tau=1) / pi_old(tau_t)
    assert trainer._metrics["train"]["ratio/mean"][-1] == pytest.approx(expected_ratio, rel=1e-4)


def test_ead_with_sapo_trains_and_logs(tiny_model_dir, fast_grpo_kwargs, varied_reward):
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, reward=varied_reward, temperature_schedule=SCHEDULE,
                           policy_loss="sapo", max_steps=2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    for entry in logs:
        assert all(math.isfinite(entry[name]) for name in EAD_METRICS)
        assert 0.5 <= entry["ead/temperature_mean"] <= 1.2
        assert 0 < entry["ead/tis_weight_mean"] and entry["ead/tis_weight_max"] <= 2.0
    # Step 0 reaches tau_min 0.5 from position 2 on; step 1's horizon (d = 6) keeps every position above it.
    assert logs[0]["ead/share_at_tau_min"] > 0 and logs[1]["ead/share_at_tau_min"] == 0


def test_portfolio_assigns_profiles_round_robin_within_groups(tiny_model_dir, fast_grpo_kwargs, varied_reward):
    portfolio = [0.6, SCHEDULE, 1.2]
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, reward=varied_reward, temperature_portfolio=portfolio,
                           max_steps=1)
    batch = rollout_batch(trainer)
    profiles = [torch.full((6,), 0.6), expected_temperatures(6, 0), torch.full((6,), 1.2)]
    for row, temperatures in enumerate(batch["behaviour_per_token_temperatures"]):
        member = row % 4  # num_generations = 4: members 0, 1, 2, 3 -> profiles 0, 1, 2, 0
        assert torch.allclose(temperatures, profiles[member % 3], atol=1e-6), row
    mask = batch["completion_mask"].bool()
    expected = recomputed_logps(tiny_model_dir, batch, batch["behaviour_per_token_temperatures"])
    assert torch.allclose(batch["behaviour_per_token_logps"][mask], expected[mask], atol=1e-5)

    trainer.train()
    logged = trainer.state.log_history[0]
    assert all(name in logged for name in EAD_METRICS)


def test_portfolio_members_count_rows_across_processes():
    assert portfolio_members(0, 6, num_generations=3, num_schedules=2).tolist() == [0, 1, 0, 0, 1, 0]
    # Process 1 of a global batch whose groups straddle processes: rows 4..7, groups of 8.
    assert portfolio_members(4, 4, num_generations=8, num_schedules=3).tolist() == [1, 2, 0, 1]


def test_generate_through_restores_generate_after_an_error(tiny_model_dir, fast_grpo_kwargs):
    trainer = make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE)
    model = trainer.model
    with pytest.raises(RuntimeError, match="boom"):
        with generate_through(model, processor=None):
            assert "generate" in vars(model)
            raise RuntimeError("boom")
    assert "generate" not in vars(model)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"temperature_schedule": SCHEDULE, "temperature": 0.7}, "temperature must be 1.0"),
        ({"temperature_portfolio": [1.0, 0.5], "top_k": 20}, "top_k=0"),
        ({"temperature_schedule": SCHEDULE, "use_vllm": True, "repetition_penalty": 1.1}, "repetition_penalty=1.0"),
        ({"vllm_dtype": "float32"}, "vllm_dtype sets the dtype of the colocated vLLM engine"),
        ({"temperature_schedule": SCHEDULE, "use_transformers_paged": True}, "continuous batching"),
        ({"temperature_schedule": {"type": "cosine"}}, "temperature_schedule: unknown temperature schedule type"),
        ({"temperature_schedule": {"type": "annealed", "tau_mn": 0.1}}, "unknown key"),
        ({"temperature_schedule": "{not json"}, "temperature_schedule must be a schedule spec"),
        ({"temperature_portfolio": [1.0, {"type": "annealed", "tau_min": 2.0}]}, r"temperature_portfolio\[1\]"),
        ({"temperature_portfolio": []}, "non-empty list"),
        ({"temperature_portfolio": [0.5, 0.7, 0.9, 1.0, 1.2]}, "num_generations=4"),
        ({"temperature_schedule": SCHEDULE, "temperature_portfolio": [1.0]}, "not both"),
        ({"ead_correction": "clip"}, "ead_correction must be one of"),
        ({"tis_cap": 0.5}, "tis_cap must be a number >= 1"),
    ],
)
def test_bad_config_is_refused(config, message, fast_grpo_kwargs):
    with pytest.raises(ValueError, match=message):
        ThermoGRPOConfig(**{**fast_grpo_kwargs, **config})


def test_generation_kwargs_that_change_the_distribution_are_refused(tiny_model_dir, fast_grpo_kwargs):
    with pytest.raises(ValueError, match="top_k must be 0"):
        make_trainer(tiny_model_dir, fast_grpo_kwargs, temperature_schedule=SCHEDULE, generation_kwargs={"top_k": 50})


def test_json_strings_and_recipes_parse_to_schedules(fast_grpo_kwargs):
    config = ThermoGRPOConfig(**fast_grpo_kwargs, temperature_portfolio='[0.6, {"type": "annealed"}]')
    schedules = config.rollout_schedules
    assert [type(s).__name__ for s in schedules] == ["ConstantTemperature", "AnnealedTemperature"]
    for recipe in ("ead_sapo", "ead_portfolio"):
        _, training_args, _ = load_recipe(recipe, {"output_dir": str(fast_grpo_kwargs["output_dir"])})
        assert training_args.rollout_schedules, recipe
