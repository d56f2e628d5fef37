"""Temperature schedules (EAD, arXiv 2510.05251) and the scheduled-temperature logits processor."""

import math

import pytest
import torch
from torch import nn
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from thermorl.rollouts import (
    AnnealedTemperature,
    ConstantTemperature,
    LinearTemperature,
    ReverseAnnealedTemperature,
    ScheduledTemperatureProcessor,
    build_schedule,
    check_generation_config,
)
from thermorl.rollouts.temperature_processor import GENERATE_DEFAULTS

FIXED_LOGITS = torch.tensor([0.6, 0.3, 0.0, -0.3, -0.6])
VOCAB = len(FIXED_LOGITS)
PAD = 4  # also the EOS token where a test needs one


def annealed_by_hand(t, step, tau_max=1.2, tau_min=0.1, warmup=10, d0=25.0, alpha=5.0, d_max=40000.0, scale=20.0):
    if t < warmup:
        return 1.0
    d_s = min(d0 + alpha * step, d_max)
    return max(1.0 + tau_max - math.exp(t / (scale * d_s)), tau_min)


# ---------------------------------------------------------------- schedules


def test_annealed_matches_formula_warmup_and_clamp():
    positions = torch.arange(500)
    taus = AnnealedTemperature().temperatures(positions, step=0)
    assert taus.dtype == torch.float32 and taus.shape == positions.shape
    assert torch.equal(taus[:10], torch.ones(10))
    expected = torch.tensor([annealed_by_hand(t, 0) for t in range(500)])
    torch.testing.assert_close(taus, expected, atol=1e-6, rtol=0)
    # t counts from the first completion token: the first annealed value is 2.2 - exp(10 / 500).
    assert taus[10].item() == pytest.approx(2.2 - math.exp(10 / 500), abs=1e-6)
    # Scale 20, d0 = 25: tau >= 1 while exp(t / 500) <= 1.2 (t <= 500 ln 1.2 = 91.2) and tau_min
    # from exp(t / 500) >= 2.1 (t >= 500 ln 2.1 = 370.97).
    assert (taus >= 1.0).nonzero().max().item() == 91
    assert (taus == 0.1).nonzero().min().item() == 371
    assert torch.all(taus[371:] == 0.1)


def test_annealed_paper_scale_reaches_tau_min_after_19_tokens():
    taus = AnnealedTemperature(horizon_scale=1.0).temperatures(torch.arange(40), step=0)
    # exp(t / 25) >= 2.1 from t >= 25 ln 2.1 = 18.55; below 1 right after the warm-up (t = 10).
    assert (taus == 0.1).nonzero().min().item() == 19
    assert taus[10].item() == pytest.approx(2.2 - math.exp(0.4), abs=1e-6)
    assert taus[10].item() < 1.0


def test_annealed_horizon_grows_with_step_and_caps_at_d_max():
    schedule = AnnealedTemperature()
    position = torch.tensor([200])
    at_step_0 = schedule.temperatures(position, 0).item()
    at_step_100 = schedule.temperatures(position, 100).item()
    assert at_step_100 == pytest.approx(2.2 - math.exp(200 / (20 * 525)), abs=1e-6)
    assert at_step_100 > at_step_0  # larger d_s decays more slowly: hotter
    capped = AnnealedTemperature(d_max=100.0)
    assert capped.horizon(10**6) == 100.0
    torch.testing.assert_close(
        capped.temperatures(torch.arange(300), 15), capped.temperatures(torch.arange(300), 10**6), atol=0, rtol=0
    )
    assert capped.temperatures(torch.tensor([300]), 15).item() == pytest.approx(2.2 - math.exp(300 / 2000), abs=1e-6)


