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
from transformers.utils import logging

from ..errors import UserError
from ..rollouts.vas import MODES, VarianceAwareSampler, check_settings

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
        if self.vas_mode is not None and self.vas_mode not in MODES:
            raise UserError(f"vas_mode must be None, 'online' or 'rollout', got {self.vas_mode!r}")
        settings = {key: getattr(self, field) for key, field in CONFIG_FIELDS.items() if key != "mode"}
        check_settings(CONFIG_FIELDS, **settings)


# VarianceAwareSampler's settings -> the config fields that set them.
CONFIG_FIELDS = {
    "mode": "vas_mode",
    "weighted_fraction": "vas_weighted_fraction",
    "min_probability_floor": "vas_probability_floor",
    "alpha": "vas_alpha",
    "beta": "vas_beta",
    "diversity": "vas_diversity",
    "update_interval": "vas_update_interval",
    "rollouts_per_prompt": "vas_rollouts_per_prompt",
    "success_threshold": "vas_success_threshold",
    "ema_decay": "vas_ema_decay",
    "prior_score": "vas_prior_score",
}


class VarianceAwarePrompts:
    """The trainer's prompt-sampling component: the VAS sampler, its score updates and re-rolls, its metrics and its
    checkpoint state. Inactive (`active` False) without `vas_mode`: TRL's RepeatSampler draws the prompts."""

    def __init__(self, args, accelerator):
        self.args = args
        self.accelerator = accelerator
        self.sampler: VarianceAwareSampler | None = None
        self.rescored_window: int | None = None  # global_step // vas_update_interval at the last re-roll
        self.cost = {"train_completions": 0, "rescore_completions": 0, "rescore_tokens": 0, "rescore_seconds": 0.0}

    @property
    def active(self) -> bool:
        return self.args.vas_mode is not None

    def indexed(self, train_dataset):
        """The train set as the trainer should hold it: with each row's index when active."""
        return _with_prompt_indices(train_dataset) if self.active else train_dataset

    def check_trainer(self, trainer) -> None:
        if self.args.vas_mode == "rollout" and (
            trainer.tools or trainer.rollout_func is not None or trainer.environment_factories is not None
            or {"image", "images"} & set(trainer.train_dataset.column_names)
        ):
            raise UserError(
                "vas_mode='rollout' re-rolls prompts with plain single-turn generation: it does not support tools, "
                "environments, rollout_func or images. Use vas_mode='online'."
            )

    def build_sampler(self, dataset, *, num_generations: int, num_iterations: int, shuffle: bool):
        """TRL's RepeatSampler layout (`GRPOTrainer._get_train_sampler`'s arguments), drawn by VPS."""
        args = self.args
        settings = {key: getattr(args, field) for key, field in CONFIG_FIELDS.items()}
        self.sampler = VarianceAwareSampler(
            data_source=dataset,
            mini_repeat_count=num_generations,
            batch_size=args.generation_batch_size // num_generations,
            repeat_count=num_iterations * args.steps_per_generation,
            shuffle=shuffle,
            seed=args.seed,
            **settings,
        )
        return self.sampler

    def before_rollout(self, step: int, sample_and_reward) -> None:
        """Rollout mode: re-roll and rescore every prompt at the first generation of each window of
        vas_update_interval optimizer steps (a resumed run re-rolls at its first generation)."""
        if self.sampler is None or self.sampler.mode != "rollout":
            return
        window = step // self.sampler.update_interval
        if window != self.rescored_window:
            self._rescore_all_prompts(sample_and_reward)
            self.rescored_window = window

    def after_rollout(self, prompt_indices: list, rewards: torch.Tensor, completion_ids: list):
        """Online mode: fold the training rollouts into the scores. `rewards` are every process's rows' weighted
        rewards in process order; `completion_ids` this process's. Returns the metrics to log (`_metrics`)."""
        rewards = rewards.detach().cpu()
        self.cost["train_completions"] += len(rewards)
        if self.sampler.mode == "online":
            responses = gather_object(completion_ids) if self.sampler.beta > 0 else None
            self.sampler.update(gather_object(prompt_indices), rewards, responses)
        return self._metrics()

    @torch.no_grad()
    def _rescore_all_prompts(self, sample_and_reward) -> None:
        """The paper's refresh: N completions for every train prompt from the current policy, then `rescore`.

        Prompts are split over the processes, in chunks of one generation batch's rows per process;
        `sample_and_reward(rows, n)` gives (every process's weighted rewards in process order, this process's
        completion ids) for n completions of each of this process's rows.
        """
        start = time.perf_counter()
        sampler, dataset = self.sampler, self.sampler.data_source
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
            rewards, completion_ids = sample_and_reward(rows, rollouts)
            owners = gather_object([i for i in indices for _ in range(rollouts)])
            all_completion_ids = gather_object(completion_ids)
            for index, reward, ids in zip(owners, rewards.tolist(), all_completion_ids, strict=True):
                if index >= 0:
                    scored_rewards, responses = results.setdefault(index, ([], []))
                    scored_rewards.append(reward)
                    responses.append(ids)
                    self.cost["rescore_completions"] += 1
                    self.cost["rescore_tokens"] += len(ids)
        sampler.rescore({index: (r, ids if sampler.beta > 0 else None) for index, (r, ids) in results.items()})
        self.cost["rescore_seconds"] += time.perf_counter() - start

    def _metrics(self) -> tuple[dict[str, float], dict[str, float]]:
        """(metrics of this batch: VPS quantiles, scored prompts, share of scored prompts at pass rate 0 or 1 -- TRL's
        frac_reward_zero_std gives the batch's share of zero-variance groups; running totals, which replace the
        previous value as TRL's num_tokens does: in rollout mode the cumulative re-roll cost)."""
        totals = {}
        if self.sampler.mode == "rollout":
            cost = self.cost
            totals = {
                "vas/rescore_completions": float(cost["rescore_completions"]),
                "vas/rescore_tokens": float(cost["rescore_tokens"]),
                "vas/rescore_seconds": cost["rescore_seconds"],
                "vas/rescore_to_train_completions": cost["rescore_completions"] / cost["train_completions"],
            }
        return self.sampler.metrics(), totals

    # ---- checkpoints --------------------------------------------------------------------------------

    def save(self, checkpoint: str) -> None:
        if self.sampler is not None:
            state = {"sampler": self.sampler.state_dict(), "rescored_window": self.rescored_window,
                     "cost": dict(self.cost)}
            torch.save(state, os.path.join(checkpoint, STATE_FILE))

    def load(self, checkpoint: str) -> None:
        """Called where the Trainer restores the rest of its training state: after building the train dataloader
        (so the sampler exists) and before drawing the first batch."""
        if self.sampler is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            logger.warning(f"{checkpoint} has no {STATE_FILE}: variance-aware sampling starts from unscored prompts.")
            return
        state = torch.load(path, weights_only=True)
        # The Trainer replays the resumed epoch from its first batch (skipping what was trained on, or restarting it
        # with ignore_data_skip): position 0, and the sampler replays its kept draws for the batches drawn before.
        self.sampler.load_state_dict({**state["sampler"], "position": 0})
        self.rescored_window = state["rescored_window"]
        self.cost = state["cost"]


def split_prompt_indices(inputs: list[dict]) -> tuple[list, list[dict]]:
    """(each row's prompt index, or None without VAS; the rows without the index column, as TRL should see them)."""
    indices = [row.get(PROMPT_INDEX_COLUMN) for row in inputs]
    return indices, [{k: v for k, v in row.items() if k != PROMPT_INDEX_COLUMN} for row in inputs]


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
