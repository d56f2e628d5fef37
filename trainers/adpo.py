"""ThermoADPOTrainer: TRL's DPOTrainer with ADPO's anchored loss (arXiv 2510.18913) for offline preference data.

TRL keeps model and reference loading, PEFT (the reference is then the base model with adapters off, or a frozen copy
of a pretrained adapter), tokenisation and collation of prompt/chosen/rejected data, reference log-prob
precomputation, the reference-sync callback and logging. Changed here:
- `_compute_loss`: policy and anchor sequence log-probs go to `thermorl.losses.adpo_preference.adpo_preference_loss`;
- the data path also carries an optional soft label column (pairwise) and a listwise format, tokenised and collated
  here because TRL's preference data path holds exactly two completions;
- the anchor may follow the policy through TRL's `SyncRefModelCallback`: an EMA every step, or a copy every N steps.

Data formats (columns):
- pairwise: TRL's `prompt`, `chosen`, `rejected`, plus optional `preference_probability` = P(chosen preferred) in
  [0, 1] (1 when absent: DPO's hard label);
- listwise: `prompt`, `completions` (a list of P >= 2 completions, the same P for every row) and `scores` (one number
  per completion, higher is better; for a ranking use e.g. minus the rank). The target is softmax(scores / beta_r).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, is_conversational

from ..errors import UserError
from ..losses.adpo_preference import adpo_preference_loss, pairwise_target_probs, score_target_probs
from .metrics import QueuedMetrics
from .trl_surface import (
    DataCollatorForPreference,
    add_signature_columns,
    common_prefix_length,
    dpo_tokenizer,
    is_vision_dataset,
    pad,
    trl_tokenize,
)

PREFERENCE_PROBABILITY = "preference_probability"
COMPLETIONS = "completions"
SCORES = "scores"
ANCHORS = ("reference", "ema", "copy")
# Batch keys that are targets, not model inputs.
_TARGET_KEYS = (PREFERENCE_PROBABILITY, SCORES)


@dataclass
class ThermoADPOConfig(DPOConfig):
    """DPOConfig plus ADPO's fields. TRL's `loss_type` must stay "sigmoid" (the ADPO loss replaces it) and
    `sync_ref_model` is driven by `anchor`."""

    tau_anc: float | None = field(
        default=None,
        metadata={"help": "Anchor temperature; None means 1/beta, where hard pairwise labels give DPO exactly."},
    )
    beta_r: float = field(
        default=0.5, metadata={"help": "Score temperature of listwise targets: q = softmax(scores / beta_r)."}
    )
    anchor: str = field(
        default="reference",
        metadata={
            "help": "'reference': the fixed reference model (with LoRA: the base model, adapters off); 'ema': "
            "anchor <- anchor_ema_rate * anchor + (1 - anchor_ema_rate) * policy after every step; 'copy': "
            "anchor <- policy every anchor_copy_steps steps. 'ema' and 'copy' need full fine-tuning.",
            "choices": list(ANCHORS),
        },
    )
    anchor_ema_rate: float = field(default=0.99, metadata={"help": "EMA rate of anchor='ema' (authors' 0.99)."})
    anchor_copy_steps: int = field(default=100, metadata={"help": "Optimizer steps between copies of anchor='copy'."})

    def __post_init__(self):
        super().__post_init__()
        if self.anchor not in ANCHORS:
            raise UserError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")
        if self.tau_anc is not None and self.tau_anc <= 0:
            raise UserError(f"tau_anc must be > 0, got {self.tau_anc}")
        if self.tau_anc is None and self.beta <= 0:
            raise UserError(f"tau_anc = 1/beta needs beta > 0, got beta={self.beta}; or set tau_anc")
        if self.beta_r <= 0:
            raise UserError(f"beta_r must be > 0, got {self.beta_r}")
        if not 0 <= self.anchor_ema_rate < 1:
            raise UserError(f"anchor_ema_rate must lie in [0, 1), got {self.anchor_ema_rate}")
        if self.anchor_copy_steps < 1:
            raise UserError(f"anchor_copy_steps must be >= 1, got {self.anchor_copy_steps}")
        unused = {
            "loss_type": (self.loss_type, ["sigmoid"]),
            "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
            "ld_alpha": (self.ld_alpha, None),
            "use_weighting": (self.use_weighting, False),
        }
        for name, (value, default) in unused.items():
            if value != default:
                raise UserError(f"{name}={value!r} is a DPOTrainer loss option that ADPO does not use; leave it unset")
        if self.sync_ref_model and self.anchor == "reference":
            raise UserError("sync_ref_model is set by anchor: use anchor='ema' or anchor='copy'")
        # TRL's sync: ref <- (1 - alpha) ref + alpha policy every ref_model_sync_steps steps.
        if self.anchor != "reference":
            self.sync_ref_model = True
            ema = self.anchor == "ema"
            self.ref_model_mixup_alpha = 1 - self.anchor_ema_rate if ema else 1.0
            self.ref_model_sync_steps = 1 if ema else self.anchor_copy_steps


@dataclass
class DataCollatorForAnchoredPreference(DataCollatorForPreference):
    """TRL's preference collator, plus the soft label column and listwise rows.

    Rows are candidate-major, the layout TRL uses for [chosen..., rejected...]: row j * B + b is candidate j of
    example b. Listwise batches also return `scores` (B, P); pairwise ones `preference_probability` (B,) if present.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "completion_ids" not in examples[0]:
            output = super().torch_call(examples)
            if PREFERENCE_PROBABILITY in examples[0]:
                output[PREFERENCE_PROBABILITY] = torch.tensor([float(e[PREFERENCE_PROBABILITY]) for e in examples])
            return output
        counts = sorted({len(e["completion_ids"]) for e in examples})
        if len(counts) > 1:
            raise UserError(f"every prompt needs the same number of '{COMPLETIONS}'; this batch has {counts}")
        ids, masks = [], []
        for j in range(counts[0]):
            for e in examples:
                ids.append(e["prompt_ids"] + e["completion_ids"][j])
                masks.append([0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"][j]))
        if self.max_length is not None:
            keep = {"keep_start": slice(None, self.max_length), "keep_end": slice(-self.max_length, None)}
            if self.truncation_mode not in keep:
                raise UserError(f"truncation_mode must be one of {list(keep)}, got {self.truncation_mode!r}")
            ids = [x[keep[self.truncation_mode]] for x in ids]
            masks = [m[keep[self.truncation_mode]] for m in masks]

        def padded(rows: list[list[int]], value: int) -> torch.Tensor:
            tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
            return pad(tensors, padding_value=value, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)

        return {
            "input_ids": padded(ids, self.pad_token_id),
            "attention_mask": padded([[1] * len(x) for x in ids], 0),
            "completion_mask": padded(masks, 0),
            SCORES: torch.tensor([e[SCORES] for e in examples], dtype=torch.float32),
        }


def _column_names(dataset) -> list[str]:
    return list(dataset.column_names or next(iter(dataset)).keys())


def _checked_preference_probability(example: dict[str, Any]) -> dict[str, float]:
    value = example[PREFERENCE_PROBABILITY]
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"'{PREFERENCE_PROBABILITY}' must be a number in [0, 1], got {value!r}")
    return {PREFERENCE_PROBABILITY: float(value)}


def _tokenize_listwise(example: dict[str, Any], processing_class, eos_token: str) -> dict[str, Any]:
    """prompt + each completion -> prompt_ids, completion_ids (one list per candidate), as TRL tokenises pairs."""
    completions, scores = example[COMPLETIONS], example[SCORES]
    if not isinstance(completions, list) or len(completions) < 2:
        raise UserError(f"'{COMPLETIONS}' must be a list of at least 2 completions, got {completions!r}")
    if (
        not isinstance(scores, list)
        or len(scores) != len(completions)
        or not all(isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) for s in scores)
    ):
        raise UserError(f"'{SCORES}' must be a list of {len(completions)} finite numbers (one per completion), "
                        f"got {scores!r}")
    prompt = example["prompt"]
    if is_conversational(example):
        prompt_ids = trl_tokenize(processing_class, prompt, add_generation_prompt=True)["input_ids"]
        full_ids = [trl_tokenize(processing_class, prompt + c)["input_ids"] for c in completions]
    else:
        if not all(isinstance(c, str) for c in completions):
            raise UserError(f"'{COMPLETIONS}' of a text prompt must be strings, got {completions!r}")
        prompt_ids = trl_tokenize(processing_class, prompt)["input_ids"]
        full_ids = [
            trl_tokenize(processing_class, prompt + (c if c.endswith(eos_token) else c + eos_token))["input_ids"]
            for c in completions
        ]
    # The completion starts where prompt and prompt + completion diverge (TRL's rule for chat templates).
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    return {
        "prompt_ids": prompt_ids[:prompt_len],
        "completion_ids": [ids[prompt_len:] for ids in full_ids],
        SCORES: [float(s) for s in scores],
    }


