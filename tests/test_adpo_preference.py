"""Tests for offline ADPO: the loss against hand-computed values and gradients, ThermoADPOTrainer against TRL's own
DPO loss and against log-probs computed by hand from the model, anchors (EMA, periodic copy), data errors, recipe."""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from thermorl.losses.adpo_preference import adpo_preference_loss, pairwise_target_probs, score_target_probs
from thermorl.trainers import ThermoADPOConfig, ThermoADPOTrainer
from thermorl.trainers.adpo import preference_pairs_from_task

PAIRS = [
    {"prompt": "12+7=", "chosen": "19", "rejected": "91"},
    {"prompt": "3+45=", "chosen": "48", "rejected": "4"},
    {"prompt": "60+6=", "chosen": "66", "rejected": "606"},
    {"prompt": "8+8=", "chosen": "16", "rejected": "88"},
]
LISTS = [
    {"prompt": "12+7=", "completions": ["19", "91", "1"], "scores": [1.0, 0.0, -0.5]},
    {"prompt": "3+45=", "completions": ["4", "48", "345"], "scores": [0.0, 2.0, 0.5]},
]


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def fast_args(tmp_path, config_class=ThermoADPOConfig, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[],
        save_strategy="no", disable_tqdm=True, seed=0, per_device_train_batch_size=2, learning_rate=1e-2,
        logging_steps=1, max_steps=1,
    )
    return config_class(**{**settings, **overrides})


def perturbed_policy(model_dir: str):
    """The model with seeded noise on its weights, so the policy differs from the reference loaded from `model_dir`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def sequence_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """Sum of log pi(completion token | prefix), from the model's plain logits."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    positions = torch.arange(len(prompt_ids) - 1, ids.size(1) - 1)
    return log_probs[positions, ids[0, positions + 1]].sum()


# ---------------------------------------------------------------- the loss


def test_hard_pairwise_is_dpo_sigmoid_with_its_gradient():
    beta = 0.1
    chosen, rejected = leaf([-3.0, -5.0]), leaf([-4.0, -2.5])
    anchor_chosen, anchor_rejected = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, _ = adpo_preference_loss(
        torch.stack([chosen, rejected], -1),
        torch.stack([anchor_chosen, anchor_rejected], -1).double(),
        pairwise_target_probs(torch.ones(2, dtype=torch.float64)),
        tau_anc=1 / beta,
    )
    delta = torch.tensor([(-3.0 + 4.0) - (-3.5 + 3.0), (-5.0 + 2.5) - (-4.0 + 3.0)], dtype=torch.float64)
    assert loss.item() == pytest.approx(-F.logsigmoid(beta * delta).mean().item(), abs=1e-12)
    loss.backward()
    # d/dl_c of -log sigmoid(beta Delta), averaged over 2 pairs: -beta (1 - sigmoid(beta Delta)) / 2
    expected = -beta * (1 - torch.sigmoid(beta * delta)) / 2
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)


def test_soft_pairwise_value_and_gradient_by_hand():
    tau, q = 0.5, 0.8
    seq = leaf([[-1.0, -2.0]])  # Delta = 1 against a zero anchor, Delta / tau = 2
    loss, metrics = adpo_preference_loss(
        seq, torch.zeros(1, 2, dtype=torch.float64), pairwise_target_probs(torch.tensor([q], dtype=torch.float64)), tau
    )
    # softplus(Delta / tau) - q Delta / tau with Delta / tau = 2
    assert loss.item() == pytest.approx(math.log1p(math.exp(2.0)) - q * 2.0, abs=1e-12)
    loss.backward()
    p_chosen = 1 / (1 + math.exp(-2.0))
    expected = torch.tensor([[(p_chosen - q) / tau, -(p_chosen - q) / tau]], dtype=torch.float64)
    torch.testing.assert_close(seq.grad, expected)
    assert metrics["adpo/win_mass"] == pytest.approx(p_chosen)