def test_reverse_annealed_mirrors_annealed():
    forward = AnnealedTemperature(tau_min=0.3, horizon_scale=1.0)
    reverse = ReverseAnnealedTemperature(tau_min=0.3, horizon_scale=1.0)
    positions = torch.arange(60)
    f, r = forward.temperatures(positions, 0), reverse.temperatures(positions, 0)
    assert torch.equal(r[:10], torch.ones(10))
    torch.testing.assert_close(r[10:], 1.5 - f[10:], atol=1e-6, rtol=0)
    assert r[10].item() == pytest.approx(0.3 + 1.2 - (2.2 - math.exp(0.4)), abs=1e-6)
    assert r[-1].item() == pytest.approx(1.2, abs=1e-6)  # cold to hot, capped at tau_max


def test_linear_and_constant():
    taus = LinearTemperature(start=1.0, end=0.2, length=4).temperatures(torch.tensor([0, 1, 2, 4, 9]), 0)
    torch.testing.assert_close(taus, torch.tensor([1.0, 0.8, 0.6, 0.2, 0.2]))
    rising = LinearTemperature(start=0.0, end=1.0, length=2).temperatures(torch.tensor([[0, 1], [2, 3]]), 5)
    torch.testing.assert_close(rising, torch.tensor([[0.0, 0.5], [1.0, 1.0]]))
    assert torch.equal(ConstantTemperature(0.7).temperatures(torch.arange(3), 9), torch.full((3,), 0.7))


def test_build_schedule():
    assert build_schedule(0.7) == ConstantTemperature(0.7)
    assert build_schedule({"type": "constant", "value": 0.0}) == ConstantTemperature(0.0)
    assert build_schedule({"type": "annealed", "tau_min": 0.8, "horizon_scale": 1}) == AnnealedTemperature(
        tau_min=0.8, horizon_scale=1
    )
    assert isinstance(build_schedule({"type": "reverse_annealed"}), ReverseAnnealedTemperature)
    assert build_schedule({"type": "linear", "start": 1.0, "end": 0.5, "length": 8}) == LinearTemperature(1.0, 0.5, 8)
    schedule = AnnealedTemperature()
    assert build_schedule(schedule) is schedule


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "cosine"}, "unknown temperature schedule type 'cosine'"),
        ({"tau_max": 1.0}, "unknown temperature schedule type None"),
        ({"type": "annealed", "tau_mn": 0.1}, r"unknown key\(s\) \['tau_mn'\]"),
        ({"type": "annealed", "tau_min": 0.0}, "tau_min must be > 0"),
        ({"type": "annealed", "tau_min": 1.5}, r"tau_min \(1.5\) must be <= tau_max"),
        ({"type": "annealed", "d0": 0}, "d0 must be > 0"),
        ({"type": "annealed", "horizon_scale": -1}, "horizon_scale must be > 0"),
        ({"type": "annealed", "d_max": 10}, r"d_max \(10\) must be >= d0"),
        ({"type": "annealed", "warmup_tokens": 2.5}, "warmup_tokens must be an int"),
        ({"type": "constant", "value": -0.1}, "value must be >= 0"),
        ({"type": "linear", "start": 1.0, "end": 0.5}, "schedule type 'linear'.*length"),
        ({"type": "linear", "start": 1.0, "end": 0.5, "length": 0}, "length must be an int >= 1"),
        (-1.0, "value must be >= 0"),
        ("hot", "must be a number or a dict"),
    ],
)
def test_build_schedule_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(spec)


def test_schedule_rejects_bad_positions_and_step():
    with pytest.raises(ValueError, match="integer tensor"):
        ConstantTemperature(1.0).temperatures(torch.tensor([0.5]), 0)
    with pytest.raises(ValueError, match="positions must be >= 0"):
        ConstantTemperature(1.0).temperatures(torch.tensor([-1]), 0)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        AnnealedTemperature().temperatures(torch.tensor([3]), -2)


# ---------------------------------------------------------------- generation config


def sampling_config(**overrides):
    settings = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=7, pad_token_id=PAD)
    return GenerationConfig(**(settings | overrides))