class ThermoADPOTrainer(DPOTrainer):
    """A DPOTrainer whose loss is ADPO's KL(q || softmax((l - l^anc) / tau_anc)) over each prompt's candidates."""

    _tag_names = ["trl", "dpo", "adpo", "thermorl"]

    def __init__(self, model, ref_model=None, args: ThermoADPOConfig | None = None, **kwargs):
        if args is None:
            args = ThermoADPOConfig(output_dir="thermorl-adpo")
        if not isinstance(args, ThermoADPOConfig):
            raise TypeError(f"ThermoADPOTrainer needs a ThermoADPOConfig, got {type(args).__name__}.")
        super().__init__(model, ref_model=ref_model, args=args, **kwargs)
        self.queued_metrics = QueuedMetrics(self.accelerator)
        if type(self.data_collator) is DataCollatorForPreference:
            self.data_collator = DataCollatorForAnchoredPreference(**asdict(self.data_collator))
        self.tau_anc = args.tau_anc if args.tau_anc is not None else 1.0 / args.beta

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        columns = _column_names(dataset)
        if COMPLETIONS in columns:
            return self._prepare_listwise_dataset(dataset, processing_class, args, dataset_name, columns)
        missing = [c for c in ("chosen", "rejected") if c not in columns]
        if missing:
            raise UserError(
                f"The {dataset_name} dataset has no column(s) {missing}: ADPO needs 'chosen' and 'rejected' "
                f"(pairwise) or '{COMPLETIONS}' and '{SCORES}' (listwise); its columns are {columns}"
            )
        if PREFERENCE_PROBABILITY in columns:
            dataset = dataset.map(_checked_preference_probability)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _prepare_listwise_dataset(self, dataset, processing_class, args, dataset_name, columns):
        missing = [c for c in ("prompt", SCORES) if c not in columns]
        if missing:
            raise UserError(
                f"The listwise {dataset_name} dataset has no column(s) {missing}; its columns are {columns}"
            )
        if args.precompute_ref_log_probs:
            raise UserError(
                "precompute_ref_log_probs=True supports pairwise data only; set it to False for listwise data"
            )
        map_kwargs = {}
        if isinstance(dataset, Dataset):  # IterableDataset.map takes neither
            map_kwargs = {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing {dataset_name} listwise dataset"}
        dataset = dataset.map(
            _tokenize_listwise,
            fn_kwargs={"processing_class": processing_class, "eos_token": dpo_tokenizer(self).eos_token},
            **map_kwargs,
        )
        if isinstance(dataset, Dataset):
            counts = sorted(set(map(len, dataset[SCORES])))
            if len(counts) > 1:
                raise UserError(f"every prompt needs the same number of '{COMPLETIONS}'; {dataset_name} has {counts}")
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if not is_vision_dataset(self):
            add_signature_columns(self, ["completion_ids", *_TARGET_KEYS])

    def _target_probs(self, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, P) target q: softmax(scores / beta_r) for listwise rows, (q_c, 1 - q_c) for pairs."""
        if SCORES in inputs:
            return score_target_probs(inputs[SCORES].float(), self.args.beta_r)
        preference = inputs.get(PREFERENCE_PROBABILITY)
        if preference is None:
            preference = torch.ones(inputs["input_ids"].size(0) // 2, device=inputs["input_ids"].device)
        return pairwise_target_probs(preference.float())

    def _anchor_seq_logps(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Anchor log-prob of every row, through TRL's reference path (ref model, or adapters off with PEFT)."""
        if self.precompute_ref_logps:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        anchor = self.ref_model if self.ref_model is not None else self.model
        model_inputs = {k: v for k, v in inputs.items() if k not in _TARGET_KEYS}
        # TRL's helper returns the rows split in two halves (chosen, rejected); rejoined they are every candidate.
        return torch.cat(self.compute_ref_log_probs(anchor, model_inputs))

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        not_model_inputs = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", *_TARGET_KEYS)
        model_kwargs = {k: v for k, v in inputs.items() if k not in not_model_inputs}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Log-probs of prompt and padding positions (label -100) are 0, so the row sum is the completion's log-prob.
        seq_logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)

        target_probs = self._target_probs(inputs)
        num_candidates = target_probs.size(1)
        loss, metrics = adpo_preference_loss(
            seq_logps.view(num_candidates, -1).T,
            self._anchor_seq_logps(inputs).view(num_candidates, -1).T,
            target_probs,
            self.tau_anc,
        )
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            metrics["aux_loss"] = outputs.aux_loss
        self.queued_metrics.add(mode, metrics)

        if return_outputs:  # TRL's deprecated path for compute_metrics: the fused head built no logits
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.queued_metrics.flush(self)  # the loss's metrics, kept on the device until this line
        super().log(logs, start_time)


def preference_pairs_from_task(task, rows: Dataset, seed: int = 0) -> Dataset:
    """Pairwise data from a built-in task: each prompt's own answer (chosen) over another prompt's answer (rejected),
    kept only when the task's verifier says the rejected one is wrong for this prompt."""
    rng = random.Random(seed)
    answers = list(rows["answer"])
    pairs = []
    for row in rows:
        rejected = answers[rng.randrange(len(answers))]
        if not task.is_correct(rejected, row):
            pairs.append({"prompt": row["prompt"], "chosen": row["answer"], "rejected": rejected})
    return Dataset.from_list(pairs)
