"""Annealed-temperature rollouts (EAD, "Let it Calm", arXiv 2510.05251) for ThermoGRPOTrainer.

With `temperature_schedule` (or `temperature_portfolio`) set, TRL's Hugging Face `generate` samples token t of every
completion at temperature tau_t through `ScheduledTemperatureProcessor`, which records the behaviour log-prob
log pi_EAD(y_t) = log_softmax(logits_t / tau_t)[y_t]. Training stays on the temperature-1 policy; `ead_correction`
handles the gap between the behaviour policy and pi_old, per token:

    tis               w_t = min(pi_old(y_t) / pi_EAD(y_t), tis_cap), multiplied into the per-token loss
    recompute_at_tau  the loss's ratio uses pi_old at tau_t: pi_theta(y_t) / pi_old(y_t; tau_t)
    none              no correction

pi_old(y_t; tau_t) needs no forward pass at tau_t (TRL's fused LM head has its temperature fixed at start-up): TRL
samples with the very weights pi_old denotes, before any update on the batch, so the behaviour log-prob IS
log pi_old(y_t; tau_t).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList

from ..errors import UserError
from ..rollouts import ScheduledTemperatureProcessor, TemperatureSchedule, build_schedule, check_generation_config
from ..rollouts.plain_sampling import changed_sampling, needed_settings
from ..rollouts.vllm_schedule import schedule_extra_args
from .annealed_vllm import colocated_requests, served_requests
from .json_fields import json_field
from .loss_inputs import loss_mask
from .trl_surface import replaced_method

EAD_CORRECTIONS = ("tis", "none", "recompute_at_tau")
SCHEDULE_SPEC = "a schedule spec (dict, number or JSON string)"
PORTFOLIO_SPEC = "a list of schedule specs (or its JSON string)"


def _built(name: str, spec) -> TemperatureSchedule:
    try:
        return build_schedule(spec)
    except ValueError as error:
        raise UserError(f"{name}: {error}") from None


@dataclass
class AnnealedRolloutArguments:
    """Config fields for annealed-temperature rollouts (EAD) and temperature portfolios. After construction
    `rollout_schedules` holds the parsed schedules ([schedule], the portfolio's, or None: TRL's temperature samples)."""

    temperature_schedule: dict[str, Any] | str | float | None = field(
        default=None,
        metadata={
            "help": "Per-position sampling temperature for rollouts (None: off, TRL's `temperature` is used). A spec "
            "for thermorl.rollouts.build_schedule: {'type': 'annealed', 'tau_max': 1.2, 'tau_min': 0.1, "
            "'warmup_tokens': 10, 'd0': 25, 'alpha': 5, 'd_max': 40000, 'horizon_scale': 20} (EAD, the paper's "
            "defaults), 'linear', 'reverse_annealed', 'constant', or a number (constant). Needs temperature=1.0, "
            "top_k=0, top_p=1.0 and the transformers generate path (no vLLM, no continuous batching)."
        },
    )
    temperature_portfolio: list[Any] | str | None = field(
        default=None,
        metadata={
            "help": "A list of schedule specs (numbers for fixed temperatures, dicts for schedules) shared out over "
            "the members of each group round-robin: member j of a group samples with spec j mod len(list). At most "
            "num_generations specs; exclusive with temperature_schedule; same requirements."
        },
    )
    ead_correction: str = field(
        default="tis",
        metadata={
            "help": "Correction for sampling at tau_t while training the temperature-1 policy: 'tis' (per-token "
            "weight min(pi_old / pi_behaviour, tis_cap) on the loss), 'recompute_at_tau' (pi_old in the loss's "
            "ratio taken at tau_t) or 'none'."
        },
    )
    tis_cap: float = field(
        default=2.0,
        metadata={"help": "Truncation cap of the 'tis' weights (EAD paper appendix: 2.0); must be >= 1."},
    )
    vllm_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the colocated vLLM engine (vllm_mode='colocate'), e.g. 'float32' (None: vLLM's choice; "
            "on CPU it downcasts float32 models to bfloat16)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.temperature_schedule = json_field("temperature_schedule", self.temperature_schedule, SCHEDULE_SPEC)
        self.temperature_portfolio = json_field("temperature_portfolio", self.temperature_portfolio, PORTFOLIO_SPEC)
        if self.ead_correction not in EAD_CORRECTIONS:
            raise UserError(f"ead_correction must be one of {list(EAD_CORRECTIONS)}, got {self.ead_correction!r}")
        if isinstance(self.tis_cap, bool) or not isinstance(self.tis_cap, (int, float)) or not self.tis_cap >= 1.0:
            raise UserError(
                f"tis_cap must be a number >= 1 (a cap below 1 down-weights on-policy tokens), got {self.tis_cap!r}"
            )
        if self.temperature_schedule is not None and self.temperature_portfolio is not None:
            raise UserError("Set temperature_schedule or temperature_portfolio, not both.")
        # Parsed once, here: everything downstream (the trainer's tempering, vLLM set-up) reads these.
        self.rollout_schedules = _parsed_schedules(self)
        if self.vllm_dtype is not None and not (self.use_vllm and self.vllm_mode == "colocate"):
            raise UserError(
                "vllm_dtype sets the dtype of the colocated vLLM engine: it needs use_vllm=True and "
                f"vllm_mode='colocate' (a server takes --dtype), got use_vllm={self.use_vllm}, vllm_mode={self.vllm_mode!r}"
            )
        if self.rollout_schedules is not None:
            self._check_sampling_settings()

    def _check_sampling_settings(self):
        option = "temperature_schedule" if self.temperature_schedule is not None else "temperature_portfolio"
        if self.temperature != 1.0:
            raise UserError(
                f"{option} sets the sampling temperature, so temperature must be 1.0 (the two would multiply, and "
                f"training stays on the temperature-1 policy), got temperature={self.temperature}."
            )
        settings = {"top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}
        if self.use_vllm:  # generate applies a repetition penalty before the schedule: the recorded log-probs include it
            settings["repetition_penalty"] = self.repetition_penalty
        changed = changed_sampling(settings)
        if changed:
            raise UserError(
                f"{option} needs plain sampling after the schedule ({needed_settings(settings)}), got "
                f"{', '.join(f'{name}={value}' for name, value, _ in changed)}: truncation or a penalty would change the "
                "sampled distribution behind the recorded behaviour log-probs."
            )
        if self.use_transformers_continuous_batching:
            raise UserError(
                f"{option} is not implemented for transformers continuous batching "
                "(use_transformers_continuous_batching / use_transformers_paged): use plain generate."
            )
        if self.temperature_portfolio is not None and len(self.temperature_portfolio) > self.num_generations:
            raise UserError(
                f"temperature_portfolio has {len(self.temperature_portfolio)} specs but a group has only "
                f"num_generations={self.num_generations} members: the extra specs would never be sampled."
            )


def _parsed_schedules(args) -> list[TemperatureSchedule] | None:
    """The schedules a config samples with (its `rollout_schedules`): [schedule], the portfolio's, or None when TRL's
    temperature is used."""
    if args.temperature_schedule is not None:
        return [_built("temperature_schedule", args.temperature_schedule)]
    if args.temperature_portfolio is None:
        return None
    if not isinstance(args.temperature_portfolio, list) or not args.temperature_portfolio:
        raise UserError(
            f"temperature_portfolio must be a non-empty list of schedule specs, got {args.temperature_portfolio!r}"
        )
    return [_built(f"temperature_portfolio[{i}]", spec) for i, spec in enumerate(args.temperature_portfolio)]


def portfolio_members(first_row: int, num_rows: int, num_generations: int, num_schedules: int) -> torch.LongTensor:
    """Schedule index of each row: rows first_row.. of the global batch, groups of num_generations consecutive rows,
    member j of a group -> schedule j mod num_schedules."""
    rows = torch.arange(first_row, first_row + num_rows)
    return (rows % num_generations) % num_schedules


def truncated_importance_weights(old_logps: torch.Tensor, behaviour_logps: torch.Tensor, cap: float) -> torch.Tensor:
    """w_t = min(pi_old(y_t) / pi_behaviour(y_t), cap) = exp(min(old - behaviour, log cap)) (EAD, arXiv 2510.05251)."""
    return torch.exp(torch.clamp(old_logps - behaviour_logps, max=math.log(cap)))


def fit_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad with zeros or cut the columns of a (B, T) tensor to `width`."""
    if values.size(1) >= width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.size(1)))


