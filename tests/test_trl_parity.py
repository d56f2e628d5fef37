"""ThermoGRPOTrainer with only TRL's fields set trains exactly as TRL's GRPOTrainer: every loss type, its parameters,
the entropy bonus, the MoE auxiliary loss; TRL's constructor and its reward-source rule; the TRL surface check, and
a scan of thermorl's sources for TRL private names used outside trainers/trl_surface.py."""

import ast
import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer
from thermorl.trainers.trl_surface import (
    TRL_CLASS_ATTRIBUTES,
    TRL_HELPERS,
    TRL_HOOKS,
    check_trl_attributes,
    check_trl_class_attributes,
    check_trl_hooks,
    check_trl_source_facts,
    timed_generation,
)

PROMPTS = ["12+7=", "3-9=", "40+2=", "5+5="]

# TRL settings of each case; two steps on one rollout (steps_per_generation=2): the second is off-policy, so clipping,
# capping and the importance ratios take part.
TRL_RUNS = {
    "dapo_default": {},
    "grpo": {"loss_type": "grpo", "epsilon": 0.1, "epsilon_high": 0.15},
    "bnpo": {"loss_type": "bnpo"},
    "dr_grpo": {"loss_type": "dr_grpo", "max_completion_length": 6},
    "luspo": {"loss_type": "luspo", "importance_sampling_level": "sequence"},
    "gspo": {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4},
    "sapo": {"loss_type": "sapo", "sapo_temperature_pos": 0.9, "sapo_temperature_neg": 1.3},
    "cispo": {"loss_type": "cispo", "epsilon_high": 1.05},
    "vespo": {"loss_type": "vespo", "vespo_k_pos": 1.5, "vespo_lambda_neg": 1.5},
    "delta": {"loss_type": "grpo", "delta": 1.02, "epsilon": 0.01},
    "bias_corrected_kl": {"beta": 0.1},
    "plain_kl_sapo": {"loss_type": "sapo", "beta": 0.1, "use_bias_correction_kl": False},
    "entropy_bonus": {"entropy_coef": 0.05, "top_entropy_quantile": 0.5},
    "adaptive_entropy": {
        "use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_target": 100.0, "entropy_coef_delta": 0.02,
        "entropy_coef_max": 0.04, "entropy_coef_min": 0.001,
    },
    "adaptive_entropy_above_target": {"use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_target": 0.5},
    "off_policy_sequence_mask": {"off_policy_mask_threshold": 0.0},  # drops off-policy A < 0 sequences
}


def prompt_dataset(n=8, prompts=PROMPTS):
    return Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(n)]})


def train_both(model_dir, reward, fast_grpo_kwargs, prompts=PROMPTS, **settings):
    """Two steps of TRL's GRPOTrainer and of ThermoGRPOTrainer from the same config; returns both trainers."""
    # plain SGD: Adam would blow float noise on gradients that are zero in exact arithmetic (a key bias) up to lr
    settings = {**fast_grpo_kwargs, "steps_per_generation": 2, "max_steps": 2, "optim": "sgd", **settings}
    trainers = []
    for trainer_class, config_class in ((GRPOTrainer, GRPOConfig), (ThermoGRPOTrainer, ThermoGRPOConfig)):
        args = config_class(**{**settings, "output_dir": f"{settings['output_dir']}-{trainer_class.__name__}"})
        dataset = prompt_dataset(prompts=prompts)
        trainer = trainer_class(model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset)
        trainer.train()
        trainers.append(trainer)
    return trainers


def assert_same_training(trl_trainer, thermo_trainer, initial_model_dir, metrics=("loss",)):
    for key in metrics:
        theirs = [entry[key] for entry in trl_trainer.state.log_history if key in entry]
        ours = [entry[key] for entry in thermo_trainer.state.log_history if key in entry]
        assert len(ours) == len(theirs) == 2, key
        assert ours == pytest.approx(theirs, abs=1e-6), key
    reference = dict(trl_trainer.model.named_parameters())
    for name, param in thermo_trainer.model.named_parameters():
        torch.testing.assert_close(param, reference[name], rtol=0, atol=1e-6, msg=name)
    initial = AutoModelForCausalLM.from_pretrained(initial_model_dir).state_dict()
    moved = max((param.detach() - initial[name]).abs().max().item() for name, param in reference.items())
    assert moved > 1e-4, "no weight moved"