def test_listwise_value_and_gradient_by_hand():
    tau, beta_r = 2.0, 0.5
    # (l - l_anc) / tau = log(1, 2, 3) + const -> p = (1/6, 2/6, 3/6)
    anchor = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    seq = leaf((anchor + tau * torch.log(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)) - 7.0).tolist())
    # scores / beta_r = (0, 0, log 2) + const -> q = (1/4, 1/4, 1/2)
    target = score_target_probs(torch.tensor([[1.0, 1.0, 1.0 + beta_r * math.log(2)]], dtype=torch.float64), beta_r)
    torch.testing.assert_close(target, torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64))
    loss, metrics = adpo_preference_loss(seq, anchor, target, tau)
    assert loss.item() == pytest.approx(-(0.25 * math.log(1 / 6) + 0.25 * math.log(2 / 6) + 0.5 * math.log(3 / 6)))
    loss.backward()
    expected = (torch.tensor([[1 / 6, 2 / 6, 3 / 6]]) - torch.tensor([[0.25, 0.25, 0.5]])) / tau
    torch.testing.assert_close(seq.grad, expected.double())
    assert metrics["adpo/win_mass"] == pytest.approx(0.5)
    assert metrics["adpo/target_entropy"] == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.5)))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pairwise_target_probs(torch.tensor([0.5, 1.5])), r"must lie in \[0, 1\], got \[1.5\]"),
        (lambda: pairwise_target_probs(torch.tensor([float("nan")])), "preference_probability must lie in"),
        (lambda: score_target_probs(torch.tensor([[0.0, float("inf")]]), 1.0), "scores must be finite"),
        (lambda: adpo_preference_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.ones(3, 1), 1.0), "candidates >= 2"),
        (lambda: adpo_preference_loss(torch.zeros(3, 2), torch.zeros(3, 3), torch.ones(3, 2), 1.0), "same shape"),
    ],
)
def test_loss_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- the trainer against TRL and by hand


def test_hard_labels_with_tau_one_over_beta_equal_trl_dpo_loss(tiny_model_dir, tmp_path):
    beta = 0.1
    data = Dataset.from_list(PAIRS)
    trl_args = fast_args(tmp_path, DPOConfig, beta=beta)
    trl = DPOTrainer(perturbed_policy(tiny_model_dir), args=trl_args, train_dataset=data)
    adpo = ThermoADPOTrainer(perturbed_policy(tiny_model_dir), args=fast_args(tmp_path, beta=beta), train_dataset=data)
    assert adpo.tau_anc == pytest.approx(1 / beta)
    batch = trl.data_collator([trl.train_dataset[i] for i in range(len(PAIRS))])

    trl_loss = trl.compute_loss(trl.model, batch)
    adpo_loss = adpo.compute_loss(adpo.model, batch)
    assert abs(trl_loss.item() - math.log(2)) > 1e-3  # policy != reference, so the check is not log 2 == log 2
    assert adpo_loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    trl_loss.backward()
    adpo_loss.backward()
    for (name, trl_param), adpo_param in zip(trl.model.named_parameters(), adpo.model.parameters(), strict=True):
        torch.testing.assert_close(adpo_param.grad, trl_param.grad, atol=1e-7, rtol=1e-5, msg=name)


def test_listwise_loss_matches_log_probs_computed_by_hand(tiny_model_dir, tmp_path):
    tau, beta_r = 0.7, 0.5
    trainer = ThermoADPOTrainer(
        perturbed_policy(tiny_model_dir),
        args=fast_args(tmp_path, tau_anc=tau, beta_r=beta_r),
        train_dataset=Dataset.from_list(LISTS),
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(LISTS))])
    assert batch["input_ids"].shape[0] == 2 * 3 and batch["scores"].shape == (2, 3)
    loss = trainer.compute_loss(trainer.model, batch)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy, reference = perturbed_policy(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = []
    for row in LISTS:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        completions = [tokenizer(c + tokenizer.eos_token)["input_ids"] for c in row["completions"]]
        policy_logps = torch.stack([sequence_logps(policy, prompt_ids, c) for c in completions])
        u = (policy_logps - torch.stack([sequence_logps(reference, prompt_ids, c) for c in completions])) / tau
        q = torch.softmax(torch.tensor(row["scores"], dtype=torch.float64) / beta_r, dim=0)
        expected.append(-(q * torch.log_softmax(u, dim=0)).sum())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)


