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

The scores the weighted part is drawn by live in `sampler.scores`, a `PromptScores` (rollouts/vas_store.py).
"""

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence, Sized

import torch
from torch.utils.data import Sampler

from ..errors import UserError
from .vas_scores import DIVERSITY_MEASURES, Response
from .vas_store import PromptIndices, PromptScores, RescoreResults, Rewards

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
    mode: "online" (the trainer folds its rollouts in with `update`) or "rollout" (`update` refused: every
        `update_interval` steps the trainer re-rolls each prompt `rollouts_per_prompt` times and calls `rescore`).
    prior_score, alpha, beta, diversity, success_threshold, ema_decay: the score store's (`PromptScores`).
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
        self.update_interval = update_interval
        self.rollouts_per_prompt = rollouts_per_prompt
        # The epsilon keeps e.g. 0.29 * 100 = 28.999... at 29.
        self.num_weighted = math.floor(weighted_fraction * batch_size + 1e-9)
        self.batches_per_epoch = self.num_samples // batch_size

        self.scores = PromptScores(
            self.num_samples, prior_score=prior_score, alpha=alpha, beta=beta, diversity=diversity,
            success_threshold=success_threshold, ema_decay=ema_decay,
        )
        self.weighted_draws = 0
        self.uniform_draws = 0
        self.epoch = 0
        self.position = 0  # batches of the current epoch already drawn
        self.drawn_batches: dict[int, list[int]] = {}  # this epoch's draws by position, replayed if asked again

    # ---- sampling -------------------------------------------------------------------------------

    def probabilities(self) -> torch.Tensor:
        """Probabilities of the weighted draws: (1 - f) VPS / sum(VPS) + f / n."""
        scores = self.scores.vps()
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

    # ---- scores: the store's, reached through the sampler by the trainer ------------------------

    @property
    def beta(self) -> float:
        """TDS weight in VPS: with 0, responses need not be passed to `update` / `rescore`."""
        return self.scores.beta

    def vps(self) -> torch.Tensor:
        """`PromptScores.vps`: current VPS of every prompt."""
        return self.scores.vps()

    def update(
        self, prompt_indices: PromptIndices, rewards: Rewards, responses: Sequence[Response] | None = None
    ) -> None:
        """mode="online": `PromptScores.update`. Pass every rank the same all-gathered data in the same order."""
        if self.mode != "online":
            raise ValueError(f"update() needs mode='online', this sampler has mode={self.mode!r}: call rescore()")
        self.scores.update(prompt_indices, rewards, responses)

    def rescore(self, results: RescoreResults) -> None:
        """`PromptScores.rescore`: {prompt index: (rewards, responses or None)} of fresh rollouts."""
        self.scores.rescore(results)

    # ---- logging and checkpoints ----------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The scores' metrics (`PromptScores.metrics`) and the share of draws made by VPS."""
        draws = self.weighted_draws + self.uniform_draws
        return {**self.scores.metrics(), "vas/weighted_draw_share": self.weighted_draws / draws if draws else 0.0}

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
            **self.scores.state_dict(),
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
        self.scores.load_state_dict(state)
        self.weighted_draws = state["weighted_draws"]
        self.uniform_draws = state["uniform_draws"]