@pytest.mark.parametrize("case", list(TRL_RUNS))
def test_trl_fields_train_exactly_like_trl(case, tiny_model_dir, varied_reward, fast_grpo_kwargs):
    trl_trainer, thermo_trainer = train_both(tiny_model_dir, varied_reward, fast_grpo_kwargs, **TRL_RUNS[case])
    metrics = ("loss", "entropy_coef") if "entropy_coef" in TRL_RUNS[case] else ("loss",)
    assert_same_training(trl_trainer, thermo_trainer, tiny_model_dir, metrics)
    assert thermo_trainer.args.policy_loss is None
    # TRL's public attribute: the coefficient in use, moved by the adaptive controller (0.01 -> 0.04 at its max)
    assert thermo_trainer.entropy_coef == pytest.approx(trl_trainer.entropy_coef, abs=1e-9)
    if case == "adaptive_entropy":
        assert thermo_trainer.entropy_coef == pytest.approx(0.04)


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory):
    """A tiny mixture-of-experts model whose router auxiliary loss TRL adds to the loss."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    from thermorl.models.tiny import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = Qwen2MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_experts=4, num_experts_per_tok=2, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, output_router_logits=True, router_aux_loss_coef=0.05,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = tmp_path_factory.mktemp("moe")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_moe_aux_loss_is_added_and_logged_like_trl(tiny_moe_dir, varied_reward, fast_grpo_kwargs):
    # prompts of one length: transformers 5.24's MoE models fail to generate from left-padded prompts with
    # output_router_logits on (TRL's GRPOTrainer alike)
    same_length = ["12+7=", "40+2=", "3-19=", "5+55="]
    trl_trainer, thermo_trainer = train_both(tiny_moe_dir, varied_reward, fast_grpo_kwargs, prompts=same_length)
    assert thermo_trainer.aux_loss_enabled
    assert_same_training(trl_trainer, thermo_trainer, tiny_moe_dir, metrics=("loss", "aux_loss"))


@pytest.mark.parametrize("vllm_ratio", [False, True], ids=["", "vllm_is"])
@pytest.mark.parametrize("loss_type", ["dapo", "cispo", "vespo", "dr_grpo", "bnpo", "luspo", "grpo", "sapo"])
def test_loss_with_gradient_accumulation_equals_trls(
    loss_type, vllm_ratio, tiny_model_dir, varied_reward, fast_grpo_kwargs, monkeypatch
):
    """One micro-batch of a 2-step accumulation window (the normalisers depend on it), beta > 0, off-policy; with
    vllm_is, the rollout's importance-sampling ratio as vLLM leaves it (vespo folds it into its weight)."""
    args = ThermoGRPOConfig(
        **{**fast_grpo_kwargs, "per_device_train_batch_size": 4},
        loss_type=loss_type, beta=0.05, gradient_accumulation_steps=2, steps_per_generation=4, max_steps=1,
    )
    trainer = ThermoGRPOTrainer(tiny_model_dir, varied_reward, args, prompt_dataset())
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(4)])
    assert batch["num_items_in_batch"] > batch["completion_mask"][:4].sum()  # the window spans more tokens
    batch = {key: value[:4] if torch.is_tensor(value) and value.dim() > 0 else value for key, value in batch.items()}
    batch["advantages"] = torch.randn_like(batch["advantages"])
    batch["old_per_token_logps"] = batch["ref_per_token_logps"] + 0.3 * torch.randn_like(batch["ref_per_token_logps"])
    if vllm_ratio:
        # only the ratio is needed: no vLLM generation happens here
        monkeypatch.setattr(trainer, "use_vllm", True)
        monkeypatch.setattr(trainer, "vllm_importance_sampling_correction", True)
        batch["importance_sampling_ratio"] = 0.5 + torch.rand_like(batch["old_per_token_logps"])
    losses, grads = [], []
    for compute_loss in (ThermoGRPOTrainer._compute_loss, GRPOTrainer._compute_loss):
        trainer.model.zero_grad()
        loss = compute_loss(trainer, trainer.model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- config: one source for the loss


@pytest.mark.parametrize(
    "trl_field", [("loss_type", "grpo"), ("epsilon", 0.1), ("epsilon_high", 0.28), ("delta", 2.0),
                  ("sapo_temperature_neg", 2.0), ("vespo_k_pos", 1.0), ("importance_sampling_level", "sequence"),
                  ("use_bias_correction_kl", False)],
)
def test_policy_loss_and_a_trl_loss_field_conflict(trl_field, fast_grpo_kwargs):
    name, value = trl_field
    with pytest.raises(ValueError, match=rf"policy_loss='sapo' and {name}={value!r} both choose the policy loss"):
        ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="sapo", **{name: value})


