"""Variance-aware prompt sampling (VAS, MMR1 arXiv 2509.21268) for ThermoGRPOTrainer: config fields and trainer hooks.

A group whose rewards are all equal gives GRPO no gradient. VAS draws each generation batch partly in proportion to
VPS(x) = alpha P(x) (1 - P(x)) + beta TDS(x) (`thermorl.rollouts.VarianceAwareSampler`, which keeps TRL's
RepeatSampler layout). The hooks here keep its scores fresh and its state in checkpoints:

- `online`: every training generation batch is folded into the scores (no extra generation). The DataLoader reads
  ahead, so a batch is drawn from the scores of one generation batch earlier.
- `rollout` (the paper): at the first generation of every window of `vas_update_interval` optimizer steps, every
  prompt of the train set is re-rolled `vas_rollouts_per_prompt` times with the current policy (TRL's generation
  path, so EAD schedules apply) and rescored; its cost is logged as `vas/rescore_*`.

Each row of the train set carries its index in a column (`PROMPT_INDEX_COLUMN`) that is removed before TRL sees the
inputs, so reward functions never get it. All ranks pass the same gathered data to the sampler.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl.data_utils import is_conversational

from ..errors import UserError
from ..rollouts.vas import MODES, VarianceAwareSampler
from ..rollouts.vas_scores import DIVERSITY_MEASURES

logger = logging.get_logger(__name__)

PROMPT_INDEX_COLUMN = "vas_prompt_index"
STATE_FILE = "vas_sampler.pt"


@dataclass
class VarianceAwareSamplingArguments:
    """Config fields for variance-aware prompt sampling (VAS, arXiv 2509.21268); off unless `vas_mode` is set."""

    vas_mode: str | None = field(
        default=None,
        metadata={
            "help": "Variance-aware prompt sampling: None (off, TRL's uniform RepeatSampler), 'online' (scores "
            "from the training rollouts, no extra generation) or 'rollout' (the paper: re-roll every prompt "
            "every vas_update_interval steps)."
        },
    )
    vas_weighted_fraction: float = field(
        default=0.5,
        metadata={"help": "lambda: share of each batch's prompts drawn in proportion to VPS, the rest uniformly "
                  "(paper 0.5; 1.0 hurts)."},
    )
    vas_probability_floor: float = field(
        default=0.05,
        metadata={"help": "Uniform mass f mixed into the VPS draws: p = (1 - f) VPS / sum VPS + f / n, so no prompt "
                  "has probability 0 there; 0 leaves zero-VPS prompts to the uniform share only."},
    )
    vas_alpha: float = field(default=0.8, metadata={"help": "Weight of the outcome variance P (1 - P) in VPS."})
    vas_beta: float = field(default=0.2, metadata={"help": "Weight of the trajectory diversity TDS in VPS."})
    vas_diversity: str = field(
        default="distinct_n",
        metadata={"help": "TDS measure over a group's completion token ids: distinct_n, inverse_self_bleu or "
                  "edit_distance (O(N^2 L^2): short completions only)."},
    )
    vas_update_interval: int = field(
        default=35,
        metadata={"help": "T_update (rollout mode): optimizer steps between re-rolls of the whole train set "
                  "(paper 35; 14-35 good)."},
    )
    vas_rollouts_per_prompt: int = field(
        default=8,
        metadata={"help": "N (rollout mode): completions generated per prompt at each re-roll (paper 8-32)."},
    )
    vas_success_threshold: float | None = field(
        default=None,
        metadata={"help": "None: the weighted reward sum is read as a success probability and must lie in [0, 1]; "
                  "a number: a rollout counts as a success when its reward exceeds it."},
    )
    vas_ema_decay: float | None = field(
        default=None,
        metadata={"help": "Online mode: None keeps running means over every rollout seen; d in [0, 1) blends each "
                  "new group in as x <- d x + (1 - d) x_new, forgetting stale scores."},
    )
    vas_prior_score: float | None = field(
        default=None,
        metadata={"help": "VPS of prompts never scored; None: the largest possible, alpha / 4 + beta, so unseen "
                  "prompts get drawn."},
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("vas_weighted_fraction", "vas_probability_floor", "vas_alpha", "vas_beta", "vas_success_threshold",
                     "vas_ema_decay", "vas_prior_score"):  # NaN passes every comparison below
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
        if self.vas_mode not in (None, *MODES):
            raise UserError(f"vas_mode must be None, 'online' or 'rollout', got {self.vas_mode!r}")
        for name in ("vas_weighted_fraction", "vas_probability_floor"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.vas_alpha < 0 or self.vas_beta < 0 or self.vas_alpha + self.vas_beta == 0:
            raise UserError(
                f"vas_alpha and vas_beta must be >= 0 with a positive sum, got {self.vas_alpha} and {self.vas_beta}"
            )
        if self.vas_diversity not in DIVERSITY_MEASURES:
            raise UserError(f"vas_diversity must be one of {sorted(DIVERSITY_MEASURES)}, got {self.vas_diversity!r}")
        if self.vas_update_interval < 1:
            raise UserError(f"vas_update_interval must be >= 1, got {self.vas_update_interval}")
        if self.vas_rollouts_per_prompt < 2:
            raise UserError(
                "vas_rollouts_per_prompt must be >= 2 (one rollout has no variance), "
                f"got {self.vas_rollouts_per_prompt}"
            )
        if self.vas_ema_decay is not None and not 0 <= self.vas_ema_decay < 1:
            raise UserError(f"vas_ema_decay must be None or lie in [0, 1), got {self.vas_ema_decay}")
        if self.vas_prior_score is not None and self.vas_prior_score < 0:
            raise UserError(f"vas_prior_score must be None or >= 0, got {self.vas_prior_score}")


class VarianceAwareSamplingMixin:
    """Trainer hooks for VAS: the sampler, its score updates and re-rolls, its metrics and its checkpoint state.

    For ThermoGRPOTrainer, whose `_calculate_rewards` leaves `_latest_rewards` (the weighted reward sum of every
    process's rows) that the scores are made from.
    """

    def __init__(self, model, reward_funcs, args=None, train_dataset=None, **kwargs):
        self.vas_sampler: VarianceAwareSampler | None = None
        self._vas_rescored_window: int | None = None  # global_step // vas_update_interval at the last re-roll
        self._vas_cost = {"train_completions": 0, "rescore_completions": 0, "rescore_tokens": 0, "rescore_seconds": 0.0}
        self._vas_completion_ids: list | None = None
        if getattr(args, "vas_mode", None) is not None:
            train_dataset = _with_prompt_indices(train_dataset)
        super().__init__(model, reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        if self._vas_mode == "rollout" and (
            self.tools or self.rollout_func is not None or self.environment_factories is not None
            or {"image", "images"} & set(self.train_dataset.column_names)
        ):
            raise UserError(
                "vas_mode='rollout' re-rolls prompts with plain single-turn generation: it does not support tools, "
                "environments, rollout_func or images. Use vas_mode='online'."
            )

    @property
    def _vas_mode(self) -> str | None:
        return getattr(self.args, "vas_mode", None)

    # ---- the sampler --------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # remove_unused_columns=True would otherwise drop the index column before it reaches the trainer.
        if self._vas_mode is not None and PROMPT_INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(PROMPT_INDEX_COLUMN)

    def _get_train_sampler(self, dataset: Dataset | None = None):
        if self._vas_mode is None:
            return super()._get_train_sampler(dataset)
        args = self.args
        self.vas_sampler = VarianceAwareSampler(
            data_source=self.train_dataset if dataset is None else dataset,
            mini_repeat_count=self.num_generations,
            batch_size=args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=args.seed,
            weighted_fraction=args.vas_weighted_fraction,
            min_probability_floor=args.vas_probability_floor,
            mode=args.vas_mode,
            prior_score=args.vas_prior_score,
            alpha=args.vas_alpha,
            beta=args.vas_beta,
            diversity=args.vas_diversity,
            success_threshold=args.vas_success_threshold,
            ema_decay=args.vas_ema_decay,
            update_interval=args.vas_update_interval,
            rollouts_per_prompt=args.vas_rollouts_per_prompt,
        )
        return self.vas_sampler

    # ---- scores from rollouts -----------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._vas_completion_ids = completion_ids_list
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        prompt_indices = [row.get(PROMPT_INDEX_COLUMN) for row in inputs]
        inputs = [{k: v for k, v in row.items() if k != PROMPT_INDEX_COLUMN} for row in inputs]
        sampler = self.vas_sampler
        if sampler is None or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        if sampler.mode == "rollout":
            window = self.state.global_step // sampler.update_interval
            if window != self._vas_rescored_window:
                self._vas_rescore_all_prompts()
                self._vas_rescored_window = window
        batch = super()._generate_and_score_completions(inputs)
        # ThermoGRPOTrainer._calculate_rewards left the weighted rewards of all processes' rows, in process order.
        rewards = self._latest_rewards.detach().cpu()
        self._vas_cost["train_completions"] += len(rewards)
        if sampler.mode == "online":
            responses = gather_object(self._vas_completion_ids) if sampler.beta > 0 else None
            sampler.update(gather_object(prompt_indices), rewards, responses)
        self._vas_log_metrics()
        return batch

    @torch.no_grad()
    def _vas_rescore_all_prompts(self) -> None:
        """The paper's refresh: N completions for every train prompt from the current policy, then `rescore`.

        Prompts are split over the processes, in chunks of one generation batch's rows per process.
        """
        start = time.perf_counter()
        sampler, dataset = self.vas_sampler, self.train_dataset
        rollouts = sampler.rollouts_per_prompt
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_process = math.ceil(len(dataset) / world)
        mine = list(range(rank * per_process, min((rank + 1) * per_process, len(dataset))))
        chunk = max(1, self.args.per_device_train_batch_size * self.args.steps_per_generation // rollouts)
        # Every process must make the same collective calls: pad with prompt 0, marked -1 so it is not scored.
        mine += [-1] * (per_process - len(mine))
        results: dict[int, tuple[list[float], list[list[int]]]] = {}
        for first in range(0, per_process, chunk):
            indices = mine[first : first + chunk]
            rows = [{k: v for k, v in dataset[max(i, 0)].items() if k != PROMPT_INDEX_COLUMN} for i in indices]
            inputs = [row for row in rows for _ in range(rollouts)]
            prompts = [row["prompt"] for row in inputs]
            prompt_ids, images, multimodal_fields = self._tokenize_prompts(prompts)
            completion_ids, _ = self._generate_single_turn(prompt_ids, images, multimodal_fields, rollouts)
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            if is_conversational(inputs[0]):
                completions = [[{"role": "assistant", "content": text}] for text in texts]
            else:
                completions = texts
            self._calculate_rewards(inputs, prompts, completions, completion_ids)
            rewards = self._latest_rewards.detach().cpu().tolist()
            owners = gather_object([i for i in indices for _ in range(rollouts)])
            all_completion_ids = gather_object(completion_ids)
            for index, reward, ids in zip(owners, rewards, all_completion_ids, strict=True):
                if index >= 0:
                    scored_rewards, responses = results.setdefault(index, ([], []))
                    scored_rewards.append(reward)
                    responses.append(ids)
                    self._vas_cost["rescore_completions"] += 1
                    self._vas_cost["rescore_tokens"] += len(ids)
        # Whatever the reward functions logged (log_extra / log_metric) belongs to these completions, which are not
        # in the training batch whose logs TRL flushes next.
        self._pending_extra_logs.clear()
        self._pending_metrics.clear()
        sampler.rescore({index: (r, ids if sampler.beta > 0 else None) for index, (r, ids) in results.items()})
        self._vas_cost["rescore_seconds"] += time.perf_counter() - start

    def _vas_log_metrics(self) -> None:
        """VPS quantiles, scored prompts, share of scored prompts at pass rate 0 or 1 (TRL's frac_reward_zero_std
        gives the batch's share of zero-variance groups); in rollout mode the cumulative re-roll cost."""
        metrics = self._metrics["train"]
        for name, value in self.vas_sampler.metrics().items():
            metrics[name].append(value)
        if self.vas_sampler.mode == "rollout":
            cost = self._vas_cost
            # Cumulative counts: one value per log, as TRL logs num_tokens.
            metrics["vas/rescore_completions"] = [float(cost["rescore_completions"])]
            metrics["vas/rescore_tokens"] = [float(cost["rescore_tokens"])]
            metrics["vas/rescore_seconds"] = [cost["rescore_seconds"]]
            metrics["vas/rescore_to_train_completions"] = [cost["rescore_completions"] / cost["train_completions"]]

    # ---- checkpoints --------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.vas_sampler is None or not self.args.should_save:
            return
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint = os.path.join(self._get_output_dir(trial=trial), folder)
        state = {"sampler": self.vas_sampler.state_dict(), "rescored_window": self._vas_rescored_window,
                 "cost": dict(self._vas_cost)}
        torch.save(state, os.path.join(checkpoint, STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        # The Trainer restores the rest of its training state here, after building the train dataloader (so the
        # sampler exists) and before drawing the first batch; TRL restores its entropy controller here too.
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.vas_sampler is None or checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            logger.warning(f"{checkpoint} has no {STATE_FILE}: variance-aware sampling starts from unscored prompts.")
            return
        state = torch.load(path, weights_only=True)
        # The Trainer replays the resumed epoch from its first batch (skipping what was trained on, or restarting it
        # with ignore_data_skip): position 0, and the sampler replays its kept draws for the batches drawn before.
        self.vas_sampler.load_state_dict({**state["sampler"], "position": 0})
        self._vas_rescored_window = state["rescored_window"]
        self._vas_cost = state["cost"]


def _with_prompt_indices(train_dataset):
    """The train set with each row's index in PROMPT_INDEX_COLUMN, which the scores are keyed by."""
    if not isinstance(train_dataset, Dataset):
        raise UserError(
            f"vas_mode needs a map-style datasets.Dataset as train_dataset (prompts it can index and score), "
            f"got {type(train_dataset).__name__}"
        )
    if PROMPT_INDEX_COLUMN in train_dataset.column_names:
        raise UserError(f"train_dataset already has a column named {PROMPT_INDEX_COLUMN!r}, which VAS reserves")
    return train_dataset.add_column(PROMPT_INDEX_COLUMN, list(range(len(train_dataset))))
