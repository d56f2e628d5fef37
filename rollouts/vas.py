"""Variance-aware prompt sampler (VAS, MMR1 arXiv 2509.21268) with the layout of TRL's `RepeatSampler`.

Each batch of B unique prompts takes m = floor(lambda B) prompts drawn with replacement from

    p_i = (1 - f) VPS_i / sum_j VPS_j + f / n        (f = min_probability_floor; VPS all 0: uniform)

and the other B - m uniformly, from a per-epoch random permutation: no prompt twice in an epoch's uniform
part, so lambda = 0 visits every prompt once per epoch, like `RepeatSampler`. A prompt may appear in both
parts of one batch. Every prompt index is yielded `mini_repeat_count` times in a row and every batch
`repeat_count` times, exactly as `trl.trainer.utils.RepeatSampler` (same `len`, `drop_last` of the
incomplete batch), so it drops into `GRPOTrainer._get_train_sampler` with the same arguments.

Laziness: a batch is drawn when its first index is requested, from the scores held at that moment. The
DataLoader reads ahead (accelerate's DataLoaderShard by one batch, `Trainer.get_batch_samples` by
gradient_accumulation_steps batches, workers by prefetch_factor batches), so in GRPO the next generation
batch is drawn before the current one's rewards reach `update`: the scores lag by one generation batch.

Ranks: batch b of epoch e is drawn with a torch.Generator seeded from hash(seed, e, b) (the epoch's
permutation from hash(seed, e)), so ranks with equal seeds and equal scores draw equal indices, and
replaying or skipping batches does not shift later draws. The batches drawn in the current epoch are kept
(in the state dict too) and a batch asked for again is replayed, not redrawn: a run resumed from a
checkpoint then gets back the read-ahead batches exactly as the uninterrupted run drew them, from the
scores of that earlier moment. The sampler does no communication: the trainer
all-gathers rollouts and passes the same, identically ordered, data to `update` / `rescore` on every rank.

Scores: prompts never scored carry `prior_score` (default alpha/4 + beta, the largest VPS, so they get
drawn). mode="online": `update` folds the training rollouts in. mode="rollout" (the paper): every
`update_interval` steps the trainer generates `rollouts_per_prompt` responses for the
prompts and passes them to `rescore`, which replaces their scores.
"""

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized

import torch
from torch.utils.data import Sampler

from ..errors import UserError
from .vas_scores import DIVERSITY_MEASURES, Response, variance_promotion_score

MODES = ("online", "rollout")


def check_settings(names: dict[str, str] | None = None, **settings) -> None:
    """UserError naming the first sampler setting (among those given) out of its range. `names` maps a setting to
    the name the user wrote it under (e.g. ThermoGRPOConfig's vas_* fields), for the message."""
    names = names or {}

    def name(key: str) -> str:
        return names.get(key, key)

    for key in ("weighted_fraction", "min_probability_floor", "alpha", "beta", "success_threshold", "ema_decay",
                "prior_score"):  # NaN passes every comparison below
        value = settings.get(key)
        if value is not None and not math.isfinite(value):
            raise UserError(f"{name(key)} must be a finite number, got {value}")
    if "mode" in settings and settings["mode"] not in MODES:
        raise UserError(f"{name('mode')} must be one of {MODES}, got {settings['mode']!r}")
    for key in ("weighted_fraction", "min_probability_floor"):
        if key in settings and not 0 <= settings[key] <= 1:
            raise UserError(f"{name(key)} must lie in [0, 1], got {settings[key]}")
    alpha, beta = settings.get("alpha", 1.0), settings.get("beta", 1.0)
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise UserError(f"{name('alpha')} and {name('beta')} must be >= 0 with a positive sum, got {alpha} and {beta}")
    diversity = settings.get("diversity", "distinct_n")
    if not callable(diversity) and diversity not in DIVERSITY_MEASURES:
        raise UserError(
            f"{name('diversity')} must be one of {sorted(DIVERSITY_MEASURES)} or a callable, got {diversity!r}"
        )
    if settings.get("update_interval", 1) < 1:
        raise UserError(f"{name('update_interval')} must be >= 1, got {settings['update_interval']}")
    if settings.get("rollouts_per_prompt", 2) < 2:
        raise UserError(
            f"{name('rollouts_per_prompt')} must be >= 2 (one rollout has no variance), "
            f"got {settings['rollouts_per_prompt']}"
        )
    if settings.get("ema_decay") is not None and not 0 <= settings["ema_decay"] < 1:
        raise UserError(f"{name('ema_decay')} must be None or lie in [0, 1), got {settings['ema_decay']}")
    if settings.get("prior_score") is not None and settings["prior_score"] < 0:
        raise UserError(f"{name('prior_score')} must be None or >= 0, got {settings['prior_score']}")