def test_soft_pairwise_column_equals_two_candidate_listwise(tiny_model_dir, tmp_path):
    beta_r, q = 0.5, [0.9, 0.3, 0.5, 1.0 - 1e-3]
    pairs = [{**row, "preference_probability": p} for row, p in zip(PAIRS, q)]
    # softmax((s, 0) / beta_r)[0] = sigmoid(s / beta_r) = q  <=>  s = beta_r logit(q)
    lists = [
        {"prompt": row["prompt"], "completions": [row["chosen"], row["rejected"]], "scores": [score, 0.0]}
        for row, score in zip(PAIRS, [beta_r * math.log(p / (1 - p)) for p in q], strict=True)
    ]
    losses = []
    for rows in (pairs, lists):
        args = fast_args(tmp_path, tau_anc=2.0, beta_r=beta_r)
        trainer = ThermoADPOTrainer(perturbed_policy(tiny_model_dir), args=args, train_dataset=Dataset.from_list(rows))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
        losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


# ---------------------------------------------------------------- anchors and training


class StepSnapshots(TrainerCallback):
    """Policy and anchor copies of one weight at the start of each step, i.e. after the previous step's anchor sync
    (TRL's sync callback runs on_step_end, after the callbacks passed to the trainer)."""

    def __init__(self):
        self.trainer, self.snapshots = None, []

    def snapshot(self):
        weight = "model.layers.0.mlp.up_proj.weight"
        return (
            self.trainer.model.get_parameter(weight).detach().clone(),
            self.trainer.ref_model.get_parameter(weight).detach().clone(),
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self.snapshots.append(self.snapshot())


def test_ema_anchor_moves_toward_the_policy_after_one_step(tiny_model_dir, tmp_path):
    rate = 0.9
    args = fast_args(tmp_path, anchor="ema", anchor_ema_rate=rate)
    trainer = ThermoADPOTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(PAIRS))
    before = {name: p.detach().clone() for name, p in trainer.ref_model.named_parameters()}
    trainer.train()
    anchor = dict(trainer.ref_model.named_parameters())
    moved = 0
    for name, policy_param in trainer.model.named_parameters():
        torch.testing.assert_close(anchor[name].detach(), rate * before[name] + (1 - rate) * policy_param.detach())
        moved += not torch.equal(policy_param, before[name])
    assert moved > 0  # the short run changed the weights