def test_policy_loss_unset_follows_trl_fields(fast_grpo_kwargs):
    assert ThermoGRPOConfig(**fast_grpo_kwargs).resolved_policy_loss() == (
        "grpo", {"aggregation": "batch_token_mean", "kl_bias_correction": True, "eps_low": 0.2, "eps_high": 0.2,
                 "delta": None},
    )
    config = ThermoGRPOConfig(**fast_grpo_kwargs, loss_type="cispo", epsilon_high=4.0)
    assert config.resolved_policy_loss() == (
        "cispo", {"aggregation": "batch_token_mean", "kl_bias_correction": True, "ratio_cap": 4.0}
    )
    config = ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="gspo", policy_loss_kwargs={"eps_low": "3e-4"})
    assert config.resolved_policy_loss() == ("gspo", {"eps_low": 3e-4})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss_type": "ppo"}, r"loss_type='ppo' is not a TRL loss; valid: grpo, sapo, bnpo"),
        ({"loss_type": "sapo", "sapo_temperature_pos": 0.0},
         r"loss_type='sapo', sapo_temperature_pos=0.0: Loss 'sapo': parameter 'tau_pos' must lie in \(0, inf\)"),
        ({"loss_type": "grpo", "epsilon": -0.2}, r"epsilon=-0.2: Loss 'grpo': parameter 'eps_low' must lie"),
        ({"loss_type": "sapo", "importance_sampling_level": "sequence"},
         r"importance_sampling_level='sequence' with loss_type='sapo' has no thermorl registry loss"),
        ({"importance_sampling_level": "segment"}, r"importance_sampling_level='segment' must be 'token' or"),
        ({"policy_loss_kwargs": {"tau_pos": 1.0}}, r"policy_loss_kwargs is set but policy_loss is not"),
        ({"policy_loss": "grpo", "policy_loss_kwargs": {"beta": 0.1}}, r"policy_loss_kwargs sets 'beta'.*set beta"),
        ({"policy_loss": "sapo", "policy_loss_kwargs": {"tau_pos": "-1"}},
         r"Loss 'sapo': parameter 'tau_pos' must lie in \(0, inf\), got -1.0"),
    ],
)
def test_bad_loss_settings_are_refused_at_config_time(settings, message, fast_grpo_kwargs):
    with pytest.raises(ValueError, match=message):
        ThermoGRPOConfig(**fast_grpo_kwargs, **settings)


def test_yaml_recipe_exponent_is_a_number(tmp_path):
    """The README's `{eps_low: 3e-4}`, which YAML reads as the string '3e-4', reaches the loss as a float; a value
    out of range fails when the recipe is loaded, naming the loss and the parameter."""
    from thermorl.recipe import load_recipe

    recipe = tmp_path / "gspo.yaml"
    recipe.write_text(
        "policy_loss: gspo\npolicy_loss_kwargs: {eps_low: 3e-4, eps_high: 4e-4}\n"
        f"output_dir: {tmp_path / 'run'}\nuse_cpu: true\nbf16: false\nnum_generations: 4\n"
        "per_device_train_batch_size: 8\n"
    )
    _, training_args, _ = load_recipe(recipe)
    assert training_args.policy_loss_kwargs == {"eps_low": 3e-4, "eps_high": 4e-4}
    recipe.write_text(recipe.read_text().replace("eps_high: 4e-4", "eps_high: -4e-4"))
    with pytest.raises(ValueError, match=r"Loss 'gspo': parameter 'eps_high' must lie in \[0, inf\), got -0.0004"):
        load_recipe(recipe)


# ---------------------------------------------------------------- constructor and reward sources


def test_constructor_takes_trls_positional_arguments(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    args = ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="sapo", max_steps=1)
    eval_set = prompt_dataset(4)
    trainer = ThermoGRPOTrainer(tiny_model_dir, varied_reward, args, prompt_dataset(), eval_set)
    assert trainer.eval_dataset is eval_set and len(trainer.train_dataset) == 8
    assert [f.__name__ for f in trainer.reward_funcs] == ["digit_share_reward"]


