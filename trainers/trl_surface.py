"""Everything thermorl touches in TRL that TRL does not promise to keep: the one place to look when TRL moves.

TRL's private methods, attributes and module globals may change in any release. `pyproject.toml` bounds TRL to the
tested versions, and `check_trl_surface` (run when `thermorl.trainers` is imported) stops with one line naming what
moved if an installed TRL differs anyway. Three kinds of entry:

- `TRL_HOOKS`: private methods thermorl overrides or calls, with their parameters in TRL 1.16;
- `TRL_ATTRIBUTES`: private instance attributes thermorl reads or writes, each found assigned (`self.NAME =`) in its
  class's source;
- `TRL_SOURCE_FACTS`: module-level facts the patches below rely on (a global that is looked up at call time, a
  keyword a model forward accepts), each found in the named function's or module's source.

Code elsewhere in thermorl writes TRL's private state only through the functions at the bottom of this module; the
few private attributes it only reads (ThermoADPOTrainer: `_is_vision_dataset`, `_tokenizer`) are listed and checked.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections import defaultdict
from contextlib import contextmanager

import trl

TESTED_TRL = "1.16"

# "Class.method": its parameter names (after self) in TRL 1.16. A new override of a TRL method adds one line here.
TRL_HOOKS = {
    "GRPOTrainer.__init__": "model, reward_funcs, args, train_dataset, eval_dataset, processing_class, "
    "reward_processing_classes, callbacks, optimizers, quantization_config, peft_config, tools, rollout_func, "
    "environment_factory",
    "GRPOTrainer._compute_loss": "model, inputs",
    "GRPOTrainer._generate_and_score_completions": "inputs",
    "GRPOTrainer._generate_single_turn": "prompt_ids, images, multimodal_fields, num_generations, has_tool_images",
    "GRPOTrainer._calculate_rewards": "inputs, prompts, completions, completion_ids_list",
    "GRPOTrainer._tokenize_prompts": "prompts",
    "GRPOTrainer._get_train_sampler": "dataset",
    "GRPOTrainer._save_checkpoint": "model, trial",
    "GRPOTrainer._load_optimizer_and_scheduler": "checkpoint",
    "GRPOTrainer._set_signature_columns_if_needed": "",
    "GRPOTrainer._get_output_dir": "trial",
    "GRPOTrainer.save_model": "output_dir, _internal_call",
    "GRPOTrainer._get_per_token_logps_and_entropies": "model, input_ids, attention_mask, logits_to_keep, batch_size, "
    "compute_entropy, compute_aux_loss, pixel_values, image_grid_thw, num_images, pixel_attention_mask, "
    "spatial_shapes, num_tiles, image_sizes, token_type_ids, mm_token_type_ids, image_position_ids",
    "GRPOTrainer.get_high_entropy_mask": "entropies, mask, threshold",
    "GRPOTrainer.get_off_policy_mask": "advantages, per_token_logps, sampling_per_token_logps, mask, "
    "off_policy_threshold",
    "DPOTrainer._compute_loss": "model, inputs, return_outputs",
    "DPOTrainer._prepare_dataset": "dataset, processing_class, args, dataset_name",
    "DPOTrainer._set_signature_columns_if_needed": "",
}

# "Class": private attributes (and the public ones thermorl writes) that its __init__ or methods assign.
TRL_ATTRIBUTES = {
    # entropy_coef: public, and a property of ThermoGRPOTrainer over its EntropyBonus (TRL's __init__ assigns it)
    "GRPOTrainer": ("_metrics", "_pending_metrics", "_pending_extra_logs", "_signature_columns", "use_adaptive_entropy",
                    "entropy_coef"),
    "DPOTrainer": ("_metrics", "_signature_columns", "_is_vision_dataset", "_tokenizer"),
    "generation.vllm_generation.VLLMGeneration": ("mode", "tensor_parallel_size", "llm", "vllm_client"),
}

# (module, function or None for the module, text its source must contain, why thermorl needs it)
TRL_SOURCE_FACTS = (
    ("trl.generation.vllm_generation", None, "self.llm = LLM(",
     "the colocated engine is built by calling the module global LLM, which `colocated_engine_options` wraps"),
    ("trl.trainer.grpo_trainer", "GRPOTrainer._save_checkpoint", "if self.use_adaptive_entropy",
     "TRL saves its adaptive-entropy state only when use_adaptive_entropy is set (`disown_adaptive_entropy`)"),
    ("trl.trainer.grpo_trainer", "GRPOTrainer._load_optimizer_and_scheduler", "if self.use_adaptive_entropy",
     "TRL restores its adaptive-entropy state only when use_adaptive_entropy is set (`disown_adaptive_entropy`)"),
    ("trl.trainer.dpo_trainer", "DPOTrainer._compute_loss", "fused_lm_head=True",
     "TRL's DPO models take fused_lm_head=True and return per-token log_probs (ThermoADPOTrainer's forward)"),
    ("trl.data_utils", "_tokenize", "def _tokenize(",
     "ThermoADPOTrainer tokenises listwise rows as TRL tokenises preference pairs"),
)


class TRLChanged(ImportError):
    """The installed TRL differs from the one thermorl was written against, at the named place."""


def _moved(what: str, now: str) -> TRLChanged:
    return TRLChanged(
        f"thermorl was written against TRL {TESTED_TRL}, whose {what}; in the installed TRL {trl.__version__} {now}. "
        f"Install trl>={TESTED_TRL},<1.17."
    )


def _parameters(method) -> str:
    return ", ".join(name for name in inspect.signature(method).parameters if name != "self")


def _resolve(dotted: str, root=trl):
    value = root
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def check_trl_hooks(hooks: dict[str, str] = TRL_HOOKS) -> None:
    """TRLChanged naming the TRL version and the first hooked method whose parameters changed or vanished."""
    for qualified, expected in hooks.items():
        method = _resolve(qualified)
        found = None if method is None else _parameters(method)
        if found != expected:
            now = "it does not exist" if found is None else f"it takes ({found})"
            raise _moved(f"trl.{qualified} takes ({expected})", now)


def _class_source(dotted: str) -> str | None:
    if "." in dotted:  # a class outside trl's top level: import its module (trl imports it lazily)
        module_name, class_name = dotted.rsplit(".", 1)
        klass = getattr(importlib.import_module(f"trl.{module_name}"), class_name, None)
    else:
        klass = getattr(trl, dotted, None)
    return None if klass is None else inspect.getsource(klass)


def check_trl_attributes(attributes: dict[str, tuple[str, ...]] = TRL_ATTRIBUTES) -> None:
    """TRLChanged naming the first attribute no longer assigned in its TRL class."""
    for class_name, names in attributes.items():
        source = _class_source(class_name)
        for name in names:
            if source is None or f"self.{name} =" not in source:
                raise _moved(f"trl.{class_name} sets self.{name}", "it does not")


def check_trl_source_facts(facts=TRL_SOURCE_FACTS) -> None:
    """TRLChanged naming the first module-level fact the patches rely on that no longer holds."""
    for module_name, function, text, why in facts:
        module = importlib.import_module(module_name)
        target = module if function is None else _resolve(function, module)
        if target is None or text not in inspect.getsource(target):
            place = module_name if function is None else f"{module_name}.{function}"
            raise _moved(f"{place} contains `{text}` ({why})", "it does not")


def check_trl_surface() -> None:
    check_trl_hooks()
    check_trl_attributes()
    check_trl_source_facts()


# ---- the accessors: the only code in thermorl that reads or writes TRL's private state -------------------------


def metric_buffer(trainer, mode: str) -> defaultdict:
    """The lists TRL averages into the next log line: `trainer._metrics[mode][name]`."""
    return trainer._metrics[mode]


def drop_pending_logs(trainer) -> None:
    """Forget what reward functions logged (log_extra / log_metric) since the last flush: used after generating
    completions that are not in the training batch whose logs TRL flushes next."""
    trainer._pending_extra_logs.clear()
    trainer._pending_metrics.clear()


def keep_signature_column(trainer, column: str) -> None:
    """Keep `column` when the Trainer removes dataset columns its model does not take (remove_unused_columns)."""
    if column not in trainer._signature_columns:
        trainer._signature_columns.append(column)


def add_signature_columns(trainer, columns: list[str]) -> None:
    trainer._signature_columns = [*trainer._signature_columns, *columns]


def disown_adaptive_entropy(trainer) -> None:
    """thermorl's `EntropyBonus` runs the adaptive-entropy controller and checkpoints its state: TRL, whose loss
    (where its controller lives) is replaced, must neither save its unchanging copy nor restore one over ours."""
    trainer.use_adaptive_entropy = False


@contextmanager
def colocated_engine_options(**options):
    """Inside the block, TRL's colocated `LLM(...)` call also receives `options` (e.g. logits_processors, dtype)."""
    from trl.generation import vllm_generation

    original = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(original, **options)
    try:
        yield
    finally:
        vllm_generation.LLM = original


@contextmanager
def replaced_method(owner, name: str, replacement):
    """Inside the block, `owner.name` (an instance's bound method: a model's, vLLM's or TRL's client's `generate`) is
    `replacement`; the instance's own attribute, if it had one, comes back after."""
    own_attribute = owner.__dict__.get(name)
    owner.__dict__[name] = replacement
    try:
        yield
    finally:
        if own_attribute is None:
            del owner.__dict__[name]
        else:
            owner.__dict__[name] = own_attribute