@contextmanager
def generate_through(model, processor: ScheduledTemperatureProcessor):
    """Inside the block, `model.generate` also applies `processor` (last, after any caller's processors),
    resetting it to the call's padded prompt width. Yields a dict that receives each call's completion columns."""
    sampled = {}
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        processor.reset(input_ids.shape[1], processor.step)
        processors = LogitsProcessorList([*(kwargs.pop("logits_processor", None) or []), processor])
        sequences = original(*args, logits_processor=processors, **kwargs)
        sampled["completion_ids"] = sequences[:, input_ids.shape[1] :]
        return sequences

    with replaced_method(model, "generate", generate):
        yield sampled


@dataclass
class SampledRollout:
    """What sampling under the schedules left for one generate call: the processor (its schedules and rows), and on
    the `generate` path the completion ids it saw and their behaviour log-probs (on vLLM's path these come back in
    TRL's batch as `sampling_per_token_logps`)."""

    processor: ScheduledTemperatureProcessor
    completion_ids: torch.Tensor | None = None
    behaviour_logps: torch.Tensor | None = None


class RolloutTempering:
    """The trainer's rollout-temperature component: which schedule samples each row, sampling through it (TRL's
    `generate` call or its vLLM requests), the behaviour columns it adds to the batch, and the loss's correction.

    Inactive (`active` False) when the config sets neither temperature_schedule nor temperature_portfolio: TRL's
    `temperature` samples and nothing here runs.
    """

    def __init__(self, args, accelerator):
        self.schedules = args.rollout_schedules
        self.correction = args.ead_correction
        self.tis_cap = args.tis_cap
        self.accelerator = accelerator
        self.server_checked = [False]  # the vLLM server's processor is probed once, at the first generation

    @property
    def active(self) -> bool:
        return self.schedules is not None

    def check_trainer(self, trainer) -> None:
        """Refuse what the trainer was built with that schedules cannot serve."""
        if not self.active:
            return
        if trainer.tools or trainer.rollout_func is not None or trainer.environment_factories is not None:
            raise UserError(
                "temperature_schedule / temperature_portfolio support single-turn generation only, not tools, "
                "environments or rollout_func."
            )
        if not trainer.use_vllm:
            try:
                check_generation_config(trainer.generation_config, trainer.model.generation_config)
            except ValueError as error:
                raise UserError(
                    f"temperature_schedule / temperature_portfolio: {error} (check generation_kwargs)"
                ) from None

    def row_schedules(self, first_row: int, num_rows: int, num_generations: int):
        """The schedule of rows first_row.. of the global batch: the one schedule, or each row's portfolio member."""
        if len(self.schedules) == 1:
            return self.schedules[0]
        members = portfolio_members(first_row, num_rows, num_generations, len(self.schedules))
        return [self.schedules[m] for m in members.tolist()]

    def sample(self, generate, *, step: int, num_rows: int, num_generations: int, model=None, vllm=None):
        """(what `generate()` returns, SampledRollout): TRL's single-turn generation of this process's `num_rows`
        rows under the schedules at training `step`, through `model.generate` or, with `vllm` (TRL's
        VLLMGeneration), its requests."""
        first_row = self.accelerator.process_index * num_rows
        processor = ScheduledTemperatureProcessor(
            self.row_schedules(first_row, num_rows, num_generations), prompt_length=0, step=step
        )
        if vllm is not None:
            with self._vllm_requests(vllm, num_rows, num_generations, step):
                return generate(), SampledRollout(processor)
        with generate_through(model, processor) as sampled:
            result = generate()
        if "completion_ids" not in sampled:
            raise RuntimeError("TRL's generate call did not go through the temperature schedule; refusing to train on it.")
        behaviour_logps, _ = processor.finalize(sampled["completion_ids"])
        return result, SampledRollout(processor, sampled["completion_ids"], behaviour_logps)

    def _vllm_requests(self, vllm, num_rows: int, num_generations: int, step: int):
        """Context in which TRL's vLLM call sends every row's schedule at `step`."""
        if vllm.mode == "server":
            if not self.accelerator.is_main_process:
                return nullcontext()
            members = self.row_schedules(0, num_generations, num_generations)
            members = [members] * num_generations if isinstance(members, TemperatureSchedule) else members
            row_args = [schedule_extra_args(schedule, step) for schedule in members]
            return served_requests(vllm.vllm_client, row_args, num_generations, self.server_checked)
        # Colocate with tensor parallelism generates the prompts of the whole TP group in one call.
        group = vllm.tensor_parallel_size
        index = self.accelerator.process_index
        rows = self.row_schedules((index - index % group) * num_rows, num_rows * group, num_generations)
        rows = [rows] * (num_rows * group) if isinstance(rows, TemperatureSchedule) else rows
        return colocated_requests(vllm.llm, [schedule_extra_args(schedule, step) for schedule in rows])

    def behaviour_columns(self, batch, sampled: SampledRollout, from_vllm: bool) -> tuple[dict, dict]:
        """(columns to add to TRL's batch, metrics): `behaviour_per_token_logps` and
        `behaviour_per_token_temperatures` (B, T), and for recompute_at_tau pi_old at tau_t as `old_per_token_logps`."""
        completion_ids = batch["completion_ids"]
        mask = loss_mask(batch)
        width = completion_ids.size(1)
        if from_vllm:  # vLLM's processed log-probs of the very tokens in the batch
            behaviour_logps = batch.get("sampling_per_token_logps")
            if behaviour_logps is None or not torch.isfinite(behaviour_logps[mask.bool()]).all():
                raise RuntimeError("vLLM returned no log-prob for some sampled tokens; behaviour log-probs missing.")
            behaviour_logps = behaviour_logps.masked_fill(~mask.bool(), 0.0)  # as on the generate path
        else:
            sampled_ids, behaviour_logps = sampled.completion_ids, sampled.behaviour_logps
            if sampled_ids.shape[0] != completion_ids.shape[0] or not torch.equal(
                fit_width(sampled_ids, width)[mask.bool()], completion_ids[mask.bool()]
            ):
                raise RuntimeError("The batch's completions are not the ones sampled under the temperature schedule.")
        behaviour_logps = fit_width(behaviour_logps, width).to(completion_ids.device)
        temperatures = sampled.processor.temperature_table(len(completion_ids), width).to(completion_ids.device)
        columns = {"behaviour_per_token_logps": behaviour_logps, "behaviour_per_token_temperatures": temperatures}
        if self.correction == "recompute_at_tau":
            columns["old_per_token_logps"] = behaviour_logps
        return columns, self._temperature_metrics(sampled.processor, temperatures, mask)

    def _temperature_metrics(self, processor, temperatures, mask) -> dict[str, torch.Tensor]:
        """ead/temperature_mean and ead/share_at_tau_min (share of tokens at their schedule's tau_min) over tokens."""
        valid = mask.bool()
        floors = torch.tensor(
            [getattr(schedule, "tau_min", math.nan) for schedule in processor.unique_schedules], dtype=torch.float32
        )[processor.row_to_schedule].to(temperatures.device)
        at_floor = temperatures <= floors[:, None] + 1e-6
        stats = torch.stack([temperatures[valid].sum(), at_floor[valid].sum(), valid.sum()]).double()
        totals = self.accelerator.gather(stats[None]).sum(dim=0)
        count = totals[2].clamp(min=1.0)
        return {"ead/temperature_mean": totals[0] / count, "ead/share_at_tau_min": totals[1] / count}

    def token_weights(self, old_logps, behaviour_logps, mask) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """(per-token correction of the policy loss for the behaviour policy's temperatures, or None when off;
        its metrics)."""
        if self.correction != "tis":
            return None, {}
        weights = truncated_importance_weights(old_logps, behaviour_logps, self.tis_cap)
        valid = mask.bool()
        truncated = (old_logps - behaviour_logps > math.log(self.tis_cap))[valid]
        largest = weights[valid].max() if valid.any() else weights.new_zeros(())
        stats = torch.stack([weights[valid].sum(), valid.sum(), truncated.sum(), largest]).double()
        gathered = self.accelerator.gather(stats[None])
        count = gathered[:, 1].sum().clamp(min=1.0)
        metrics = {
            "ead/tis_weight_mean": gathered[:, 0].sum() / count,
            "ead/tis_weight_max": gathered[:, 3].max(),
            "ead/tis_truncated_share": gathered[:, 2].sum() / count,
        }
        return weights, metrics