def test_no_reward_source_is_trls_error(tiny_model_dir, fast_grpo_kwargs):
    args = ThermoGRPOConfig(**fast_grpo_kwargs)
    with pytest.raises(ValueError, match="No reward source provided"):
        ThermoGRPOTrainer(tiny_model_dir, None, args, prompt_dataset())


# ---------------------------------------------------------------- TRL's private hooks


def test_hooked_trl_methods_have_the_tested_signatures():
    check_trl_hooks()
    assert "GRPOTrainer._compute_loss" in TRL_HOOKS and "DPOTrainer._compute_loss" in TRL_HOOKS


def test_a_changed_trl_hook_fails_naming_version_and_method(monkeypatch):
    import trl

    def changed(self, model, inputs, num_items_in_batch):
        raise AssertionError("never called")

    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", changed)
    with pytest.raises(ImportError, match=rf"TRL 1.16, whose trl.GRPOTrainer._compute_loss takes \(model, inputs\);"
                                          rf" in the installed TRL {trl.__version__} it takes \(model, inputs, "
                                          r"num_items_in_batch\)"):
        check_trl_hooks()
    with pytest.raises(ImportError, match="trl.GRPOTrainer._gone does not exist|_gone.*it does not exist"):
        check_trl_hooks({"GRPOTrainer._gone": "inputs"})


def test_a_moved_trl_attribute_or_module_fact_fails_naming_it():
    """Private attributes and module-level facts thermorl relies on are checked like the hooked methods."""
    with pytest.raises(ImportError, match=r"whose trl.GRPOTrainer sets self._gone; in the installed TRL \S+ it does not"):
        check_trl_attributes({"GRPOTrainer": ("_metrics", "_gone")})
    with pytest.raises(ImportError, match=r"whose trl.generation.vllm_generation contains `self.llm = Engine\(` \(why\)"):
        check_trl_source_facts((("trl.generation.vllm_generation", None, "self.llm = Engine(", "why"),))
    with pytest.raises(ImportError, match=r"trl.data_utils._gone contains"):
        check_trl_source_facts((("trl.data_utils", "_gone", "def _gone(", "why"),))
    with pytest.raises(ImportError, match=r"whose trl.GRPOTrainer._gone is a list; in the installed TRL \S+ it is not"):
        check_trl_class_attributes({"GRPOTrainer": ("_tag_names", "_gone")})


def test_trl_helpers_are_checked_by_parameters_or_dataclass_fields():
    """The deep imports the surface re-exports: a changed function or collator dataclass, or a vanished module."""
    check_trl_hooks(TRL_HELPERS)
    with pytest.raises(ImportError, match=r"trl.trainer.utils.pad takes \(tensors, padding_value\); .* it takes "
                                          r"\(tensors, padding_value, padding_side, pad_to_multiple_of\)"):
        check_trl_hooks({"trainer.utils.pad": "tensors, padding_value"})
    with pytest.raises(ImportError, match=r"DataCollatorForPreference takes \(pad_token_id\); .* it takes "
                                          r"\(pad_token_id, max_length, truncation_mode, pad_to_multiple_of, "
                                          r"return_tensors\)"):
        check_trl_hooks({"trainer.dpo_trainer.DataCollatorForPreference": "pad_token_id"})
    with pytest.raises(ImportError, match=r"trl.gone_module._tokenize takes \(input\); .* it does not exist"):
        check_trl_hooks({"gone_module._tokenize": "input"})


def test_every_trainer_override_of_a_trl_method_is_in_the_hook_table():
    """A thermorl trainer overriding a private TRL method must list it in TRL_HOOKS (one line)."""
    from trl import DPOTrainer

    from thermorl.trainers import ThermoADPOTrainer

    for thermo_class, trl_class in ((ThermoGRPOTrainer, GRPOTrainer), (ThermoADPOTrainer, DPOTrainer)):
        for klass in thermo_class.__mro__[: thermo_class.__mro__.index(trl_class)]:
            for name in vars(klass):
                if name.startswith("_") and not name.startswith("__") and callable(getattr(trl_class, name, None)):
                    assert f"{trl_class.__name__}.{name}" in TRL_HOOKS, f"{klass.__name__}.{name}"


