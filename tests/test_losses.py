"""Tests for thermorl.losses: hand-computed values, gradient identities, and agreement with TRL's GRPOTrainer."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from thermorl.losses import LOSSES, get_loss, loss_inputs, loss_parameters, register_loss, validate_loss_kwargs
from thermorl.losses.adpo import adaptive_anchor_temperature, anchored_listwise_loss
from thermorl.losses.common import AGGREGATIONS, PolicyTerms, aggregate
from thermorl.losses.sapo import sapo_gate_weight


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def logps_for_ratios(ratios, old):
    """Current log-probs (a grad leaf) that give the wanted ratios against `old`."""
    return leaf((torch.log(torch.tensor(ratios, dtype=torch.float64)) + old).tolist())


def random_batch(seed: int, batch: int = 4, length: int = 5):
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=generator, dtype=torch.float64) * 3
    logps = (old + 0.3 * torch.randn(batch, length, generator=generator, dtype=torch.float64)).requires_grad_()
    advantages = torch.randn(batch, generator=generator, dtype=torch.float64)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, -2:] = False
    mask[3, -1:] = False
    return logps, old, advantages, mask


ALL_LOSSES = sorted(LOSSES)


def required_inputs(name: str) -> dict:
    """Inputs the trainer always supplies: the group size (ADPO), the tokens per micro-batch (batch_token_mean)."""
    return {"tokens_per_micro_batch": 7.0, **({"group_size": 2} if name == "adpo" else {})}


# ---------------------------------------------------------------- registry


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="'ppo'.*valid losses: adpo, cispo, grpo, gspo, gspo_token, sapo, vespo"):
        get_loss("ppo")


def test_validate_loss_kwargs_names_unknown_key_and_lists_valid_ones():
    validate_loss_kwargs("grpo", {"eps_low": 0.2, "eps_high": 0.28, "aggregation": "token_mean"})
    valid = "beta, aggregation, eps_low, eps_high, delta, kl_bias_correction"
    with pytest.raises(ValueError, match=rf"'epsilon'.*'grpo'.*valid: {valid}"):
        validate_loss_kwargs("grpo", {"eps_low": 0.2, "epsilon": 0.2})
    # tensors and the group size come from the trainer, not from the user
    with pytest.raises(ValueError, match="'group_size'"):
        validate_loss_kwargs("adpo", {"group_size": 8})
    with pytest.raises(ValueError, match="'sum'.*token_mean"):
        validate_loss_kwargs("sapo", {"aggregation": "sum"})


def test_loss_parameters_and_inputs_come_from_the_signature():
    expected_sapo = {
        "beta": 0.0, "aggregation": "seq_mean_token_mean", "tau_pos": 1.0, "tau_neg": 1.05, "kl_bias_correction": False
    }
    assert loss_parameters("sapo") == expected_sapo
    assert loss_parameters("gspo")["eps_low"] == 3e-4 and loss_parameters("gspo")["eps_high"] == 4e-4
    assert "group_size" in loss_inputs("adpo") and "group_size" not in loss_parameters("adpo")
    assert loss_parameters("adpo")["tau_anc"] == 0.8 and loss_parameters("adpo")["beta_r"] == 0.5


def test_yaml_numbers_read_as_strings_become_numbers():
    # YAML 1.1 reads 3e-4 (no dot) as the string '3e-4'
    params = yaml.safe_load("{eps_low: 3e-4, eps_high: 4e-4, delta: 2}")
    assert params == {"eps_low": "3e-4", "eps_high": "4e-4", "delta": 2}
    coerced = validate_loss_kwargs("gspo", params)
    assert coerced == {"eps_low": 3e-4, "eps_high": 4e-4, "delta": 2.0}
    assert all(type(v) is float for v in coerced.values())


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("grpo", {"eps_low": -0.1}, r"Loss 'grpo': parameter 'eps_low' must lie in \[0, 1\), got -0.1"),
        ("grpo", {"eps_low": 1.5}, r"'eps_low' must lie in \[0, 1\)"),
        ("gspo", {"eps_high": -4e-4}, r"Loss 'gspo': parameter 'eps_high' must lie in \[0, inf\)"),
        ("grpo", {"delta": 0.9}, r"'delta' must lie in \(1, inf\)"),
        ("sapo", {"tau_pos": 0}, r"Loss 'sapo': parameter 'tau_pos' must lie in \(0, inf\), got 0.0"),
        ("sapo", {"tau_neg": -1.05}, r"'tau_neg' must lie in \(0, inf\)"),
        ("adpo", {"tau_anc": 0.0}, r"Loss 'adpo': parameter 'tau_anc' must lie in \(0, inf\)"),
        ("adpo", {"beta_r": -1}, r"'beta_r' must lie"),
        ("adpo", {"tau_min": 2.0, "tau_max": 1.0}, r"Loss 'adpo': tau_min=2.0 must not exceed tau_max=1.0"),
        ("cispo", {"ratio_cap": 0}, r"Loss 'cispo': parameter 'ratio_cap' must lie in \(0, inf\)"),
        ("vespo", {"lambda_neg": 0}, r"Loss 'vespo': parameter 'lambda_neg'"),
        ("sapo", {"tau_pos": "high"}, r"Loss 'sapo': parameter 'tau_pos' must be a number, got 'high' \(str\)"),
        ("sapo", {"tau_pos": True}, r"'tau_pos' must be a number, got True"),
        ("sapo", {"tau_pos": float("nan")}, r"'tau_pos' must be a number, got NaN"),
        ("grpo", {"eps_high": [0.2]}, r"'eps_high' must be a number"),
        ("grpo", {"kl_bias_correction": "yes"}, r"Loss 'grpo': parameter 'kl_bias_correction' must be a bool"),
        ("sapo", {"aggregation": 1}, r"'aggregation' must be a str"),
        ("adpo", {"adaptive_tau": 1}, r"'adaptive_tau' must be a bool"),
    ],
)
def test_bad_parameter_values_are_refused_naming_loss_and_parameter(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        validate_loss_kwargs(name, kwargs)


def test_register_loss_checks_its_ranges():
    def loss(per_token_logps, old_per_token_logps, advantages, completion_mask, *, eps: float = 0.1):
        return PolicyTerms(per_token_logps, torch.ones_like(per_token_logps), {})

    with pytest.raises(ValueError, match=r"ranges for \['epsilon'\], which are not its parameters"):
        register_loss("test_ranges_loss", ranges={"epsilon": "[0, 1)"})(loss)
    assert "test_ranges_loss" not in LOSSES


def test_register_loss_rejects_a_taken_name():
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_loss("grpo")(LOSSES["sapo"])


# ---------------------------------------------------------------- aggregation, KL, token weights


def test_aggregations_against_hand_computation():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx((1 + 2 + 4) / 3)
    assert aggregate(per_token, mask, "seq_mean_token_mean").item() == pytest.approx((1.5 + 4) / 2)
    assert aggregate(per_token, mask, "seq_mean_token_sum_norm").item() == pytest.approx((3 / 3 + 4 / 3) / 2)
    with pytest.raises(ValueError, match="'mean'.*seq_mean_token_sum_norm"):
        aggregate(per_token, mask, "mean")


def test_trl_aggregations_against_hand_computation():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per_token, mask, "seq_mean_token_sum").item() == pytest.approx((3 + 4) / 2)
    # Dr. GRPO divides by the configured maximum length, not by the batch's padded width
    norm = aggregate(per_token, mask, "seq_mean_token_sum_norm", max_completion_length=8)
    assert norm.item() == pytest.approx((3 + 4) / (2 * 8))
    assert aggregate(per_token, mask, "batch_token_mean", tokens_per_micro_batch=14).item() == pytest.approx(7 / 14)
    with pytest.raises(ValueError, match="batch_token_mean' needs tokens_per_micro_batch"):
        aggregate(per_token, mask, "batch_token_mean")


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_zero_length_completions_give_finite_loss_and_metrics(name):
    """A micro-batch whose completions are all empty (e.g. every one truncated away): no IndexError, loss 0."""
    logps = torch.zeros(4, 0, dtype=torch.float64, requires_grad=True)
    old, mask = torch.zeros(4, 0, dtype=torch.float64), torch.zeros(4, 0, dtype=torch.bool)
    loss, metrics = get_loss(name)(logps, old, torch.tensor([1.0, -1.0, 0.5, -0.5]), mask, **required_inputs(name))
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    if name != "adpo":  # ADPO's empty sequences are equally likely: a constant cross-entropy against uniform p
        assert loss.item() == 0.0


def test_vespo_weight_is_one_at_ratio_one_and_its_gradient_is_reinforce():
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logps = old.clone().requires_grad_()
    advantages = torch.tensor([0.5, -2.0], dtype=torch.float64)
    loss, metrics = get_loss("vespo")(logps, old, advantages, torch.ones(2, 3), aggregation="token_mean")
    assert metrics["vespo/phi_seq_mean"] == pytest.approx(1.0)  # phi(1) = exp(lambda - lambda) = 1
    loss.backward()
    torch.testing.assert_close(logps.grad, -advantages[:, None].expand(2, 3) / 6)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_all_masked_row_gives_finite_loss_and_gradient(name, aggregation):
    logps, old, advantages, mask = random_batch(seed=1)
    mask[2] = False
    loss, metrics = get_loss(name)(logps, old, advantages, mask, aggregation=aggregation, **required_inputs(name))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())
    assert (logps.grad[2] == 0).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_old_logps_and_per_token_advantages(name):
    logps, old, advantages, mask = random_batch(seed=6)
    old.requires_grad_()
    loss, _ = get_loss(name)(logps, old, advantages, mask, **required_inputs(name))
    loss.backward()
    assert old.grad is None  # old log-probs are constants
    # an advantage given per token, constant along each sequence, acts like the per-sequence one
    token_loss, _ = get_loss(name)(logps, old, advantages[:, None].expand(mask.shape), mask, **required_inputs(name))
    torch.testing.assert_close(token_loss, loss)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_huge_log_ratios_give_finite_loss_and_gradient(name):
    logps, old, advantages, mask = random_batch(seed=2)
    huge = torch.tensor([1e4, -1e4, 50.0, -50.0, 0.0], dtype=torch.float64)
    logps = (old + huge).detach().requires_grad_()
    ref = old - huge
    loss, metrics = get_loss(name)(
        logps, old, advantages, mask, ref_per_token_logps=ref, beta=0.1, **required_inputs(name)
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_kl_penalty_is_k3_and_is_not_scaled_by_token_weights():
    old = torch.full((1, 3), -1.0, dtype=torch.float64)
    logps = old.clone().requires_grad_()  # ratio 1 and A = 0: the policy term vanishes
    ref = old + torch.tensor([[0.5, -0.3, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = get_loss("grpo")(
        logps, old, torch.zeros(1), mask, ref_per_token_logps=ref, beta=0.1, token_weights=torch.zeros(1, 3)
    )
    kl = [math.exp(d) - d - 1 for d in (0.5, -0.3)]
    assert loss.item() == pytest.approx(0.1 * sum(kl) / 2)
    assert metrics["kl"] == pytest.approx(sum(kl) / 2)
    with pytest.raises(ValueError, match="beta=0.1 needs ref_per_token_logps"):
        get_loss("sapo")(logps, old, torch.zeros(1), mask, beta=0.1)


def test_token_weights_multiply_the_policy_loss():
    old = torch.full((2, 2), -1.0, dtype=torch.float64)
    logps = old.clone().requires_grad_()  # ratio 1: per-token GRPO loss is -A
    weights = torch.tensor([[2.0, 0.5], [1.0, 3.0]], dtype=torch.float64)
    loss, _ = get_loss("grpo")(logps, old, torch.tensor([1.0, -2.0]), torch.ones(2, 2), token_weights=weights)
    assert loss.item() == pytest.approx(((-2.0 - 0.5) / 2 + (2.0 + 6.0) / 2) / 2)


# ---------------------------------------------------------------- GRPO


def test_grpo_hand_computed_2x3_and_zero_gradient_on_clipped_tokens():
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logps = logps_for_ratios([[1.5, 1.0, 0.5], [1.5, 0.5, 1.1]], old)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, metrics = get_loss("grpo")(logps, old, torch.tensor([1.0, -1.0]), mask)
    # row 0 (A = 1): -min(rA, clip(r)A) = -1.2 (clipped), -1.0, -0.5; row 1 (A = -1): 1.5, 0.8 (clipped)
    assert loss.item() == pytest.approx(((-1.2 - 1.0 - 0.5) / 3 + (1.5 + 0.8) / 2) / 2)
    loss.backward()
    # d loss / d logp = d loss / d r * r for unclipped tokens, scaled by 1 / (|y_i| * B)
    expected_grad = torch.tensor([[0.0, -1.0 / 6, -0.5 / 6], [1.5 / 4, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logps.grad, expected_grad)
    assert metrics["clip_ratio/low"] == pytest.approx(1 / 5)
    assert metrics["clip_ratio/high"] == pytest.approx(1 / 5)
    assert metrics["clip_ratio/region"] == pytest.approx(2 / 5)
    assert metrics["ratio/mean"] == pytest.approx((1.5 + 1.0 + 0.5 + 1.5 + 0.5) / 5)


# ---------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_hand_case():
    old = torch.full((1, 3), -2.0, dtype=torch.float64)
    logps = (old + torch.tensor([[0.1, 0.3, 5.0]], dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = get_loss("gspo")(logps, old, torch.tensor([2.0]), mask, eps_low=1.0, eps_high=1.0)
    seq_ratio = math.exp(0.2)
    assert loss.item() == pytest.approx(-2.0 * seq_ratio)
    assert metrics["ratio/mean"] == pytest.approx(seq_ratio)
    loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-seq_ratio, -seq_ratio, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.05, 0.1)])
@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_gspo_and_gspo_token_agree_when_advantage_is_per_sequence(aggregation, eps):
    logps, old, advantages, mask = random_batch(seed=3, batch=6)
    logps_token = logps.detach().clone().requires_grad_()
    kwargs = {"aggregation": aggregation, "eps_low": eps[0], "eps_high": eps[1]}
    loss, metrics = get_loss("gspo")(logps, old, advantages, mask, **kwargs)
    loss_token, _ = get_loss("gspo_token")(logps_token, old, advantages, mask, **kwargs)
    loss.backward()
    loss_token.backward()
    torch.testing.assert_close(loss, loss_token)
    torch.testing.assert_close(logps.grad, logps_token.grad)
    assert logps.grad.abs().sum() > 0


# ---------------------------------------------------------------- SAPO


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.05, 2.0, 10.0])
def test_sapo_gate_weight_is_one_at_ratio_one(tau):
    assert sapo_gate_weight(torch.tensor(1.0), tau).item() == pytest.approx(1.0)


@pytest.mark.parametrize("ratio, weight", [(1.2, 0.990), (1.5, 0.940), (2.0, 0.786), (5.0, 0.071)])
def test_sapo_gate_weight_table_at_tau_one(ratio, weight):
    assert round(sapo_gate_weight(torch.tensor(ratio), 1.0).item(), 3) == weight


def test_sapo_gradient_is_advantage_times_gate_weight_times_ratio():
    old = torch.full((2, 2), -1.5, dtype=torch.float64)
    ratios = [[1.5, 0.7], [2.0, 1.0]]
    logps = logps_for_ratios(ratios, old)
    advantages = torch.tensor([0.8, -1.2], dtype=torch.float64)
    tau_pos, tau_neg = 1.0, 1.7
    loss, metrics = get_loss("sapo")(
        logps, old, advantages, torch.ones(2, 2), tau_pos=tau_pos, tau_neg=tau_neg, aggregation="token_mean"
    )
    loss.backward()

    def gate(r, tau):
        p = 1 / (1 + math.exp(-tau * (r - 1)))
        return 4 * p * (1 - p)

    taus = [tau_pos, tau_neg]  # tau_neg is used for the row with A < 0
    expected_grad = [[-advantages[i].item() * gate(r, taus[i]) * r / 4 for r in row] for i, row in enumerate(ratios)]
    torch.testing.assert_close(logps.grad, torch.tensor(expected_grad, dtype=torch.float64))
    soft_ratios = [[4 / taus[i] / (1 + math.exp(-taus[i] * (r - 1))) for r in row] for i, row in enumerate(ratios)]
    expected_loss = sum(-advantages[i].item() * f for i, row in enumerate(soft_ratios) for f in row)
    assert loss.item() == pytest.approx(expected_loss / 4)
    weights = [gate(r, taus[i]) for i, row in enumerate(ratios) for r in row]
    assert metrics["sapo/gate_weight_mean"] == pytest.approx(sum(weights) / 4)
    assert metrics["sapo/gate_weight_below_half"] == pytest.approx(sum(w < 0.5 for w in weights) / 4)


# ---------------------------------------------------------------- ADPO


def test_adpo_pairwise_hard_label_is_dpo():
    beta = 2.0
    seq_logps = leaf([[-3.0, -4.5]])
    anchor = torch.tensor([[-3.2, -4.0]], dtype=torch.float64)
    loss = anchored_listwise_loss(seq_logps, anchor, torch.tensor([[1.0, 0.0]], dtype=torch.float64), 1 / beta)
    delta = (-3.0 - -4.5) - (-3.2 - -4.0)
    assert loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(beta * delta)).item())


def test_adpo_pairwise_soft_label_is_softplus_minus_linear_term():
    beta, q = 1.5, 0.3
    seq_logps = torch.tensor([[-3.0, -4.5]], dtype=torch.float64)
    anchor = torch.tensor([[-3.2, -4.0]], dtype=torch.float64)
    loss = anchored_listwise_loss(seq_logps, anchor, torch.tensor([[q, 1 - q]], dtype=torch.float64), 1 / beta)
    delta = (-3.0 - -4.5) - (-3.2 - -4.0)
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(beta * delta)).item() - q * beta * delta)


def test_adpo_gradient_is_p_minus_q_over_tau():
    tau = 0.7
    seq_logps = leaf([[-2.0, -1.0, -3.5, -2.2]])
    anchor = torch.tensor([[-2.5, -1.1, -3.0, -2.0]], dtype=torch.float64)
    target = torch.tensor([[0.1, 0.5, 0.3, 0.1]], dtype=torch.float64)
    anchored_listwise_loss(seq_logps, anchor, target, tau).sum().backward()
    u = [(a - b) / tau for a, b in zip([-2.0, -1.0, -3.5, -2.2], [-2.5, -1.1, -3.0, -2.0])]
    p = [math.exp(x) / sum(math.exp(y) for y in u) for x in u]
    expected = [(p_i - q_i) / tau for p_i, q_i in zip(p, [0.1, 0.5, 0.3, 0.1])]
    torch.testing.assert_close(seq_logps.grad, torch.tensor([expected], dtype=torch.float64))


def test_adpo_on_policy_anchor_gives_uniform_p():
    tau = 0.8
    seq_logps = leaf([[-2.0, -1.0, -3.5, -2.2]])
    target = torch.tensor([[0.1, 0.5, 0.3, 0.1]], dtype=torch.float64)
    anchored_listwise_loss(seq_logps, seq_logps.detach(), target, tau).sum().backward()
    expected = [(1 / 4 - q) / tau for q in [0.1, 0.5, 0.3, 0.1]]
    torch.testing.assert_close(seq_logps.grad, torch.tensor([expected], dtype=torch.float64))


def test_adpo_loss_hard_label_from_advantages_is_dpo_on_summed_token_logps():
    beta = 1.3
    anchor = torch.tensor([[-1.0, -0.5, -2.0], [-0.7, -1.2, -3.0]], dtype=torch.float64)
    logps = leaf([[-0.8, -0.6, -9.0], [-1.0, -1.1, -0.2]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    hard_label = {"beta_r": 1e-6, "group_size": 2}
    loss, metrics = get_loss("adpo")(logps, anchor, torch.tensor([1.0, -1.0]), mask, tau_anc=1 / beta, **hard_label)
    delta = (-1.4 - -2.3) - (-1.5 - -4.9)
    assert loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(beta * delta)).item())
    assert metrics["adpo/tau"] == pytest.approx(1 / beta)
    assert metrics["adpo/target_entropy"] == pytest.approx(0.0, abs=1e-9)
    p_win = 1 / (1 + math.exp(-beta * delta))
    assert metrics["adpo/policy_entropy"] == pytest.approx(-p_win * math.log(p_win) - (1 - p_win) * math.log(1 - p_win))


def test_adpo_token_weights_enter_as_sequence_means():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.9, -1.0]], dtype=torch.float64)
    logps = old.clone().requires_grad_()  # u = 0: p uniform over the pair
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    weights = torch.tensor([[2.0, 2.0, 9.0], [1.0, 0.5, 0.75]], dtype=torch.float64)
    loss, _ = get_loss("adpo")(logps, old, torch.tensor([0.5, -0.5]), mask, group_size=2, token_weights=weights)
    q_win = 1 / (1 + math.exp(-2.0))  # softmax((0.5, -0.5) / beta_r) with beta_r = 0.5
    assert loss.item() == pytest.approx(math.log(2) * (2.0 * q_win + 0.75 * (1 - q_win)))


def test_adpo_group_ids_regroup_rows_and_partial_groups_are_rejected():
    logps, old, advantages, mask = random_batch(seed=4, batch=6)
    loss, _ = get_loss("adpo")(logps + 0.1, old, advantages, mask, group_size=3)
    permutation = torch.tensor([4, 0, 2, 5, 1, 3])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])[permutation]
    shuffled = [(logps + 0.1)[permutation], old[permutation], advantages[permutation], mask[permutation]]
    shuffled_loss, _ = get_loss("adpo")(*shuffled, group_size=3, group_ids=group_ids)
    torch.testing.assert_close(loss, shuffled_loss)
    with pytest.raises(ValueError, match=r"whole groups.*group ids have \{5: 1, 7: 2\} members"):
        get_loss("adpo")(logps, old, advantages, mask, group_size=3, group_ids=torch.tensor([0, 0, 0, 5, 7, 7]))
    with pytest.raises(ValueError, match="whole groups.*6 rows is not a multiple of group_size=4"):
        get_loss("adpo")(logps, old, advantages, mask, group_size=4)


def test_adaptive_anchor_temperature_hand_values():
    entropy, reward = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0.25, 0.0, 1.0])
    tau = adaptive_anchor_temperature(0.8, entropy, reward, 1.0, 0.5, 0.1, 5.0)
    expected = [0.8 * (1 + 0.5 + 0.5 * 0.5 * 0.75), 0.8 * 2.0, 0.8]
    torch.testing.assert_close(tau, torch.tensor(expected))
    assert adaptive_anchor_temperature(4.0, torch.tensor([1.0]), torch.tensor([0.0]), 1.0, 0.5, 0.1, 5.0).item() == 5.0


def test_adpo_adaptive_tau_uses_group_entropy_and_reward():
    logps, old, advantages, mask = random_batch(seed=5)
    vocab_size = 50
    entropies = torch.full(mask.shape, 0.5 * math.log(vocab_size), dtype=torch.float64)
    rewards = torch.tensor([0.0, 0.5, 1.0, 1.0])  # group means 0.25 and 1.0
    kwargs = {"group_size": 2, "adaptive_tau": True, "entropies": entropies, "vocab_size": vocab_size}
    _, metrics = get_loss("adpo")(logps, old, advantages, mask, rewards=rewards, **kwargs)
    expected = [0.8 * (1 + 0.5 + 0.5 * 0.5 * 0.75), 0.8 * (1 + 0.5)]
    assert metrics["adpo/tau"] == pytest.approx(sum(expected) / 2)
    with pytest.raises(ValueError, match="adaptive_tau=True needs rewards"):
        get_loss("adpo")(logps, old, advantages, mask, **kwargs)


# ---------------------------------------------------------------- agreement with TRL's GRPOTrainer


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    tmp_path = tmp_path_factory.mktemp("trl")
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="<eos>"
    )
    config = Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        pad_token_id=0,
        eos_token_id=1,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        report_to=[],
        use_cpu=True,
        loss_type="grpo",
    )
    trainer = GRPOTrainer(
        model=str(tmp_path),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["ab", "cd"]}),
    )
    # As inside the training loop: train mode (TRL logs under "train"), one micro-batch per optimizer step
    # (the loop sets this, and TRL divides the train-mode loss by it).
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1

    generator = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(2, 32, (4, 3), generator=generator)
    completion_ids = torch.randint(2, 32, (4, 4), generator=generator)
    completion_mask = torch.ones(4, 4, dtype=torch.long)
    completion_mask[1, -1:] = 0
    completion_mask[3, -2:] = 0
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, 4)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([-1.0, 0.5, -0.7, 0.7]),
        # noise large enough that some ratios leave [0.8, 1.2] and get clipped
        "old_per_token_logps": logps + 0.3 * torch.randn(logps.shape, generator=generator),
        "ref_per_token_logps": logps + 0.2 * torch.randn(logps.shape, generator=generator),
        "num_items_in_batch": completion_mask.sum(),
    }
    return trainer, inputs, input_ids, attention_mask


GSPO_TRL = {"importance_sampling_level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4}
# plain k3 KL = TRL without its (default-on) importance-ratio correction of the KL term
KL_TRL = {"beta": 0.04, "use_bias_correction_kl": False}
BIAS_CORRECTED_KL_TRL = {"beta": 0.04, "use_bias_correction_kl": True}
BIAS_CORRECTED_KL = {"beta": 0.04, "kl_bias_correction": True}
SAPO_TRL = {"loss_type": "sapo", "sapo_temperature_pos": 0.9, "sapo_temperature_neg": 1.3}
VESPO = {"k_pos": 1.5, "lambda_pos": 2.5, "k_neg": 2.0, "lambda_neg": 1.5}
VESPO_TRL = {"loss_type": "vespo", **{f"vespo_{key}": value for key, value in VESPO.items()}}
BATCH = {"aggregation": "batch_token_mean"}  # TRL's dapo, cispo and vespo normalisation
# GRPOConfig fields TRL's _compute_loss reads from `args`; the others are trainer attributes
TRL_ARGS_FIELDS = ("delta", "use_bias_correction_kl", "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos",
                   "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")

# case: (our loss, TRL settings overridden on the trainer, our loss kwargs)
TRL_CASES = {
    "grpo": ("grpo", {}, {}),
    "grpo_clip_higher": ("grpo", {"epsilon_high": 0.28}, {"eps_high": 0.28}),
    "grpo_token_mean_vs_bnpo": ("grpo", {"loss_type": "bnpo"}, {"aggregation": "token_mean"}),
    "grpo_token_sum_norm_vs_dr_grpo": ("grpo", {"loss_type": "dr_grpo"}, {"aggregation": "seq_mean_token_sum_norm"}),
    "dr_grpo_normalises_by_max_completion_length": (
        "grpo",
        {"loss_type": "dr_grpo", "max_completion_length": 7},
        {"aggregation": "seq_mean_token_sum_norm", "max_completion_length": 7},
    ),
    "grpo_batch_token_mean_vs_dapo": ("grpo", {"loss_type": "dapo"}, BATCH),
    "grpo_token_sum_vs_luspo_token": ("grpo", {"loss_type": "luspo"}, {"aggregation": "seq_mean_token_sum"}),
    "gspo_token_sum_vs_luspo": (
        "gspo",
        {"loss_type": "luspo", "importance_sampling_level": "sequence"},
        {"aggregation": "seq_mean_token_sum", "eps_low": 0.2, "eps_high": 0.2},
    ),
    "grpo_delta": ("grpo", {"delta": 1.25}, {"delta": 1.25}),
    "gspo_delta": ("gspo", {**GSPO_TRL, "delta": 1.1}, {"delta": 1.1}),
    "grpo_kl": ("grpo", KL_TRL, {"beta": 0.04}),
    "grpo_bias_corrected_kl": ("grpo", BIAS_CORRECTED_KL_TRL, BIAS_CORRECTED_KL),
    "sapo": ("sapo", SAPO_TRL, {"tau_pos": 0.9, "tau_neg": 1.3}),
    "sapo_bias_corrected_kl": ("sapo", {**SAPO_TRL, **BIAS_CORRECTED_KL_TRL}, {"tau_pos": 0.9, "tau_neg": 1.3,
                                                                             **BIAS_CORRECTED_KL}),
    "gspo": ("gspo", GSPO_TRL, {}),
    "gspo_kl": ("gspo", {**GSPO_TRL, **KL_TRL}, {"beta": 0.04}),
    "gspo_bias_corrected_kl": ("gspo", {**GSPO_TRL, **BIAS_CORRECTED_KL_TRL}, BIAS_CORRECTED_KL),
    "cispo": ("cispo", {"loss_type": "cispo", "epsilon_high": 1.1}, {"ratio_cap": 1.1, **BATCH}),
    "cispo_bias_corrected_kl": (
        "cispo",
        {"loss_type": "cispo", "epsilon_high": 1.1, **BIAS_CORRECTED_KL_TRL},
        {"ratio_cap": 1.1, **BATCH, **BIAS_CORRECTED_KL},
    ),
    "vespo": ("vespo", {"loss_type": "vespo"}, BATCH),
    "vespo_parameters_and_kl": ("vespo", {**VESPO_TRL, **BIAS_CORRECTED_KL_TRL}, {**VESPO, **BATCH,
                                                                                  **BIAS_CORRECTED_KL}),
}
# TRL's metric name for each of ours
TRL_METRICS = {
    "clip_ratio/low": "clip_ratio/low_mean",
    "clip_ratio/high": "clip_ratio/high_mean",
    "clip_ratio/region": "clip_ratio/region_mean",
    "cispo/clip_ratio": "cispo_clip_ratio",
    "vespo/phi_seq_mean": "vespo/phi_seq_mean",
    "kl": "kl",
}


@pytest.mark.parametrize("case", list(TRL_CASES))
def test_matches_trl_grpo_trainer(trl_setup, monkeypatch, case):
    trainer, inputs, input_ids, attention_mask = trl_setup
    name, trl_settings, our_kwargs = TRL_CASES[case]
    for key, value in trl_settings.items():
        monkeypatch.setattr(trainer.args if key in TRL_ARGS_FIELDS else trainer, key, value)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    trainer._metrics["train"].clear()
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_grads = torch.autograd.grad(trl_loss, params)

    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, 4)
    ref = inputs["ref_per_token_logps"] if "beta" in our_kwargs else None
    batch = [inputs[key] for key in ("old_per_token_logps", "advantages", "completion_mask")]
    # one process, one micro-batch per generation: the step's tokens all fall in this micro-batch
    tokens = inputs["num_items_in_batch"]
    loss, metrics = get_loss(name)(logps, *batch, ref_per_token_logps=ref, tokens_per_micro_batch=tokens, **our_kwargs)
    grads = torch.autograd.grad(loss, params)

    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    for ours, theirs in zip(grads, trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    trl_metrics = trainer._metrics["train"]
    compared = [key for key in TRL_METRICS if key in metrics]
    assert compared or name == "sapo"
    for key in compared:
        assert metrics[key] == pytest.approx(trl_metrics[TRL_METRICS[key]][-1]), key


def test_trl_comparison_exercises_every_regime(trl_setup):
    """The inputs above reach clipping, the delta cap, the CISPO cap and a non-trivial VESPO weight."""
    trainer, inputs, input_ids, attention_mask = trl_setup
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, 4)
    batch = [inputs[key] for key in ("old_per_token_logps", "advantages", "completion_mask")]
    _, metrics = get_loss("grpo")(logps, *batch)
    assert 0 < metrics["clip_ratio/region"] < 1
    for name, delta in (("grpo", 1.25), ("gspo", 1.1)):
        capped, _ = get_loss(name)(logps, *batch, delta=delta)
        uncapped, _ = get_loss(name)(logps, *batch)
        assert capped.item() != pytest.approx(uncapped.item())
    _, metrics = get_loss("cispo")(logps, *batch, ratio_cap=1.1)
    assert 0 < metrics["cispo/clip_ratio"] < 1
    _, metrics = get_loss("vespo")(logps, *batch)
    assert 0 < metrics["vespo/phi_seq_mean"] < 0.99


