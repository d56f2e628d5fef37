"""Everything thermorl touches in TRL that TRL does not promise to keep: the one place to look when TRL moves.

TRL's private methods, attributes and module globals may change in any release. `pyproject.toml` bounds TRL to the
tested versions, and `check_trl_surface` (run when `thermorl.trainers` is imported) stops with one line naming what
moved if an installed TRL differs anyway. Five kinds of entry:

- `TRL_HOOKS`: private methods thermorl overrides or calls, and the methods it replaces on an instance, with their
  parameters in TRL 1.16;
- `TRL_CLASS_ATTRIBUTES`: private class attributes thermorl's trainers override, each a list on TRL's class;
- `TRL_ATTRIBUTES`: private instance attributes thermorl reads or writes, each found assigned (`self.NAME =`) in its
  class's source;
- `TRL_HELPERS`: functions and classes only TRL's submodules export, re-exported from this module, with their
  parameters (a dataclass: its fields) in TRL 1.16;
- `TRL_SOURCE_FACTS`: module-level facts the patches below rely on (a global that is looked up at call time, a
  keyword a model forward accepts), each found in the named function's or module's source.

Code elsewhere in thermorl imports from TRL's top level only, and reaches TRL's private state only through the
functions at the bottom of this module; apart from that, a trainer names TRL's private hooks (`TRL_HOOKS`) and class
attributes (`TRL_CLASS_ATTRIBUTES`) on itself only (tests/test_trl_parity.py scans the sources for any other use).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import time
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
    "GRPOTrainer._load_from_checkpoint": "resume_from_checkpoint, model",
    # replaced on the instance by `served_requests` (trainers/annealed_vllm.py), which passes these through
    "generation.vllm_client.VLLMClient.generate": "prompts, features, n, repetition_penalty, temperature, top_p, "
    "top_k, min_p, max_tokens, logprobs, structured_outputs_regex, generation_kwargs",
    "DPOTrainer._compute_loss": "model, inputs, return_outputs",
    "DPOTrainer._prepare_dataset": "dataset, processing_class, args, dataset_name",
    "DPOTrainer._set_signature_columns_if_needed": "",
}

# "Class": its private class attributes that thermorl's subclasses override (TRL's model card and hub tags read them).
TRL_CLASS_ATTRIBUTES = {"GRPOTrainer": ("_tag_names",), "DPOTrainer": ("_tag_names",)}

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
    ("trl.generation.vllm_generation", "VLLMGeneration.generate",
     "self.llm.generate(vllm_prompts, sampling_params=sampling_params",
     "TRL hands vLLM's LLM.generate one SamplingParams, which `colocated_requests` copies for each prompt"),
    ("trl.trainer.grpo_trainer", "GRPOTrainer._compute_loss", "self.current_gradient_accumulation_steps",
     "TRL's loss divides by the accumulation count the Trainer's loop sets (`loss_outside_training` sets it)"),
)

# "module.name" under trl: parameters (a dataclass: its fields) in TRL 1.16, re-exported after check_trl_surface.
TRL_HELPERS = {
    "data_utils._tokenize": "processing_class, input, apply_chat_template_kwargs",
    "data_utils.common_prefix_length": "ids, other_ids",
    "trainer.utils.pad": "tensors, padding_value, padding_side, pad_to_multiple_of",
    # ThermoADPOTrainer rebuilds TRL's collator as its subclass from `asdict(collator)`
    "trainer.dpo_trainer.DataCollatorForPreference": "pad_token_id, max_length, truncation_mode, pad_to_multiple_of, "
    "return_tensors",
}


class TRLChanged(ImportError):
    """The installed TRL differs from the one thermorl was written against, at the named place."""


def _moved(what: str, now: str) -> TRLChanged:
    return TRLChanged(
        f"thermorl was written against TRL {TESTED_TRL}, whose {what}; in the installed TRL {trl.__version__} {now}. "
        f"Install trl>={TESTED_TRL},<1.17."
    )


def _parameters(value) -> str:
    """A dataclass's field names, or a callable's parameter names (after self)."""
    if dataclasses.is_dataclass(value):
        return ", ".join(f.name for f in dataclasses.fields(value))
    return ", ".join(name for name in inspect.signature(value).parameters if name != "self")


def _resolve(dotted: str, root=trl):
    """`root.<dotted>`, importing submodules on the way (trl imports most of them lazily); None where it is gone."""
    value = root
    for part in dotted.split("."):
        found = getattr(value, part, None)
        if found is None and inspect.ismodule(value):
            submodule = f"{value.__name__}.{part}"
            try:
                found = importlib.import_module(submodule)
            except ModuleNotFoundError as error:
                if error.name != submodule:  # the submodule exists, one of its own imports failed
                    raise
                return None
        if found is None:
            return None
        value = found
    return value


def check_trl_hooks(hooks: dict[str, str] = TRL_HOOKS) -> None:
    """TRLChanged naming the TRL version and the first hooked method (or helper) whose parameters changed or
    vanished."""
    for qualified, expected in hooks.items():
        method = _resolve(qualified)
        found = None if method is None else _parameters(method)
        if found != expected:
            now = "it does not exist" if found is None else f"it takes ({found})"
            raise _moved(f"trl.{qualified} takes ({expected})", now)


def check_trl_class_attributes(attributes: dict[str, tuple[str, ...]] = TRL_CLASS_ATTRIBUTES) -> None:
    """TRLChanged naming the first overridden class attribute that is no longer a list on its TRL class."""
    for class_name, names in attributes.items():
        for name in names:
            if not isinstance(getattr(_resolve(class_name), name, None), list):
                raise _moved(f"trl.{class_name}.{name} is a list", "it is not")


def _class_source(dotted: str) -> str | None:
    klass = _resolve(dotted)
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
    check_trl_hooks(TRL_HELPERS)
    check_trl_class_attributes()
    check_trl_attributes()
    check_trl_source_facts()


# ---- TRL_HELPERS, re-exported: None where TRL lacks one, which check_trl_surface reports before any use -----------

trl_tokenize = _resolve("data_utils._tokenize")
common_prefix_length = _resolve("data_utils.common_prefix_length")
pad = _resolve("trainer.utils.pad")
DataCollatorForPreference = _resolve("trainer.dpo_trainer.DataCollatorForPreference")


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


def dpo_tokenizer(trainer):
    """DPOTrainer's tokenizer: its processing class, or the processor's tokenizer."""
    return trainer._tokenizer


def is_vision_dataset(trainer) -> bool:
    """Whether DPOTrainer found images in its training data (it then collates them with its own vision path)."""
    return trainer._is_vision_dataset


def load_checkpoint_weights(trainer, checkpoint: str) -> None:
    """The model weights of `checkpoint`, loaded as `train(resume_from_checkpoint=checkpoint)` loads them."""
    trainer._load_from_checkpoint(checkpoint)


def generate_completions(trainer, prompt_ids: list[list[int]], num_generations: int):
    """TRL's single-turn generation for tokenised text prompts (no images), as a rollout calls it (benchmarks)."""
    return trainer._generate_single_turn(prompt_ids, None, {}, num_generations)


def generate_and_score(trainer, inputs: list[dict]) -> dict:
    """The training batch TRL builds from dataset rows `inputs`: completions, rewards, advantages (benchmarks)."""
    return trainer._generate_and_score_completions(inputs)


def loss_outside_training(trainer, inputs: dict):
    """The loss of a batch from `generate_and_score`, outside `train()` (benchmarks): the loss divides by the
    gradient-accumulation count the Trainer's loop sets each step, here one step without accumulation."""
    trainer.current_gradient_accumulation_steps = 1
    return trainer.compute_loss(trainer.model, inputs)


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


@contextmanager
def timed_generation(trainer):
    """Inside the block, the wall time of each of TRL's generate calls (`_generate_single_turn`) in seconds is appended
    to the yielded list (benchmarks)."""
    durations = []
    generate = trainer._generate_single_turn

    @functools.wraps(generate)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = generate(*args, **kwargs)
        durations.append(time.perf_counter() - start)
        return result

    with replaced_method(trainer, "_generate_single_turn", timed):
        yield durations
