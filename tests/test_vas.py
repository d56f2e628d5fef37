import itertools
import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter

import pytest
import torch
from trl.trainer.utils import RepeatSampler

from thermorl.rollouts.vas import VarianceAwareSampler
from thermorl.rollouts.vas_scores import (
    distinct_n,
    inverse_self_bleu,
    levenshtein,
    mean_edit_distance,
    outcome_variance,
    sentence_bleu,
    trajectory_diversity,
    variance_promotion_score,
)

# Upper 0.1% quantiles of the chi-square distribution by degrees of freedom (df=2: -2 ln 0.001; others: tables).
CHI2_999 = {2: 13.816, 3: 16.266, 4: 18.467}


def chi_square(counts: list[int], probabilities: list[float]) -> float:
    total = sum(counts)
    return sum((c - total * p) ** 2 / (total * p) for c, p in zip(counts, probabilities, strict=True))


def draw_epochs(sampler: VarianceAwareSampler, epochs: int) -> list[int]:
    """Unique prompts of `epochs` epochs (mini_repeat_count = repeat_count = 1 in the callers)."""
    return [index for _ in range(epochs) for index in sampler]


# ---- scores ---------------------------------------------------------------------------------------


def test_outcome_variance_hand_values():
    assert outcome_variance(0.5) == 0.25
    assert outcome_variance(0.0) == 0.0
    assert outcome_variance(1.0) == 0.0
    assert outcome_variance(0.25) == pytest.approx(0.1875)
    assert torch.allclose(outcome_variance(torch.tensor([0.1, 0.9])), torch.tensor([0.09, 0.09]))
    with pytest.raises(ValueError, match="pass_rate"):
        outcome_variance(1.5)


def test_distinct_n_hand_values():
    # Bigram sets {12, 23}, {12, 24}, {56, 67}: 5 distinct of 6, K = 3 -> (3 * 5 - 6) / (6 * 2) = 0.75.
    assert distinct_n([[1, 2, 3], [1, 2, 4], [5, 6, 7]]) == pytest.approx(0.75)
    assert distinct_n([[1, 2, 3]] * 4) == 0.0
    assert distinct_n([[1, 2], [3, 4], [5, 6]]) == 1.0
    # Unigrams {a, b}, {a, c}: 3 distinct of 4, K = 2 -> (2 * 3 - 4) / (4 * 1) = 0.5.
    assert distinct_n(["a b", "a c"], n=1) == pytest.approx(0.5)
    # Repeats inside one response do not count: {11} and {11} are equal sets.
    assert distinct_n([[1, 1, 1], [1, 1]]) == 0.0


def test_inverse_self_bleu_hand_values():
    # [1,2,3,4] vs [1,2,3,5]: p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1), BP = 1.
    bleu = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert inverse_self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]]) == pytest.approx(1 - bleu)
    # [1,2] vs [1,2,3,4]: all p_n = 1, BP = exp(1 - 4/2). Reverse: p = 2/4, 2/4, 1/3, 1/2 and BP = 1.
    short_bleu = math.exp(-1)
    long_bleu = (1 / 2 * 1 / 2 * 1 / 3 * 1 / 2) ** 0.25
    assert sentence_bleu([1, 2], [[1, 2, 3, 4]]) == pytest.approx(short_bleu)
    assert sentence_bleu([1, 2, 3, 4], [[1, 2]]) == pytest.approx(long_bleu)
    assert inverse_self_bleu([[1, 2], [1, 2, 3, 4]]) == pytest.approx(1 - (short_bleu + long_bleu) / 2)
    # Clipping takes the max count over references: hypothesis 1 1 vs refs [1], [1 1 7] -> p1 = 2/2.
    assert sentence_bleu([1, 1], [[1], [1, 1, 7]], max_order=1) == 1.0
    assert inverse_self_bleu(["x y z"] * 3) == pytest.approx(0.0)
    assert inverse_self_bleu([[1, 2], [3, 4], [5, 6]]) == 1.0


def test_edit_distance_hand_values():
    assert levenshtein([1, 2, 3], [1, 3]) == 1
    assert levenshtein("kitten sat".split(), "sitting sat on".split()) == 2
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein([], [4, 5]) == 2
    # Pairs: 1/3, 3/3, 3/3.
    assert mean_edit_distance([[1, 2, 3], [1, 3], [4, 5, 6]]) == pytest.approx(7 / 9)
    assert mean_edit_distance([[1, 2, 3]] * 3) == 0.0
    assert mean_edit_distance([[], [1]]) == 1.0