def test_adaptive_entropy_state_survives_a_checkpoint(tiny_model_dir, varied_reward, fast_grpo_kwargs):
    """TRL saves the adaptive coefficient with each checkpoint; thermorl's atomic save and resume keep it."""
    settings = {**fast_grpo_kwargs, "use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_target": 100.0,
                "max_steps": 3, "save_strategy": "steps", "save_steps": 2, "policy_loss": "sapo"}
    args = ThermoGRPOConfig(**settings)
    uninterrupted = ThermoGRPOTrainer(tiny_model_dir, varied_reward, args, prompt_dataset())
    uninterrupted.train()
    assert uninterrupted.entropy_bonus.coef == pytest.approx(0.01 + 3 * 0.005)
    resumed_args = ThermoGRPOConfig(**{**settings, "output_dir": settings["output_dir"] + "-resumed"})
    resumed = ThermoGRPOTrainer(tiny_model_dir, varied_reward, resumed_args, prompt_dataset())
    resumed.train(resume_from_checkpoint=f"{settings['output_dir']}/checkpoint-2")
    assert resumed.entropy_bonus.coef == pytest.approx(uninterrupted.entropy_bonus.coef)
    logged = [entry["entropy_coef"] for entry in resumed.state.log_history if "entropy_coef" in entry]
    assert logged[-1] == pytest.approx(0.025)


def test_timed_generation_times_each_generate_call_then_takes_itself_off(tiny_model_dir, varied_reward,
                                                                           fast_grpo_kwargs):
    """The benchmarks' timer of TRL's generate call: one duration per rollout, the trainer's own method after."""
    args = ThermoGRPOConfig(**fast_grpo_kwargs, policy_loss="sapo", max_steps=2)
    trainer = ThermoGRPOTrainer(tiny_model_dir, varied_reward, args, prompt_dataset())
    with timed_generation(trainer) as durations:
        trainer.train()
    assert len(durations) == 2 and all(d > 0 for d in durations)
    assert "_generate_single_turn" not in vars(trainer)


# ---------------------------------------------------------------- TRL's private names only in trl_surface.py

ROOT = Path(__file__).resolve().parents[1]
SURFACE = ROOT / "trainers" / "trl_surface.py"
PROJECT_FOLDERS = (
    "trainers", "rollouts", "losses", "thermorl", "evaluation", "benchmarks", "models", "tasks", "launch",
)


def trl_classes() -> tuple[type, ...]:
    """The TRL classes whose instances thermorl holds or subclasses."""
    from trl import DPOConfig, DPOTrainer
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return GRPOTrainer, DPOTrainer, GRPOConfig, DPOConfig, VLLMGeneration, VLLMClient, DataCollatorForPreference


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def trl_private_names() -> set[str]:
    """Every private method, class attribute and instance attribute (`self._x =` in the source) of those classes and
    the classes they inherit from (transformers' Trainer and TrainingArguments included)."""
    names = set()
    for klass in {k for root in trl_classes() for k in root.__mro__ if k is not object}:
        names.update(name for name in vars(klass) if is_private(name))
        names.update(re.findall(r"self\.(_\w+)\s*(?::[^=\n]+)?=[^=]", inspect.getsource(klass)))
    return names


def trainer_side_class_names() -> set[str]:
    """TRL's classes above and thermorl's classes whose instances are instances of one of them (subclasses and the
    mixins those inherit): in their methods `self` is a TRL object."""
    names = set()
    for root in trl_classes():
        names.update(k.__name__ for k in root.__mro__)
        subclasses = [*root.__subclasses__()]
        while subclasses:
            klass = subclasses.pop()
            subclasses.extend(klass.__subclasses__())
            if klass.__module__.startswith("thermorl."):
                names.update(k.__name__ for k in klass.__mro__ if k.__module__.startswith("thermorl."))
    return names - {"object"}