class VarianceAwareSampler(Sampler[int]):
    """`RepeatSampler` whose batches are drawn partly in proportion to the Variance Promotion Score.

    First six arguments as `trl.trainer.utils.RepeatSampler`. `seed=None` draws one from torch's global
    RNG: pass the trainer's seed when several processes must agree. With `shuffle=False` the uniform part
    walks the dataset in order and the batch is not permuted (the weighted part is random regardless).

    weighted_fraction: lambda, share of each batch drawn by VPS (paper 0.5; 1.0 hurts).
    min_probability_floor: f, uniform mass mixed into the weighted draws; every prompt keeps
        probability >= f / n there; f = 0 leaves zero-VPS prompts to the uniform part only.
    alpha, beta: VPS weights. diversity: a name in `DIVERSITY_MEASURES` or a callable(responses) -> [0, 1].
    success_threshold: None reads rewards as success probabilities (they must lie in [0, 1]; binary
        rewards give the pass rate, others their mean); a float counts reward > threshold as a success.
    ema_decay (online mode): None keeps count-based means (pass rate over every rollout seen, TDS over
        every group seen); d in [0, 1) blends each update in as x <- d x + (1 - d) x_new.
    Unmeasured diversity (no responses given) counts as TDS = 0.
    """

    def __init__(
        self,
        data_source: Sized,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        weighted_fraction: float = 0.5,
        min_probability_floor: float = 0.05,
        mode: str = "online",
        prior_score: float | None = None,
        alpha: float = 0.8,
        beta: float = 0.2,
        diversity: str | Callable[[Sequence[Response]], float] = "distinct_n",
        success_threshold: float | None = None,
        ema_decay: float | None = None,
        update_interval: int = 35,
        rollouts_per_prompt: int = 8,
    ):
        for name, value in {"mini_repeat_count": mini_repeat_count, "batch_size": batch_size,
                            "repeat_count": repeat_count}.items():
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if batch_size > len(data_source):
            raise UserError(f"batch_size ({batch_size}) exceeds the number of prompts ({len(data_source)})")
        check_settings(
            mode=mode, weighted_fraction=weighted_fraction, min_probability_floor=min_probability_floor, alpha=alpha,
            beta=beta, diversity=diversity, update_interval=update_interval, rollouts_per_prompt=rollouts_per_prompt,
            success_threshold=success_threshold, ema_decay=ema_decay, prior_score=prior_score,
        )
        if isinstance(diversity, str):
            diversity = DIVERSITY_MEASURES[diversity]
        prior_score = alpha / 4 + beta if prior_score is None else prior_score

        self.data_source = data_source
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_samples = len(data_source)
        self.shuffle = shuffle
        self.seed = int(torch.randint(2**62, ()).item()) if seed is None else seed
        self.weighted_fraction = weighted_fraction
        self.min_probability_floor = min_probability_floor
        self.mode = mode
        self.prior_score = prior_score
        self.alpha = alpha
        self.beta = beta
        self.diversity = diversity
        self.success_threshold = success_threshold
        self.ema_decay = ema_decay
        self.update_interval = update_interval
        self.rollouts_per_prompt = rollouts_per_prompt
        # The epsilon keeps e.g. 0.29 * 100 = 28.999... at 29.
        self.num_weighted = math.floor(weighted_fraction * batch_size + 1e-9)
        self.batches_per_epoch = self.num_samples // batch_size

        # Score store (NaN = never scored / diversity never measured); change it through update / rescore.
        self.pass_rate = torch.full((self.num_samples,), math.nan, dtype=torch.float64)
        self.diversity_score = torch.full((self.num_samples,), math.nan, dtype=torch.float64)
        self.rollouts_seen = torch.zeros(self.num_samples, dtype=torch.int64)
        self.groups_scored = torch.zeros(self.num_samples, dtype=torch.int64)
        self.weighted_draws = 0
        self.uniform_draws = 0
        self.epoch = 0
        self.position = 0  # batches of the current epoch already drawn
        self.drawn_batches: dict[int, list[int]] = {}  # this epoch's draws by position, replayed if asked again

    # ---- sampling -------------------------------------------------------------------------------

    def vps(self) -> torch.Tensor:
        """Current VPS of every prompt, (num_samples,) float64; `prior_score` where never scored."""
        scored = ~torch.isnan(self.pass_rate)
        scores = torch.full_like(self.pass_rate, self.prior_score)
        tds = self.diversity_score[scored].nan_to_num(0.0)
        scores[scored] = variance_promotion_score(self.pass_rate[scored], tds, self.alpha, self.beta)
        return scores

    def probabilities(self) -> torch.Tensor:
        """Probabilities of the weighted draws: (1 - f) VPS / sum(VPS) + f / n."""
        scores = self.vps()
        total = scores.sum()
        proportional = scores / total if total > 0 else torch.full_like(scores, 1 / self.num_samples)
        return (1 - self.min_probability_floor) * proportional + self.min_probability_floor / self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate / Trainer at each epoch; a new epoch number restarts at its first batch."""
        if epoch != self.epoch:
            self.epoch, self.position, self.drawn_batches = epoch, 0, {}

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size * self.mini_repeat_count * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        uniform_order = self._uniform_order(epoch)
        while self.position < self.batches_per_epoch:
            batch = self.drawn_batches.get(self.position)
            if batch is None:
                batch = self.drawn_batches[self.position] = self._draw_batch(epoch, self.position, uniform_order)
            self.position += 1
            for _ in range(self.repeat_count):
                for index in batch:
                    for _ in range(self.mini_repeat_count):
                        yield index
        self.epoch, self.position, self.drawn_batches = epoch + 1, 0, {}

    def _generator(self, *key: int) -> torch.Generator:
        digest = hashlib.blake2b(repr((self.seed, *key)).encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

    def _uniform_order(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=self._generator(epoch))
        return torch.arange(self.num_samples)

    def _draw_batch(self, epoch: int, batch: int, uniform_order: torch.Tensor) -> list[int]:
        generator = self._generator(epoch, batch)
        num_uniform = self.batch_size - self.num_weighted
        uniform = uniform_order[batch * num_uniform : (batch + 1) * num_uniform]
        weighted = torch.empty(0, dtype=torch.int64)
        if self.num_weighted:
            weighted = torch.multinomial(self.probabilities(), self.num_weighted, replacement=True, generator=generator)
        indices = torch.cat([weighted, uniform])
        if self.shuffle:
            # Spread the weighted (harder, often longer) prompts over the ranks that split the batch.
            indices = indices[torch.randperm(self.batch_size, generator=generator)]
        self.weighted_draws += self.num_weighted
        self.uniform_draws += num_uniform
        return indices.tolist()

    # ---- scores ---------------------------------------------------------------------------------

    def update(
        self,
        prompt_indices: Sequence[int] | torch.Tensor,
        rewards: Sequence[float] | torch.Tensor,
        responses: Sequence[Response] | None = None,
    ) -> None:
        """Fold training rollouts in (mode="online"): one prompt index, reward (and response) per rollout.

        Rollouts are grouped by prompt index; each group updates that prompt's pass rate and, with
        responses, its TDS (count-based means, or EMA with `ema_decay`). Pass every rank the same
        all-gathered data in the same order.
        """
        if self.mode != "online":
            raise ValueError(f"update() needs mode='online', this sampler has mode={self.mode!r}: call rescore()")
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

    def rescore(
        self, results: Mapping[int, tuple[Sequence[float] | torch.Tensor, Sequence[Response] | None]]
    ) -> None:
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

    def _successes(self, rewards: Sequence[float] | torch.Tensor) -> torch.Tensor:
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
        self, prompt_indices: Sequence[int] | torch.Tensor, num_rewards: int, responses: Sequence[Response] | None
    ) -> list[int]:
        indices = list(prompt_indices)
        if len(indices) != num_rewards:
            raise ValueError(f"got {len(indices)} prompt_indices for {num_rewards} rewards")
        if responses is not None and len(responses) != num_rewards:
            raise ValueError(f"got {len(responses)} responses for {num_rewards} rewards")
        return [self._checked_index(index) for index in indices]

    def _checked_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_samples:
            raise ValueError(f"prompt index {index} is outside [0, {self.num_samples})")
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
        """VPS quantiles over all prompts (prior included), scored prompts, weighted-draw share."""
        quantiles = torch.quantile(self.vps(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        scored = ~torch.isnan(self.pass_rate)
        scored_pass_rate = self.pass_rate[scored]
        draws = self.weighted_draws + self.uniform_draws
        return {
            "vas/vps_p10": quantiles[0],
            "vas/vps_p50": quantiles[1],
            "vas/vps_p90": quantiles[2],
            "vas/scored_prompts": float(scored.sum()),
            "vas/zero_variance_share": float(((scored_pass_rate == 0) | (scored_pass_rate == 1)).double().mean())
            if len(scored_pass_rate)
            else 0.0,
            "vas/weighted_draw_share": self.weighted_draws / draws if draws else 0.0,
        }

    def state_dict(self) -> dict:
        """Scores, counters, the stream position (epoch, batches drawn in it) and this epoch's draws; torch.save-able.

        The draws are keyed by (seed, epoch, batch), so this is the whole generator state. Under
        `transformers.Trainer`, resuming replays the resumed epoch's first batches (skip_first_batches)
        unless `ignore_data_skip`: load with `state["position"] = 0` then, or the skip is applied twice;
        the replay returns the kept draws, so the read-ahead batches (drawn before the checkpoint but not
        trained on: `position` counts them) come back as they were.
        """
        return {
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self.position,
            "drawn_batches": {position: list(batch) for position, batch in self.drawn_batches.items()},
            "pass_rate": self.pass_rate.clone(),
            "diversity_score": self.diversity_score.clone(),
            "rollouts_seen": self.rollouts_seen.clone(),
            "groups_scored": self.groups_scored.clone(),
            "weighted_draws": self.weighted_draws,
            "uniform_draws": self.uniform_draws,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("seed", "num_samples", "batch_size"):
            if state[name] != getattr(self, name):
                raise UserError(f"state_dict has {name}={state[name]}, this sampler has {name}={getattr(self, name)}")
        self.epoch = state["epoch"]
        self.position = state["position"]
        self.drawn_batches = {int(position): list(batch) for position, batch in state["drawn_batches"].items()}
        self.pass_rate = state["pass_rate"].clone()
        self.diversity_score = state["diversity_score"].clone()
        self.rollouts_seen = state["rollouts_seen"].clone()
        self.groups_scored = state["groups_scored"].clone()
        self.weighted_draws = state["weighted_draws"]
        self.uniform_draws = state["uniform_draws"]
