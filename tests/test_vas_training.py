"""Variance-aware sampling inside ThermoGRPOTrainer: sampler choice and layout, online and rollout scores, logged
metrics, checkpoint resume."""

import os
from collections import defaultdict

import pytest
import torch
from datasets import Dataset, IterableDataset
from trl.trainer.utils import RepeatSampler

from thermorl.rollouts import VarianceAwareSampler, distinct_n, outcome_variance
from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.variance_aware import PROMPT_INDEX_COLUMN, STATE_FILE

PROMPTS = [f"{i}+{i}=" for i in range(8)]
STEADY = set(PROMPTS[::2])  # reward 1 for every completion: zero variance


class RecordingReward:
    """Records every call; reward 1 on STEADY prompts, else 1 and 0 alternating within the call, so each group of an
    even size gets pass rate 1/2 whatever the model writes."""

    __name__ = "recording_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, trainer_state, **columns):
        assert PROMPT_INDEX_COLUMN not in columns
        rewards = [1.0 if p in STEADY else float(k % 2 == 0) for k, p in enumerate(prompts)]
        self.calls.append((trainer_state.global_step, list(prompts), rewards, [list(ids) for ids in completion_ids]))
        return rewards


def make_trainer(model_dir, reward, fast_grpo_kwargs, **config):
    args = ThermoGRPOConfig(**{**fast_grpo_kwargs, **config})
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    return ThermoGRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset)


def groups(prompts, size):
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