class PrivateTRLUses(ast.NodeVisitor):
    """Collects, as "line: code", each place a module uses TRL's private names: a private or deep (`trl.x.y`) import
    of a name TRL does not export at its top level, and a private TRL attribute read, written, called or overridden.
    In a trainer-side class, `self.NAME` / `super().NAME` and a class attribute `NAME = ...` may be a method of
    `hooks` or a class attribute of `overrides` (what the surface lists and checks); on any other object no private
    TRL name is allowed. `self._x` in a class that is not trainer-side is that class's own attribute."""

    def __init__(self, private: set[str], trainer_side: set[str], allowed: set[str]):
        self.private, self.trainer_side, self.allowed = private, trainer_side, allowed
        self.classes: list[str] = []
        self.found: list[str] = []

    def report(self, node: ast.AST) -> None:
        self.found.append(f"{node.lineno}: {ast.unparse(node)}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", None) for base in node.bases}
        if node.name in self.trainer_side or bases & self.trainer_side:
            self.trainer_side = self.trainer_side | {node.name}
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else []
                if isinstance(statement, ast.AnnAssign):
                    targets = [statement.target]
                if any(isinstance(t, ast.Name) and t.id in self.private - self.allowed for t in targets):
                    self.report(statement)
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        in_trainer = bool(self.classes) and self.classes[-1] in self.trainer_side
        if in_trainer and node.name in self.private - self.allowed:
            self.found.append(f"{node.lineno}: def {node.name}")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        if any(alias.name.startswith("trl.") for alias in node.names):
            self.report(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and (module == "trl" or module.startswith("trl.")):
            if any(is_private(alias.name) or not hasattr(trl, alias.name) for alias in node.names):
                self.report(node)
        self.generic_visit(node)

    def receiver_allows(self, receiver: ast.expr, name: str) -> bool:
        own_self = isinstance(receiver, ast.Name) and receiver.id == "self"
        is_super = isinstance(receiver, ast.Call) and getattr(receiver.func, "id", None) == "super"
        in_trainer = bool(self.classes) and self.classes[-1] in self.trainer_side
        if own_self and not in_trainer:
            return True  # thermorl's own object
        return (own_self or is_super) and in_trainer and name in self.allowed

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in self.private and not self.receiver_allows(node.value, node.attr):
            self.report(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        by_name = getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr", "delattr")
        if by_name and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            name = node.args[1].value
            if name in self.private and not self.receiver_allows(node.args[0], name):
                self.report(node)
        self.generic_visit(node)


def private_trl_uses(source: str, allowed: set[str]) -> list[str]:
    visitor = PrivateTRLUses(trl_private_names(), trainer_side_class_names(), allowed)
    visitor.visit(ast.parse(source))
    return visitor.found


def surface_allowed_names() -> set[str]:
    """The private names code outside the surface may use on its own trainer: the hooks it overrides or calls, the
    class attributes it overrides."""
    hooks = {qualified.rsplit(".", 1)[1] for qualified in TRL_HOOKS}
    return hooks | {name for names in TRL_CLASS_ATTRIBUTES.values() for name in names}


def test_private_trl_names_appear_only_in_the_surface():
    allowed = surface_allowed_names()
    found = {}
    for folder in PROJECT_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != SURFACE:
                uses = private_trl_uses(path.read_text(), allowed)
                if uses:
                    found[str(path.relative_to(ROOT))] = uses
    assert found == {}, "go through trainers/trl_surface.py"


def test_the_private_name_check_finds_each_kind_of_use():
    """The scan above is not vacuous: each way of reaching into TRL is reported, thermorl's own names are not."""
    offenders = '''
from trl import GRPOTrainer, _private_helper
from trl.data_utils import _tokenize
from trl.data_utils import is_conversational
from trl.trainer.utils import pad
import trl.trainer.utils

class Thermo(GRPOTrainer):
    _tag_names = ["thermorl"]
    _name = "Thermo"

    def _compute_loss(self, model, inputs):
        self._metrics["train"]["x"].append(1.0)
        return super()._compute_loss(model, inputs)

    def _prepare_inputs(self, inputs):
        return inputs

class Helper:
    def __init__(self, trainer):
        self._metrics = {}
        trainer._generate_single_turn = None
        setattr(trainer, "_signature_columns", [])
        self.trainer = trainer

    def run(self):
        return self.trainer._generate_and_score_completions([]), self._metrics
'''
    assert private_trl_uses(offenders, surface_allowed_names()) == [
        "2: from trl import GRPOTrainer, _private_helper",
        "3: from trl.data_utils import _tokenize",
        "5: from trl.trainer.utils import pad",
        "6: import trl.trainer.utils",
        "10: _name = 'Thermo'",
        "13: self._metrics",
        "16: def _prepare_inputs",
        "22: trainer._generate_single_turn",
        "23: setattr(trainer, '_signature_columns', [])",
        "27: self.trainer._generate_and_score_completions",
    ]
