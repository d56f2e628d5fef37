"""What a vLLM request carries for a temperature schedule, and the per-row math thermorl's vLLM logits processors
share (`vllm_temperature`). No vLLM import: the trainer and the tests use it without vLLM.

A request opts in through `SamplingParams.extra_args` (server: the request body's `vllm_xargs`, flat values only):

    {"thermorl_schedule": '{"alpha": 5.0, ..., "type": "annealed"}', "thermorl_step": 12}

(`schedule_extra_args(schedule, step)` builds it); requests without the key are untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import torch

from ..errors import UserError
from .plain_sampling import VLLM_SETTINGS, changed_sampling, divide_by_temperatures, needed_settings
from .schedules import SCHEDULE_TYPES, TemperatureSchedule, build_schedule

SCHEDULE_KEY = "thermorl_schedule"
STEP_KEY = "thermorl_step"
def schedule_spec(schedule: TemperatureSchedule) -> dict:
    """The `build_schedule` spec of a schedule: {"type": name, **fields}."""
    names = [name for name, kind in SCHEDULE_TYPES.items() if type(schedule) is kind]
    if not names:
        raise ValueError(f"{type(schedule).__name__} is not a registered schedule type: {sorted(SCHEDULE_TYPES)}")
    return {"type": names[0], **dataclasses.asdict(schedule)}


def schedule_extra_args(schedule: TemperatureSchedule, step: int) -> dict:
    """The `extra_args` / `vllm_xargs` of a request sampled under `schedule` at training step `step`."""
    return {SCHEDULE_KEY: json.dumps(schedule_spec(schedule), sort_keys=True), STEP_KEY: int(step)}


@functools.lru_cache(maxsize=256)
def parsed_schedule(spec: str) -> TemperatureSchedule:
    """The schedule a request's spec JSON names, parsed once per distinct spec (every request of a training step
    carries the same few); ValueError or json.JSONDecodeError for a malformed one."""
    return build_schedule(json.loads(spec))


def check_plain_sampling(settings: dict) -> None:
    """UserError naming every setting in `settings` (vLLM SamplingParams names) that is not neutral."""
    wrong = [f"{name}={value}" for name, value, _ in changed_sampling(settings)]
    if wrong:
        raise UserError(
            f"a temperature schedule needs plain sampling in vLLM, got {', '.join(wrong)} (needed: "
            f"{needed_settings(VLLM_SETTINGS)}): the sampled distribution would not be the schedule's"
        )


def requested_schedule(sampling_params) -> tuple[str, int] | None:
    """(spec JSON, step) a request asks for, or None; ValueError naming the problem for a malformed or unsafe one."""
    extra = sampling_params.extra_args or {}
    if SCHEDULE_KEY not in extra:
        return None
    spec, step = extra[SCHEDULE_KEY], extra.get(STEP_KEY, 0)
    if not isinstance(spec, str):
        raise ValueError(f"{SCHEDULE_KEY} must be a JSON string (vllm_xargs takes flat values), got {spec!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{STEP_KEY} must be an int >= 0, got {step!r}")
    try:
        parsed_schedule(spec)
    except (ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"{SCHEDULE_KEY}: {error}") from None
    check_plain_sampling({name: getattr(sampling_params, name, None) for name in VLLM_SETTINGS})
    return spec, step


class TemperatureTables:
    """tau_t for every (schedule, step) in use, t = 0 .. max_len - 1, as rows of one (K, max_len) tensor."""

    def __init__(self, max_len: int, device):
        self.max_len = max_len
        self.device = device
        self.index: dict[tuple[str, int], int] = {}
        self.values = torch.ones(0, max_len, device=device)
        self.any_greedy = False

    def rows(self, keys: list[tuple[str, int]]) -> list[int]:
        """Row in `values` of each key; a key not seen before rebuilds the table from the keys given (dropping
        schedules no request uses any more: the step, hence the key, changes every training step)."""
        if any(key not in self.index for key in keys):
            keep = list(dict.fromkeys(keys))
            positions = torch.arange(self.max_len)
            self.values = torch.stack(
                [parsed_schedule(spec).temperatures(positions, step) for spec, step in keep]
            ).to(self.device)
            self.index = {k: i for i, k in enumerate(keep)}
            self.any_greedy = bool((self.values == 0).any())
        return [self.index[key] for key in keys]


def scale_rows(logits: torch.Tensor, rows: torch.Tensor | None, temperatures: torch.Tensor, any_greedy: bool) -> None:
    """In place: logits[rows] /= temperatures (rows None: every row, in order), and rows at temperature 0 keep only
    their argmax (greedy)."""
    if rows is None and not any_greedy:  # the common case in training: every request sampled under a schedule
        logits.div_(temperatures[:, None])
        return
    selected = divide_by_temperatures(logits if rows is None else logits[rows], temperatures)
    if rows is None:
        logits.copy_(selected)
    else:
        logits[rows] = selected