@pytest.mark.parametrize("measure", ["distinct_n", "inverse_self_bleu", "edit_distance"])
def test_diversity_measures_degenerate_groups_and_range(measure):
    for group in ([], [[1, 2, 3]], [[], []], [[], [], [1]], ["", ""]):
        value = trajectory_diversity(group, measure)
        assert 0.0 <= value <= 1.0 and not math.isnan(value)
    assert trajectory_diversity([[]] * 3, measure) == 0.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(1, 9, (4,), generator=generator).tolist()
        group = [torch.randint(0, 4, (length,), generator=generator) for length in lengths]
        value = trajectory_diversity(group, measure)
        assert 0.0 <= value <= 1.0
        # Strings are split on whitespace and compared token by token, like token ids.
        assert trajectory_diversity([" ".join(f"w{t}" for t in r.tolist()) for r in group], measure) == value


def test_trajectory_diversity_rejects_unknown_measure():
    with pytest.raises(ValueError, match="measure must be one of"):
        trajectory_diversity([[1], [2]], "self_bleu")


def test_variance_promotion_score():
    assert variance_promotion_score(0.5, 0.5) == pytest.approx(0.8 * 0.25 + 0.2 * 0.5)
    assert variance_promotion_score(1.0, 0.3, alpha=0.5, beta=1.0) == pytest.approx(0.3)
    vps = variance_promotion_score(torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(vps, torch.tensor([0.2, 0.2]))
    with pytest.raises(ValueError, match="tds"):
        variance_promotion_score(0.5, 1.2)
    with pytest.raises(ValueError, match="alpha and beta"):
        variance_promotion_score(0.5, 0.5, alpha=-1.0)


# ---- sampler layout -------------------------------------------------------------------------------


def test_layout_matches_repeat_sampler_structure():
    num_prompts, mini, batch, repeat = 13, 3, 4, 2
    sampler = VarianceAwareSampler(range(num_prompts), mini, batch, repeat, seed=0)
    indices = list(sampler)
    assert len(sampler) == len(RepeatSampler(range(num_prompts), mini, batch, repeat)) == len(indices) == 72
    chunk = batch * mini
    for start in range(0, len(indices), chunk * repeat):
        block = indices[start : start + chunk]
        assert indices[start : start + chunk * repeat] == block * repeat
        runs = [block[i : i + mini] for i in range(0, chunk, mini)]
        assert all(run == [run[0]] * mini for run in runs)


def test_unweighted_unshuffled_equals_repeat_sampler():
    kwargs = dict(mini_repeat_count=2, batch_size=3, repeat_count=4, shuffle=False)
    sampler = VarianceAwareSampler(range(7), **kwargs, seed=0, weighted_fraction=0.0)
    sampler.rescore({0: ([1, 0], None)})
    assert list(sampler) == list(RepeatSampler(range(7), **kwargs))


def test_batches_are_drawn_lazily_from_current_scores():
    sampler = VarianceAwareSampler(range(10), 2, 5, 1, seed=3, weighted_fraction=1.0, min_probability_floor=0.0)
    iterator = iter(sampler)
    first = list(itertools.islice(iterator, 10))
    assert len(set(first)) > 1
    sampler.rescore({i: ([1.0, 1.0], None) for i in range(10) if i != 7} | {7: ([1.0, 0.0], None)})
    assert list(itertools.islice(iterator, 10)) == [7] * 10


# ---- sampler proportions --------------------------------------------------------------------------


def scored_five_prompts(**kwargs) -> VarianceAwareSampler:
    sampler = VarianceAwareSampler(range(5), 1, 5, 1, seed=11, weighted_fraction=1.0, **kwargs)
    # Pass rates 4/8, 2/8, 1/8, 0/8, 8/8 -> VPS = 0.8 P (1 - P) = 0.2, 0.15, 0.0875, 0, 0 (no responses: TDS 0).
    sampler.rescore({i: ([1.0] * k + [0.0] * (8 - k), None) for i, k in enumerate([4, 2, 1, 0, 8])})
    return sampler


def test_weighted_draws_follow_vps():
    sampler = scored_five_prompts(min_probability_floor=0.0)
    counts = Counter(draw_epochs(sampler, 1500))
    assert counts[3] == counts[4] == 0
    expected = [0.2 / 0.4375, 0.15 / 0.4375, 0.0875 / 0.4375]
    assert chi_square([counts[0], counts[1], counts[2]], expected) < CHI2_999[2]


def test_floor_keeps_zero_score_prompts_drawable():
    sampler = scored_five_prompts(min_probability_floor=0.2)
    counts = Counter(draw_epochs(sampler, 1500))
    expected = [0.8 * v / 0.4375 + 0.2 / 5 for v in (0.2, 0.15, 0.0875, 0.0, 0.0)]
    assert counts[3] > 0 and counts[4] > 0
    assert chi_square([counts[i] for i in range(5)], expected) < CHI2_999[4]


def test_weighted_fraction_sets_share_of_vps_draws():
    # Prompts 0-9 have VPS 0 and floor 0, so they come only from the uniform part: share (1 - lambda) / 2.
    weighted_fraction, epochs = 0.3, 500
    sampler = VarianceAwareSampler(
        range(20), 1, 10, 1, seed=5, weighted_fraction=weighted_fraction, min_probability_floor=0.0
    )
    sampler.rescore({i: ([1.0, 1.0], None) if i < 10 else ([1.0, 0.0], None) for i in range(20)})
    draws = draw_epochs(sampler, epochs)
    zero_share = sum(index < 10 for index in draws) / len(draws)
    # Per epoch the 14 uniform slots hold a hypergeometric count of zero-VPS prompts: variance 14/4 * 6/19.
    std = math.sqrt(epochs * 14 / 4 * 6 / 19) / len(draws)
    assert abs(zero_share - (1 - weighted_fraction) / 2) < 4 * std
    assert sampler.metrics()["vas/weighted_draw_share"] == pytest.approx(0.3)


def test_zero_weighted_fraction_is_uniform_permutation_per_epoch():
    sampler = VarianceAwareSampler(range(12), 1, 4, 1, seed=2, weighted_fraction=0.0)
    sampler.rescore({0: ([1.0, 0.0], None), 1: ([1.0, 1.0], None)})
    epochs = [list(sampler) for _ in range(5)]
    assert all(sorted(epoch) == list(range(12)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 5


# ---- online and rollout modes ---------------------------------------------------------------------


def test_online_prior_then_variance_drives_draws():
    sampler = VarianceAwareSampler(range(20), 1, 10, 1, seed=9, weighted_fraction=1.0)
    assert torch.allclose(sampler.vps(), torch.full((20,), 0.8 / 4 + 0.2, dtype=torch.float64))
    assert set(draw_epochs(sampler, 20)) == set(range(20))

    # Four rollouts each. 0-4: all correct, identical responses. 5-9: all wrong, bigram-disjoint responses
    # (TDS 1). 10-14: half correct, bigram-disjoint. 15-19: unseen.
    indices = [prompt for prompt in range(15) for _ in range(4)]
    rewards = [1.0] * 20 + [0.0] * 20 + [1.0, 0.0] * 10
    responses = ["same answer"] * 20 + [f"w{k} v{k}" for k in range(4)] * 10
    sampler.update(indices, rewards, responses)
    vps = sampler.vps()
    assert torch.allclose(vps[:5], torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(vps[5:10], torch.full((5,), 0.2, dtype=torch.float64))  # beta * TDS
    assert torch.allclose(vps[10:], torch.full((10,), 0.4, dtype=torch.float64))

    counts = Counter(draw_epochs(sampler, 400))
    groups = [sum(counts[i] for i in range(g, g + 5)) for g in (0, 5, 10, 15)]
    # Probabilities per prompt: 0.05/20, 0.95 * 0.2/5 + 0.0025, 0.95 * 0.4/5 + 0.0025 (twice); 8000 draws.
    expected = [5 * 0.0025, 5 * 0.0405, 5 * 0.0785, 5 * 0.0785]
    assert chi_square(groups, expected) < CHI2_999[3]
    assert 0 < groups[0] < groups[1] < min(groups[2], groups[3])


def test_online_running_means():
    sampler = VarianceAwareSampler(range(3), 2, seed=0)
    sampler.update([0, 0], [0.0, 0.0])
    sampler.update([0, 0, 0, 0], [1.0, 1.0, 1.0, 0.0])
    assert sampler.scores.pass_rate[0] == pytest.approx(3 / 6)
    assert int(sampler.scores.rollouts_seen[0]) == 6
    ema = VarianceAwareSampler(range(3), 2, seed=0, ema_decay=0.9)
    ema.update([0, 0], [0.0, 0.0])
    ema.update([0, 0], [1.0, 1.0])
    assert ema.scores.pass_rate[0] == pytest.approx(0.1)
    thresholded = VarianceAwareSampler(range(3), 2, seed=0, success_threshold=0.5)
    thresholded.update(torch.tensor([2, 2]), torch.tensor([2.0, -1.0]))
    assert thresholded.scores.pass_rate[2] == 0.5 and math.isnan(thresholded.scores.pass_rate[0])


def test_rollout_mode_rescore_replaces_scores():
    sampler = VarianceAwareSampler(range(4), 2, mode="rollout", seed=0)
    assert (sampler.update_interval, sampler.rollouts_per_prompt) == (35, 8)
    sampler.rescore({1: ([1.0, 1.0, 0.0, 0.0], ["a b", "a b", "c d", "e f"])})
    # distinct-2 of {ab}, {ab}, {cd}, {ef}: (4 * 3 - 4) / (4 * 3) = 2/3.
    assert sampler.vps()[1] == pytest.approx(0.8 * 0.25 + 0.2 * 2 / 3)
    sampler.rescore({1: ([1.0, 1.0], None)})
    assert sampler.scores.pass_rate[1] == 1.0 and math.isnan(sampler.scores.diversity_score[1])
    with pytest.raises(ValueError, match="mode='online'"):
        sampler.update([1], [1.0])


def test_metrics_hand_values():
    sampler = VarianceAwareSampler(range(5), 1, 2, 1, seed=0)
    sampler.rescore({0: ([1.0, 0.0], None), 1: ([1.0, 0.0, 0.0, 0.0], None), 2: ([1.0], None), 3: ([0.0], None)})
    metrics = sampler.metrics()
    # Sorted VPS: 0, 0, 0.15, 0.2, 0.4 (prior, unscored prompt 4 counted); linear interpolation.
    assert metrics["vas/vps_p10"] == pytest.approx(0.0)
    assert metrics["vas/vps_p50"] == pytest.approx(0.15)
    assert metrics["vas/vps_p90"] == pytest.approx(0.2 + 0.6 * 0.2)
    assert metrics["vas/scored_prompts"] == 4.0
    assert metrics["vas/zero_variance_share"] == 0.5
    assert metrics["vas/weighted_draw_share"] == 0.0
    list(sampler)
    assert sampler.metrics()["vas/weighted_draw_share"] == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mini_repeat_count=0), "mini_repeat_count"),
        (dict(batch_size=11), "batch_size"),
        (dict(weighted_fraction=1.5), "weighted_fraction"),
        (dict(min_probability_floor=-0.1), "min_probability_floor"),
        (dict(mode="offline"), "mode"),
        (dict(diversity="bleu"), "diversity"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(prior_score=-1.0), "prior_score"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    arguments = dict(mini_repeat_count=2, batch_size=2) | kwargs
    with pytest.raises(ValueError, match=match):
        VarianceAwareSampler(range(10), **arguments)


def test_update_rejects_bad_input():
    sampler = VarianceAwareSampler(range(4), 2, seed=0)
    with pytest.raises(ValueError, match="outside"):
        sampler.update([4], [1.0])
    with pytest.raises(ValueError, match="prompt_indices"):
        sampler.update([0, 1], [1.0])
    with pytest.raises(ValueError, match="responses"):
        sampler.update([0, 1], [1.0, 0.0], ["a"])
    with pytest.raises(ValueError, match="success_threshold"):
        sampler.update([0], [2.0])
    with pytest.raises(ValueError, match="finite"):
        sampler.update([0], [math.nan])
    assert torch.isnan(sampler.scores.pass_rate).all()


# ---- checkpoints and ranks ------------------------------------------------------------------------


def train_batches(sampler: VarianceAwareSampler, batches: int, first_step: int) -> list[list[int]]:
    """Take `batches` batches from the stream, feeding each one's rollouts back in like a trainer."""
    per_batch = sampler.batch_size * sampler.mini_repeat_count * sampler.repeat_count
    stream = (index for _ in itertools.count() for index in sampler)
    taken = []
    for step in range(first_step, first_step + batches):
        batch = list(itertools.islice(stream, per_batch))
        rollouts = batch[: sampler.batch_size * sampler.mini_repeat_count]
        rewards = [float((index + step + k) % 3 == 0) for k, index in enumerate(rollouts)]
        responses = [f"a{index} b{(index * k) % 3}" for k, index in enumerate(rollouts)]
        sampler.update(rollouts, rewards, responses)
        taken.append(batch)
    return taken


def test_state_dict_round_trip_continues_the_same_stream(tmp_path):
    def make():
        return VarianceAwareSampler(range(12), 2, 4, 2, seed=17, weighted_fraction=0.5)

    uninterrupted = train_batches(make(), 8, first_step=0)
    first = make()
    head = train_batches(first, 4, first_step=0)  # stops inside the second epoch (3 batches per epoch)
    torch.save(first.state_dict(), tmp_path / "vas.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "vas.pt"))
    assert head + train_batches(resumed, 4, first_step=4) == uninterrupted
    other = VarianceAwareSampler(range(12), 2, 4, 2, seed=18)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(first.state_dict())


def test_state_dict_keeps_the_flat_checkpoint_layout():
    # vas_sampler.pt files written before the scores moved to `sampler.scores` hold every key at the top level.
    sampler = VarianceAwareSampler(range(4), 2, seed=0)
    sampler.update([1, 1], [1.0, 0.0], ["a b", "c d"])
    state = sampler.state_dict()
    assert list(state) == [
        "seed", "num_samples", "batch_size", "epoch", "position", "drawn_batches", "pass_rate", "diversity_score",
        "rollouts_seen", "groups_scored", "weighted_draws", "uniform_draws",
    ]
    assert state["pass_rate"][1] == 0.5 and state["rollouts_seen"][1] == 2 and state["groups_scored"][1] == 1


def test_loaded_state_replays_the_epochs_kept_draws():
    def make():
        return VarianceAwareSampler(range(12), 1, 3, 1, seed=4, weighted_fraction=1.0, min_probability_floor=0.0)

    only_prompt_11 = {i: ([1.0, 0.0] if i == 11 else [1.0, 1.0], None) for i in range(12)}
    first = make()
    drawn = list(itertools.islice(iter(first), 6))  # two batches from the prior: all prompts drawable
    assert set(drawn) != {11}
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state | {"position": 0})  # what a Trainer resume does before skipping batches
    resumed.rescore(only_prompt_11)
    # The two kept batches come back as drawn; the third is drawn from the current scores.
    assert list(itertools.islice(iter(resumed), 9)) == drawn + [11] * 3
    list(resumed)  # finish the epoch: the next one draws afresh
    assert resumed.drawn_batches == {} and list(resumed) == [11] * 12


WORKER = """
import itertools, json, os
import torch.distributed as dist
from thermorl.rollouts.vas import VarianceAwareSampler

rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
sampler = VarianceAwareSampler(range(40), 2, 8, 2, seed=123)
iterator = iter(sampler)
drawn = []
for step in range(4):
    batch = list(itertools.islice(iterator, 8 * 2 * 2))
    rollouts = batch[: 8 * 2]
    local = rollouts[rank * 8 : (rank + 1) * 8]  # this rank's shard, as BatchSamplerShard splits it
    local_rewards = [float((index + rank + step) % 3 == 0) for index in local]
    gathered = [None, None]
    dist.all_gather_object(gathered, (local, local_rewards))
    sampler.update([i for part in gathered for i in part[0]], [r for part in gathered for r in part[1]])
    drawn.append(batch)
everyone = [None, None]
dist.all_gather_object(everyone, (drawn, sampler.vps().tolist()))
if rank == 0:
    print(json.dumps({"same": everyone[0] == everyone[1], "drawn": drawn}))
dist.destroy_process_group()
"""


def test_two_gloo_ranks_draw_identical_indices(tmp_path):
    script = tmp_path / "vas_worker.py"
    script.write_text(WORKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    command = [sys.executable, str(script)]
    workers = [
        subprocess.Popen(command, env=env | {"RANK": str(rank)}, stdout=subprocess.PIPE, text=True) for rank in range(2)
    ]
    outputs = [worker.communicate(timeout=90)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    result = json.loads(outputs[0])
    assert result["same"]
    # The first batch precedes any update; later ones used the gathered scores.
    unscored = VarianceAwareSampler(range(40), 2, 8, 2, seed=123)
    reference = list(itertools.islice(iter(unscored), 4 * 32))
    assert result["drawn"][0] == reference[:32]
    assert [index for batch in result["drawn"] for index in batch] != reference