def test_check_generation_config():
    check_generation_config(sampling_config())
    with pytest.raises(ValueError, match="top_k must be 0 .*got 50"):
        check_generation_config(GenerationConfig(do_sample=True))  # None falls back to generate's 50
    with pytest.raises(ValueError, match="top_k must be 0 .*got 20.*top_p must be 1.0, got 0.8"):
        check_generation_config(GenerationConfig(do_sample=True), GenerationConfig(top_k=20, top_p=0.8))
    with pytest.raises(ValueError, match="temperature must be 1.0.*got 0.7"):
        check_generation_config(sampling_config(temperature=0.7))
    with pytest.raises(ValueError, match="min_p must be None or 0, got 0.05"):
        check_generation_config(sampling_config(min_p=0.05))
    with pytest.raises(ValueError, match="do_sample must be True"):
        check_generation_config(sampling_config(do_sample=False))
    with pytest.raises(ValueError, match="num_beams must be 1"):
        check_generation_config(sampling_config(num_beams=2))


def test_generate_defaults_match_transformers():
    defaults = GenerationConfig._get_default_generation_params()
    assert {name: defaults[name] for name in GENERATE_DEFAULTS} == GENERATE_DEFAULTS


# ---------------------------------------------------------------- processor inside generate


def fixed_logits_model(logits):
    """A tiny Qwen2 whose next-token logits are `logits` at every position.

    The final norm's weight is 0, so hidden states are 0 and logits equal the lm_head bias.
    """
    config = Qwen2Config(
        vocab_size=len(logits),
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=PAD,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.lm_head = nn.Linear(8, len(logits), bias=True)
        model.lm_head.weight.zero_()
        model.lm_head.bias.copy_(logits)
    return model


def left_padded_prompts(rows, width=5):
    """Prompts of 2..width tokens, left-padded to `width`; row r has r % (width - 1) pads."""
    input_ids = torch.randint(0, VOCAB - 1, (rows, width))
    attention_mask = torch.ones_like(input_ids)
    for row in range(rows):
        pads = row % (width - 1)
        input_ids[row, :pads] = PAD
        attention_mask[row, :pads] = 0
    return input_ids, attention_mask


def generate(model, processor, rows, seed=0, **config):
    torch.manual_seed(seed)
    input_ids, attention_mask = left_padded_prompts(rows)
    generation_config = sampling_config(**config)
    check_generation_config(generation_config, model.generation_config)
    with torch.no_grad():
        sequences = model.generate(
            input_ids, attention_mask=attention_mask, generation_config=generation_config, logits_processor=[processor]
        )
    return sequences[:, input_ids.shape[1] :], attention_mask


def chi_square_p_value(tokens, probabilities):
    """Pearson chi-square goodness of fit; the chi2(k) cdf is the regularised gamma P(k/2, x/2)."""
    counts = torch.bincount(tokens, minlength=len(probabilities)).double()
    expected = len(tokens) * probabilities.double()
    assert expected.min() >= 5, "chi-square approximation needs >= 5 expected counts per bin"
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor((len(probabilities) - 1) / 2, dtype=torch.float64)
    return 1.0 - torch.special.gammainc(dof, statistic / 2).item()


# warm-up 2, then 2.2 - exp(t / 10) clamped at 0.5: [1, 1, 0.979, 0.850, 0.708, 0.551, 0.5]
SHORT_ANNEALED = AnnealedTemperature(tau_max=1.2, tau_min=0.5, warmup_tokens=2, d0=10.0, horizon_scale=1.0)
SHORT_ANNEALED_TAUS = [annealed_by_hand(t, 0, tau_min=0.5, warmup=2, d0=10.0, scale=1.0) for t in range(7)]


def test_sampled_frequencies_follow_schedule_with_left_padding():
    model = fixed_logits_model(FIXED_LOGITS)
    processor = ScheduledTemperatureProcessor(SHORT_ANNEALED, prompt_length=5)
    completions, attention_mask = generate(model, processor, rows=4000)
    assert completions.shape == (4000, 7)
    padded = attention_mask[:, 0] == 0
    for t, tau in enumerate(SHORT_ANNEALED_TAUS):
        expected = torch.softmax(FIXED_LOGITS / tau, -1)
        # each padding group on its own: position counts from each row's first completion token
        assert chi_square_p_value(completions[padded, t], expected) > 1e-3, (t, tau)
        assert chi_square_p_value(completions[~padded, t], expected) > 1e-3, (t, tau)
        if abs(tau - 1.0) > 0.25:  # the test has the power to see a missing schedule
            assert chi_square_p_value(completions[:, t], torch.softmax(FIXED_LOGITS, -1)) < 1e-6, (t, tau)


def test_per_row_schedules_portfolio_and_greedy_rows():
    portfolio = [
        ConstantTemperature(0.5),
        ConstantTemperature(2.0),
        LinearTemperature(2.0, 0.5, 3),
        ConstantTemperature(0.0),
    ]
    rows = 4 * 900
    processor = ScheduledTemperatureProcessor([portfolio[row % 4] for row in range(rows)], prompt_length=5)
    completions, _ = generate(model=fixed_logits_model(FIXED_LOGITS), processor=processor, rows=rows, seed=1)
    linear_taus = [2.0, 1.5, 1.0, 0.5, 0.5]
    for t in range(5):
        for member, tau in enumerate([0.5, 2.0, linear_taus[t]]):
            tokens = completions[member::4, t]
            assert chi_square_p_value(tokens, torch.softmax(FIXED_LOGITS / tau, -1)) > 1e-3, (member, t)
    assert torch.all(completions[3::4] == 0)  # greedy rows always take the argmax


def test_behaviour_logps_exact_at_every_position_including_last():
    step = 3
    schedule = AnnealedTemperature(tau_max=1.2, tau_min=0.4, warmup_tokens=2, d0=4.0, alpha=2.0, horizon_scale=1.0)
    rows = 12
    schedules = [schedule if row % 3 else ConstantTemperature(0.0) for row in range(rows)]
    processor = ScheduledTemperatureProcessor(schedules, prompt_length=5, step=step)
    completions, _ = generate(fixed_logits_model(FIXED_LOGITS), processor, rows=rows, seed=2)
    behaviour_logps, temperatures = processor.finalize(completions)

    by_hand = [annealed_by_hand(t, step, tau_min=0.4, warmup=2, d0=4.0, alpha=2.0, scale=1.0) for t in range(7)]
    expected_taus = torch.tensor([by_hand if row % 3 else [0.0] * 7 for row in range(rows)])
    torch.testing.assert_close(temperatures, expected_taus, atol=1e-6, rtol=0)
    sampled = completions[1::3].tolist() + completions[2::3].tolist()
    assert len({token for row in sampled for token in row}) > 1  # really sampled, not greedy
    for row in range(rows):
        for t in range(7):
            token = completions[row, t]
            if row % 3 == 0:
                assert behaviour_logps[row, t].item() == 0.0 and token.item() == 0
            else:
                reference = torch.log_softmax(FIXED_LOGITS.double() / by_hand[t], -1)[token].item()
                assert behaviour_logps[row, t].item() == pytest.approx(reference, abs=1e-6), (row, t)


def test_batch_stays_fixed_when_rows_finish_early():
    """Rows hitting EOS keep their slot (padded), so positions stay aligned for all rows."""
    processor = ScheduledTemperatureProcessor(SHORT_ANNEALED, prompt_length=5)
    completions, _ = generate(fixed_logits_model(FIXED_LOGITS), processor, rows=64, seed=3, eos_token_id=PAD)
    behaviour_logps, _ = processor.finalize(completions)
    length = completions.shape[1]
    ended = (completions == PAD).int().cumsum(1)
    assert completions.shape[0] == 64 and ended[:, -1].min() == 0 and ended[:, -1].max() > 0  # some rows ended
    for row in range(64):
        for t in range(length):
            if t == 0 or ended[row, t - 1] == 0:  # tokens up to and including EOS are real samples
                reference = torch.log_softmax(FIXED_LOGITS / SHORT_ANNEALED_TAUS[t], -1)[completions[row, t]]
                assert behaviour_logps[row, t].item() == pytest.approx(reference.item(), abs=1e-6)


# ---------------------------------------------------------------- processor called by hand


def test_finalize_uses_each_steps_own_logits_and_handles_undone_steps():
    torch.manual_seed(4)
    schedule = LinearTemperature(start=1.5, end=0.5, length=3)
    processor = ScheduledTemperatureProcessor(schedule, prompt_length=2)
    sequences = torch.zeros(3, 2, dtype=torch.long)
    step_logits = torch.randn(5, 3, 7)
    for logits in step_logits:
        processed = processor(sequences, logits.clone())
        token = torch.multinomial(torch.softmax(processed, -1), 1)
        sequences = torch.cat([sequences, token], 1)
    taus = torch.tensor([1.5, 1.5 - 1 / 3, 0.5 + 1 / 3, 0.5, 0.5])
    completions = sequences[:, 2:]
    reference = torch.stack(
        [torch.log_softmax(step_logits[t] / taus[t], -1).gather(1, completions[:, t : t + 1])[:, 0] for t in range(5)],
        1,
    )
    # generate may undo its last step (deferred stop checks): the shorter completion must still align
    shorter, _ = processor.finalize(completions[:, :4])
    torch.testing.assert_close(shorter, reference[:, :4], atol=1e-6, rtol=0)

    processor.reset(prompt_length=2, step=0)
    replay = sequences[:, :2]
    for t, logits in enumerate(step_logits):
        processor(replay, logits.clone())
        replay = sequences[:, : 3 + t]
    padded = torch.cat([completions, torch.full((3, 2), PAD)], 1)  # extra trailing padding columns
    behaviour_logps, temperatures = processor.finalize(padded)
    torch.testing.assert_close(behaviour_logps[:, :5], reference, atol=1e-6, rtol=0)
    assert torch.equal(behaviour_logps[:, 5:], torch.zeros(3, 2))
    torch.testing.assert_close(temperatures, torch.cat([taus, torch.tensor([0.5, 0.5])]).expand(3, 7))


def test_processor_rejects_misuse():
    processor = ScheduledTemperatureProcessor(ConstantTemperature(1.0), prompt_length=3)
    processor(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="expected completion position 1 .*reset"):
        processor(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 5))  # a new generate without reset
    with pytest.raises(ValueError, match="batch size changed from 2 to 1"):
        processor(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5))
    processor(torch.tensor([[0, 0, 0, 3], [0, 0, 0, 1]]), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="do not match the tokens sampled"):
        processor.finalize(torch.tensor([[0, 0, 0, 3, 2], [0, 0, 0, 1, 2]]))  # full sequences, not completions
    per_row = ScheduledTemperatureProcessor([ConstantTemperature(1.0)] * 3, prompt_length=3)
    with pytest.raises(ValueError, match="3 per-row schedules given for a batch of 2 rows"):
        per_row(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="schedules must be a TemperatureSchedule"):
        ScheduledTemperatureProcessor([0.7], prompt_length=3)
    with pytest.raises(ValueError, match="prompt_length must be an int >= 0"):
        ScheduledTemperatureProcessor(ConstantTemperature(1.0), prompt_length=-1)


def test_without_recording_only_temperatures_come_back():
    schedules = [ConstantTemperature(0.5), ConstantTemperature(0.0)]
    processor = ScheduledTemperatureProcessor(schedules, prompt_length=1, record_logprobs=False)
    scores = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    processed = processor(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.equal(processed[0], scores[0] / 0.5)
    assert processed[1, 1] == 3.0 and torch.all(torch.isneginf(processed[1, [0, 2]]))
    behaviour_logps, temperatures = processor.finalize(torch.tensor([[2], [1]]))
    assert behaviour_logps is None
    assert torch.equal(temperatures, torch.tensor([[0.5], [0.0]]))