def test_sampler_choice_and_group_layout(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    plain = make_trainer(tiny_model_dir, varied_reward, fast_grpo_kwargs)
    assert type(plain._get_train_sampler()) is RepeatSampler
    assert PROMPT_INDEX_COLUMN not in plain.train_dataset.column_names

    reward = RecordingReward()
    trainer = make_trainer(
        tiny_model_dir, reward, fast_grpo_kwargs, vas_mode="online", steps_per_generation=2, num_iterations=2,
        max_steps=4,
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, VarianceAwareSampler)
    assert (sampler.mini_repeat_count, sampler.batch_size, sampler.repeat_count, sampler.seed) == (4, 4, 4, 0)
    trainer.train()
    # steps_per_generation * num_iterations = 4 steps per generation batch of 16 rows: one generation.
    assert [(step, len(prompts)) for step, prompts, _, _ in reward.calls] == [(0, 16)]
    assert all(group == [group[0]] * 4 for group in groups(reward.calls[0][1], 4))


def test_online_scores_follow_the_rewards_seen(tiny_model_dir, fast_grpo_kwargs):
    reward = RecordingReward()
    trainer = make_trainer(tiny_model_dir, reward, fast_grpo_kwargs, vas_mode="online", max_steps=4)
    trainer.train()
    sampler = trainer.prompts.sampler

    # Reference tallies: per prompt, every reward, and the distinct-2 of its completions in each generation batch
    # (a prompt drawn twice into one batch is one group of 8).
    rewards_by_prompt, diversity_by_prompt = defaultdict(list), defaultdict(list)
    for _, prompts, rewards, completion_ids in reward.calls:
        ids_in_batch = defaultdict(list)
        for prompt, value, ids in zip(prompts, rewards, completion_ids, strict=True):
            rewards_by_prompt[prompt].append(value)
            ids_in_batch[prompt].append(ids)
        for prompt, group in ids_in_batch.items():
            diversity_by_prompt[prompt].append(distinct_n(group))
    seen = {PROMPTS.index(p) for p in rewards_by_prompt}
    assert set(torch.nonzero(~torch.isnan(sampler.scores.pass_rate)).flatten().tolist()) == seen
    for prompt, rewards in rewards_by_prompt.items():
        index = PROMPTS.index(prompt)
        assert sampler.scores.rollouts_seen[index] == len(rewards)
        assert sampler.scores.pass_rate[index] == pytest.approx(sum(rewards) / len(rewards))
        diversities = diversity_by_prompt[prompt]
        assert sampler.scores.diversity_score[index] == pytest.approx(sum(diversities) / len(diversities))
        assert outcome_variance(sampler.scores.pass_rate[index]) == pytest.approx(0.0 if prompt in STEADY else 0.25)
    assert STEADY & set(rewards_by_prompt) and set(rewards_by_prompt) - STEADY

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for name in ("vas/vps_p10", "vas/vps_p50", "vas/vps_p90", "vas/scored_prompts", "vas/zero_variance_share",
                 "frac_reward_zero_std"):
        assert all(name in entry for entry in logs)
    assert logs[-1]["vas/scored_prompts"] == len(seen)
    scored_steady = len(STEADY & set(rewards_by_prompt))
    assert logs[-1]["vas/zero_variance_share"] == pytest.approx(scored_steady / len(seen))


def test_rollout_mode_rerolls_every_prompt_at_the_interval(tiny_model_dir, fast_grpo_kwargs):
    reward = RecordingReward()
    trainer = make_trainer(
        tiny_model_dir, reward, fast_grpo_kwargs, vas_mode="rollout", vas_update_interval=2,
        vas_rollouts_per_prompt=3, max_steps=4,
    )
    trainer.train()
    # Re-roll chunks hold 8 // 3 = 2 prompts x 3 rollouts; training generation batches hold 8 rows.
    rerolls = [call for call in reward.calls if len(call[1]) == 6]
    assert [len(call[1]) for call in reward.calls].count(8) == 4
    assert [step for step, *_ in rerolls] == [0] * 4 + [2] * 4
    assert sorted(p for _, prompts, _, _ in rerolls[4:] for p in prompts) == sorted(PROMPTS * 3)

    sampler = trainer.prompts.sampler
    latest = defaultdict(list)
    for _, prompts, rewards, _ in rerolls[4:]:
        for prompt, value in zip(prompts, rewards, strict=True):
            latest[prompt].append(value)
    expected = torch.tensor([sum(latest[p]) / 3 for p in PROMPTS], dtype=torch.float64)
    assert torch.allclose(sampler.scores.pass_rate, expected)
    assert (sampler.scores.rollouts_seen == 3).all()
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert last["vas/scored_prompts"] == 8
    assert last["vas/rescore_completions"] == 2 * 8 * 3
    assert last["vas/rescore_to_train_completions"] == pytest.approx(48 / (4 * 8))


def training_prompts(reward):
    return [(step, prompts) for step, prompts, _, _ in reward.calls]


def test_resume_continues_the_uninterrupted_prompt_order(tiny_model_dir, fast_grpo_kwargs):
    # 4 batches per epoch: the checkpoint at step 3 is mid-epoch and the resumed run crosses into epoch 1. The
    # uninterrupted run drew batch 3 (read ahead) before step 2's rewards came in; with all draws weighted and seed 3
    # a sampler redrawing it from the checkpoint's newer scores picks other prompts, so this checks the replay.
    settings = dict(
        vas_mode="online", vas_weighted_fraction=1.0, vas_probability_floor=0.0, seed=3, max_steps=6,
        save_strategy="steps", save_steps=3,
    )
    uninterrupted_reward = RecordingReward()
    uninterrupted = make_trainer(tiny_model_dir, uninterrupted_reward, fast_grpo_kwargs, **settings)
    uninterrupted.train()
    checkpoint = os.path.join(fast_grpo_kwargs["output_dir"], "checkpoint-3")
    assert os.path.isfile(os.path.join(checkpoint, STATE_FILE))

    resumed_reward = RecordingReward()
    kwargs = {**fast_grpo_kwargs, "output_dir": fast_grpo_kwargs["output_dir"] + "-resumed"}
    resumed = make_trainer(tiny_model_dir, resumed_reward, kwargs, **settings)
    resumed.train(resume_from_checkpoint=checkpoint)
    expected = training_prompts(uninterrupted_reward)[3:]
    assert training_prompts(resumed_reward) == expected
    assert torch.equal(resumed.prompts.sampler.scores.rollouts_seen, uninterrupted.prompts.sampler.scores.rollouts_seen)


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(vas_mode="offline"), "vas_mode"),
        (dict(vas_weighted_fraction=1.2), "vas_weighted_fraction"),
        (dict(vas_probability_floor=-0.1), "vas_probability_floor"),
        (dict(vas_alpha=0.0, vas_beta=0.0), "vas_alpha"),
        (dict(vas_diversity="bleu"), "vas_diversity"),
        (dict(vas_update_interval=0), "vas_update_interval"),
        (dict(vas_rollouts_per_prompt=1), "vas_rollouts_per_prompt"),
        (dict(vas_ema_decay=1.0), "vas_ema_decay"),
        (dict(vas_prior_score=-1.0), "vas_prior_score"),
    ],
)
def test_config_rejects_bad_vas_settings(config, match, fast_grpo_kwargs):
    with pytest.raises(ValueError, match=match):
        ThermoGRPOConfig(**fast_grpo_kwargs, **config)


def test_vas_needs_an_indexable_train_set(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    args = ThermoGRPOConfig(**fast_grpo_kwargs, vas_mode="online", max_steps=1)
    stream = IterableDataset.from_generator(lambda: ({"prompt": p} for p in PROMPTS))
    with pytest.raises(ValueError, match="map-style"):
        ThermoGRPOTrainer(model=tiny_model_dir, reward_funcs=varied_reward, args=args, train_dataset=stream)
    taken = Dataset.from_dict({"prompt": PROMPTS, PROMPT_INDEX_COLUMN: list(range(8))})
    with pytest.raises(ValueError, match="reserves"):
        ThermoGRPOTrainer(model=tiny_model_dir, reward_funcs=varied_reward, args=args, train_dataset=taken)


def test_rollout_rerolls_go_through_the_ead_schedule(tiny_model_dir, fast_grpo_kwargs):
    # The re-roll uses the trainer's generation path (here EAD's scheduled sampling) before the training batch's own
    # generation, whose behaviour log-probs EAD checks against the batch: both must hold together.
    reward = RecordingReward()
    trainer = make_trainer(
        tiny_model_dir, reward, fast_grpo_kwargs, vas_mode="rollout", vas_rollouts_per_prompt=3,
        temperature_schedule=0.7, max_steps=2,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[0]["vas/rescore_completions"] == 8 * 3
    assert logs[0]["ead/temperature_mean"] == pytest.approx(0.7)