def test_copy_anchor_takes_the_policy_every_n_steps(tiny_model_dir, tmp_path):
    recorder = StepSnapshots()
    trainer = ThermoADPOTrainer(
        tiny_model_dir,
        args=fast_args(tmp_path, anchor="copy", anchor_copy_steps=2, max_steps=3),
        train_dataset=Dataset.from_list(PAIRS * 2),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    (policy_0, anchor_0), (policy_1, anchor_1), (policy_2, anchor_2) = recorder.snapshots
    policy_3, anchor_3 = recorder.snapshot()
    assert torch.equal(anchor_0, policy_0) and torch.equal(anchor_1, anchor_0)  # no copy after step 1
    assert not torch.equal(policy_1, policy_0)
    assert torch.equal(anchor_2, policy_2)  # copied after step 2
    assert torch.equal(anchor_3, anchor_2) and not torch.equal(policy_3, policy_2)  # not after step 3


def test_lora_anchor_is_the_base_model_with_adapters_off(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    trainer = ThermoADPOTrainer(
        tiny_model_dir,
        args=fast_args(tmp_path, max_steps=2, learning_rate=5e-2),
        train_dataset=Dataset.from_list(LISTS * 2),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
    anchor = trainer._anchor_seq_logps(batch)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt_ids = tokenizer(LISTS[0]["prompt"])["input_ids"]
    completions = [tokenizer(c + tokenizer.eos_token)["input_ids"] for c in LISTS[0]["completions"]]
    expected = torch.stack([sequence_logps(base, prompt_ids, c) for c in completions]).float()
    torch.testing.assert_close(anchor, expected, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # the adapters did train: the policy is no longer the base model
        policy = trainer.model(input_ids=batch["input_ids"]).logits
        assert not torch.allclose(policy, base(input_ids=batch["input_ids"]).logits, atol=1e-4)


def test_listwise_training_run_changes_the_weights(tiny_model_dir, tmp_path):
    args = fast_args(tmp_path, max_steps=2)
    trainer = ThermoADPOTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(LISTS * 2))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


# ---------------------------------------------------------------- bad data and settings


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"prompt": "1+1=", "chosen": "2"}], r"no column\(s\) \['rejected'\]"),
        ([{"prompt": "1+1=", "answer": "2"}], r"no column\(s\) \['chosen', 'rejected'\]"),
        ([{**PAIRS[0], "preference_probability": 1.5}], "'preference_probability' must be a number in"),
        ([{"prompt": "1+1=", "completions": ["2", "3"]}], r"listwise train dataset has no column\(s\) \['scores'\]"),
        ([{"prompt": "1+1=", "completions": "2", "scores": [1.0]}], "'completions' must be a list of at least 2"),
        ([{"prompt": "1+1=", "completions": ["2", "3"], "scores": [1.0]}], "'scores' must be a list of 2 finite"),
        ([{"prompt": "1+1=", "completions": ["2", "3"], "scores": [1.0, math.nan]}], "'scores' must be a list of 2"),
        (
            [{"prompt": "1+1=", "completions": ["2", "3"], "scores": [1.0, 0.0]},
             {"prompt": "2+2=", "completions": ["4", "5", "6"], "scores": [1.0, 0.0, 0.0]}],
            r"same number of 'completions'; train has \[2, 3\]",
        ),
    ],
)
def test_bad_columns_raise(tiny_model_dir, tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        ThermoADPOTrainer(tiny_model_dir, args=fast_args(tmp_path), train_dataset=Dataset.from_list(rows))


def test_listwise_data_rejects_precomputed_reference(tiny_model_dir, tmp_path):
    args = fast_args(tmp_path, precompute_ref_log_probs=True)
    with pytest.raises(ValueError, match="precompute_ref_log_probs=True supports pairwise data only"):
        ThermoADPOTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(LISTS))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"loss_type": "ipo"}, "loss_type=\\['ipo'\\] is a DPOTrainer loss option that ADPO does not use"),
        ({"sync_ref_model": True}, "use anchor='ema' or anchor='copy'"),
        ({"anchor": "moving"}, "anchor must be one of"),
        ({"anchor_ema_rate": 1.0}, r"anchor_ema_rate must lie in \[0, 1\)"),
        ({"tau_anc": -1.0}, "tau_anc must be > 0"),
        ({"beta_r": 0.0}, "beta_r must be > 0"),
        ({"tau_anc": None, "beta": 0.0}, "tau_anc = 1/beta needs beta > 0"),
    ],
)
def test_bad_settings_raise(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        fast_args(tmp_path, **overrides)


def test_anchor_settings_drive_trl_reference_sync(tmp_path):
    ema = fast_args(tmp_path, anchor="ema", anchor_ema_rate=0.95)
    assert (ema.sync_ref_model, ema.ref_model_mixup_alpha, ema.ref_model_sync_steps) == (True, pytest.approx(0.05), 1)
    copy = fast_args(tmp_path, anchor="copy", anchor_copy_steps=7)
    assert (copy.sync_ref_model, copy.ref_model_mixup_alpha, copy.ref_model_sync_steps) == (True, 1.0, 7)
    assert not fast_args(tmp_path).sync_ref_model


# ---------------------------------------------------------------- built-in task data and the recipe


def test_preference_pairs_from_task_prefer_the_verified_answer():
    from thermorl.tasks import task_from_spec

    task = task_from_spec("arithmetic:digits=1,ops=+")
    rows = task.make_dataset(30, seed=0)
    pairs = preference_pairs_from_task(task, rows, seed=0)
    assert len(pairs) > 15
    by_prompt = {row["prompt"]: row for row in rows}
    for pair in pairs:
        assert task.is_correct(pair["chosen"], by_prompt[pair["prompt"]])
        assert not task.is_correct(pair["rejected"], by_prompt[pair["prompt"]])


def test_recipe_selects_the_adpo_trainer_and_trains(tiny_model_dir, tmp_path):
    from thermorl.recipe import load_recipe
    from thermorl.train import train

    overrides = {"model_name_or_path": tiny_model_dir, "output_dir": str(tmp_path / "out"), "max_steps": 2,
                 "num_train_examples": 64, "per_device_train_batch_size": 4, "save_strategy": "no", "logging_steps": 1}
    model_args, training_args, script_args = load_recipe("adpo_preference", overrides)
    assert isinstance(training_args, ThermoADPOConfig) and script_args.trainer == "adpo"
    trainer = train(model_args, training_args, script_args)
    assert isinstance(trainer, ThermoADPOTrainer) and trainer.state.global_step == 2
    with pytest.raises(ValueError, match="'trainer' must be one of \\['grpo', 'adpo'\\], got 'dpo'"):
        load_recipe("adpo_preference", {"trainer": "dpo"})
    with pytest.raises(ValueError, match="Unknown recipe key 'policy_loss'"):
        load_recipe("adpo_preference", {"policy_loss": "sapo"})
