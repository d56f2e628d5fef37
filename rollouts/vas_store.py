"""The per-prompt scores of the variance-aware sampler (VAS, MMR1 arXiv 2509.21268): pass rates, diversities, the
counts behind them, and the VPS read from them (`rollouts/vas.py` draws by it).

Scores: prompts never scored carry `prior_score` (default alpha/4 + beta, the largest VPS, so they get
drawn). The sampler's mode="online": `update` folds the training rollouts in. mode="rollout" (the paper): every
`update_interval` steps the trainer generates `rollouts_per_prompt` responses for the
prompts and passes them to `rescore`, which replaces their scores.
"""

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import UserError
from .vas_scores import DIVERSITY_MEASURES, Response, variance_promotion_score

PromptIndices = Sequence[int] | torch.Tensor
Rewards = Sequence[float] | torch.Tensor
# {prompt index: (rewards, responses or None)} of fresh rollouts, as `rescore` takes them.
RescoreResults = Mapping[int, tuple[Rewards, Sequence[Response] | None]]


class PromptScores:
    """Pass rate and trajectory diversity (TDS) of each of `num_prompts` prompts, and their VPS.

    Settings as `VarianceAwareSampler`'s, which checks them (`check_settings`) before building its store:
    prior_score: VPS of prompts never scored; None: alpha/4 + beta.
    alpha, beta: VPS weights. diversity: a name in `DIVERSITY_MEASURES` or a callable(responses) -> [0, 1].
    success_threshold: None reads rewards as success probabilities (they must lie in [0, 1]; binary
        rewards give the pass rate, others their mean); a float counts reward > threshold as a success.
    ema_decay (`update`): None keeps count-based means (pass rate over every rollout seen, TDS over
        every group seen); d in [0, 1) blends each update in as x <- d x + (1 - d) x_new.
    Unmeasured diversity (no responses given) counts as TDS = 0.
    """

    def __init__(
        self,
        num_prompts: int,
        *,
        prior_score: float | None,
        alpha: float,
        beta: float,
        diversity: str | Callable[[Sequence[Response]], float],
        success_threshold: float | None,
        ema_decay: float | None,
    ):
        self.num_prompts = num_prompts
        self.prior_score = alpha / 4 + beta if prior_score is None else prior_score
        self.alpha = alpha
        self.beta = beta
        self.diversity = DIVERSITY_MEASURES[diversity] if isinstance(diversity, str) else diversity
        self.success_threshold = success_threshold
        self.ema_decay = ema_decay
        # NaN = never scored / diversity never measured; change them through update / rescore.
        self.pass_rate = torch.full((num_prompts,), math.nan, dtype=torch.float64)
        self.diversity_score = torch.full((num_prompts,), math.nan, dtype=torch.float64)
        self.rollouts_seen = torch.zeros(num_prompts, dtype=torch.int64)
        self.groups_scored = torch.zeros(num_prompts, dtype=torch.int64)

    def vps(self) -> torch.Tensor:
        """Current VPS of every prompt, (num_prompts,) float64; `prior_score` where never scored."""
        scored = ~torch.isnan(self.pass_rate)
        scores = torch.full_like(self.pass_rate, self.prior_score)
        tds = self.diversity_score[scored].nan_to_num(0.0)
        scores[scored] = variance_promotion_score(self.pass_rate[scored], tds, self.alpha, self.beta)
        return scores

    # ---- updates --------------------------------------------------------------------------------

    def update(
        self, prompt_indices: PromptIndices, rewards: Rewards, responses: Sequence[Response] | None = None
    ) -> None:
        """Fold training rollouts in: one prompt index, reward (and response) per rollout.

        Rollouts are grouped by prompt index; each group updates that prompt's pass rate and, with
        responses, its TDS (count-based means, or EMA with `ema_decay`).
        """
        successes = self._successes(rewards)
        indices = self._checked_indices(prompt_indices, len(successes), responses)
        positions_by_prompt = defaultdict(list)
        for position, index in enumerate(indices):
            positions_by_prompt[index].append(position)
        for index, positions in positions_by_prompt.items():
            weight = self._new_weight(int(self.rollouts_seen[index]), len(positions))
            self._blend(self.pass_rate, index, float(successes[positions].mean()), weight)
            self.rollouts_seen[index] += len(positions)
            if responses is not None:
                weight = self._new_weight(int(self.groups_scored[index]), 1)
                self._blend(self.diversity_score, index, self.diversity([responses[p] for p in positions]), weight)
                self.groups_scored[index] += 1

    def rescore(self, results: RescoreResults) -> None:
        """Replace the scores of the given prompts: {prompt index: (rewards, responses or None)} of fresh rollouts."""
        fresh = {}
        for index, (rewards, responses) in results.items():
            successes = self._successes(rewards)
            index = self._checked_index(index)
            if responses is not None and len(responses) != len(successes):
                raise ValueError(f"prompt {index}: {len(responses)} responses for {len(successes)} rewards")
            tds = math.nan if responses is None else self.diversity(list(responses))
            fresh[index] = (float(successes.mean()), len(successes), tds)
        for index, (pass_rate, num_rollouts, tds) in fresh.items():
            self.pass_rate[index] = pass_rate
            self.rollouts_seen[index] = num_rollouts
            self.diversity_score[index] = tds
            self.groups_scored[index] = 0 if math.isnan(tds) else 1

    def _successes(self, rewards: Rewards) -> torch.Tensor:
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
        if rewards.ndim != 1 or len(rewards) == 0:
            raise ValueError(f"rewards must be a non-empty 1-D sequence, got shape {tuple(rewards.shape)}")
        if not bool(torch.isfinite(rewards).all()):
            raise UserError(f"rewards must be finite, got {rewards.tolist()}")
        if self.success_threshold is not None:
            return (rewards > self.success_threshold).double()
        if not bool(((rewards >= 0) & (rewards <= 1)).all()):
            raise UserError(
                f"rewards must lie in [0, 1] when success_threshold is None, got {rewards.tolist()}; "
                "set success_threshold (ThermoGRPOConfig: vas_success_threshold) to count reward > threshold "
                "as a success"
            )
        return rewards

    def _checked_indices(
        self, prompt_indices: PromptIndices, num_rewards: int, responses: Sequence[Response] | None
    ) -> list[int]:
        indices = list(prompt_indices)
        if len(indices) != num_rewards:
            raise ValueError(f"got {len(indices)} prompt_indices for {num_rewards} rewards")
        if responses is not None and len(responses) != num_rewards:
            raise ValueError(f"got {len(responses)} responses for {num_rewards} rewards")
        return [self._checked_index(index) for index in indices]

    def _checked_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_prompts:
            raise ValueError(f"prompt index {index} is outside [0, {self.num_prompts})")
        return index

    def _new_weight(self, seen: int, added: int) -> float:
        if seen == 0:
            return 1.0
        if self.ema_decay is None:
            return added / (seen + added)
        return 1.0 - self.ema_decay

    @staticmethod
    def _blend(store: torch.Tensor, index: int, value: float, weight: float) -> None:
        # weight 1 overwrites, so a NaN (never scored) entry does not poison the mean.
        store[index] = value if weight == 1.0 else (1 - weight) * store[index] + weight * value

    # ---- logging and checkpoints ----------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """VPS quantiles over all prompts (prior included), scored prompts, share of them at pass rate 0 or 1."""
        quantiles = torch.quantile(self.vps(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        scored = ~torch.isnan(self.pass_rate)
        scored_pass_rate = self.pass_rate[scored]
        return {
            "vas/vps_p10": quantiles[0],
            "vas/vps_p50": quantiles[1],
            "vas/vps_p90": quantiles[2],
            "vas/scored_prompts": float(scored.sum()),
            "vas/zero_variance_share": float(((scored_pass_rate == 0) | (scored_pass_rate == 1)).double().mean())
            if len(scored_pass_rate)
            else 0.0,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The four per-prompt tensors, by attribute name (the sampler's checkpoint holds them at its top level)."""
        return {
            "pass_rate": self.pass_rate.clone(),
            "diversity_score": self.diversity_score.clone(),
            "rollouts_seen": self.rollouts_seen.clone(),
            "groups_scored": self.groups_scored.clone(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Reads the keys `state_dict` writes; other keys (the sampler's, in its flat checkpoint) are left alone."""
        self.pass_rate = state["pass_rate"].clone()
        self.diversity_score = state["diversity_score"].clone()
        self.rollouts_seen = state["rollouts_seen"].clone()
        self.groups_scored = state["groups_scored"].clone()
