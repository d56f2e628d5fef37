"""Per-row, per-position sampling temperature for Hugging Face `generate`, with behaviour log-probs.

Used for EAD annealed rollouts (arXiv 2510.05251) and for temperature portfolios (one schedule
per row). For each generated token y_t the processor records the log-probability under the
distribution it was actually sampled from, log pi_sample(y_t) = log_softmax(logits_t / tau_t)[y_t],
which truncated importance sampling needs (w_t = min(pi_old(y_t) / pi_sample(y_t), cap)).

Usage, one processor per `generate` call (or `reset` between calls):

    processor = ScheduledTemperatureProcessor(schedule, prompt_length=input_ids.shape[1], step=step)
    check_generation_config(generation_config, model.generation_config)
    sequences = model.generate(input_ids, attention_mask=mask, generation_config=generation_config,
                               logits_processor=[processor])
    completion_ids = sequences[:, input_ids.shape[1]:]
    behaviour_logps, temperatures = processor.finalize(completion_ids)

With left-padded prompts every row's completion starts at column `prompt_length`, so the position
of the token being sampled is `input_ids.shape[1] - prompt_length` for every row, whatever its
padding. `generate` keeps the batch size fixed (finished rows receive the pad token), which the
processor checks.
"""

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from ..errors import UserError
from .plain_sampling import changed_sampling, divide_by_temperatures
from .schedules import TemperatureSchedule

# The generation-config settings that would change the distribution sampled after the processor.
GENERATE_SETTINGS = ("do_sample", "num_beams", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
                     "eta_cutoff", "top_h", "watermarking_config")
# Values `generate` (transformers 5.x) substitutes for settings left None in both the passed and
# the model's generation config (GenerationConfig._get_default_generation_params). Note top_k: 50.
GENERATE_DEFAULTS = {
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


def check_generation_config(generation_config, model_generation_config=None) -> None:
    """Raise ValueError unless `generate` samples exactly softmax(processed logits).

    `generate` applies user logits processors BEFORE its own warpers (temperature, top-k, top-p,
    min-p, ...), so any active warper would change the sampled distribution after the schedule,
    and the recorded behaviour log-probs would be wrong (and temperatures would multiply).
    Settings left None are resolved as `generate` does: from `model_generation_config` (pass
    `model.generation_config`), then from transformers' defaults, where top_k is 50: set top_k=0.
    """

    def resolved(name):
        for config in (generation_config, model_generation_config):
            value = getattr(config, name, None)
            if value is not None:
                return value
        return GENERATE_DEFAULTS.get(name)

    settings = {name: resolved(name) for name in GENERATE_SETTINGS}
    problems = [f"{name} must be {needed}, got {value}" for name, value, needed in changed_sampling(settings)]
    if problems:
        raise UserError(
            "generation config incompatible with ScheduledTemperatureProcessor: " + "; ".join(problems)
            + " (a setting left None takes transformers' default, e.g. top_k 50)"
        )


class ScheduledTemperatureProcessor(LogitsProcessor):
    """Divide each row's logits by its schedule's temperature at the current completion position.

    schedules: one TemperatureSchedule for every row, or a sequence with one per row (rows as
        `generate` sees them: with num_return_sequences n, row i * n + j is sample j of prompt i).
    prompt_length: input_ids.shape[1] when `generate` starts (the padded prompt width).
    step: training step passed to the schedules (EAD's horizon grows with it).
    record_logprobs: keep the behaviour log-probs for `finalize`.

    Rows at temperature 0 are greedy: every logit but the argmax becomes -inf, and their
    behaviour log-prob is 0. Place this processor last among user processors: anything after it
    changes the sampled distribution. A processor serves one `generate` call; call
    `reset(prompt_length, step)` to reuse it.
    """

    def __init__(
        self,
        schedules: TemperatureSchedule | Sequence[TemperatureSchedule],
        prompt_length: int,
        step: int = 0,
        record_logprobs: bool = True,
    ):
        rows = [schedules] if isinstance(schedules, TemperatureSchedule) else list(schedules)
        if not rows or not all(isinstance(schedule, TemperatureSchedule) for schedule in rows):
            raise ValueError(f"schedules must be a TemperatureSchedule or a non-empty list of them, got {schedules!r}")
        self.per_row = not isinstance(schedules, TemperatureSchedule)
        # Rows sharing a schedule are evaluated once per position: portfolios have few distinct ones.
        self.unique_schedules = list(dict.fromkeys(rows))
        self.row_to_schedule = torch.tensor([self.unique_schedules.index(schedule) for schedule in rows])
        self.record_logprobs = record_logprobs
        self.reset(prompt_length, step)

    def reset(self, prompt_length: int, step: int) -> None:
        """Forget the previous `generate` call; the next call must be the first of a new one."""
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            raise ValueError(f"prompt_length must be an int >= 0, got {prompt_length!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        self.prompt_length = prompt_length
        self.step = step
        self.batch_size = None
        self.num_calls = 0
        self.sampled_logps = []  # behaviour log-prob of the token sampled at each finished step
        self.sampled_tokens = []
        self.pending_logps = None  # log_softmax of the latest step, whose token is not known yet
        self.pending_greedy = None

    def temperature_table(self, batch_size: int, num_positions: int) -> torch.FloatTensor:
        """(batch_size, num_positions) float32 CPU tensor: row b's temperature at positions 0..T-1."""
        return self._row_temperatures(batch_size, torch.arange(num_positions))

    def _row_temperatures(self, batch_size: int, positions: torch.LongTensor) -> torch.FloatTensor:
        if self.per_row and batch_size != len(self.row_to_schedule):
            raise ValueError(f"{len(self.row_to_schedule)} per-row schedules given for a batch of {batch_size} rows")
        per_schedule = torch.stack([s.temperatures(positions, self.step) for s in self.unique_schedules])
        if not self.per_row:
            return per_schedule.expand(batch_size, len(positions))
        return per_schedule[self.row_to_schedule]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch_size = input_ids.shape[0]
        position = input_ids.shape[1] - self.prompt_length
        if position != self.num_calls:
            raise ValueError(
                f"expected completion position {self.num_calls} but input_ids has {input_ids.shape[1]} columns "
                f"for prompt_length {self.prompt_length}: use one processor per generate call or call reset()"
            )
        if self.batch_size is None:
            self.batch_size = batch_size
        elif batch_size != self.batch_size:
            raise ValueError(f"batch size changed from {self.batch_size} to {batch_size} during generation")
        if self.pending_logps is not None:
            self._record(input_ids[:, -1])

        temperatures = self._row_temperatures(batch_size, torch.tensor([position]))[:, 0]
        processed = divide_by_temperatures(scores, temperatures)
        greedy = (temperatures == 0).to(scores.device) if bool((temperatures == 0).any()) else None
        if self.record_logprobs:
            self.pending_logps = torch.log_softmax(processed.float(), dim=-1)
            self.pending_greedy = greedy
        self.num_calls += 1
        return processed

    def _record(self, tokens: torch.LongTensor) -> None:
        logps = self.pending_logps.gather(1, tokens[:, None]).squeeze(1)
        if self.pending_greedy is not None:
            # A greedy row samples its argmax (log-prob 0); any other token is post-EOS padding.
            logps = logps.masked_fill(self.pending_greedy, 0.0)
        self.sampled_logps.append(logps)
        self.sampled_tokens.append(tokens)
        self.pending_logps = self.pending_greedy = None

    def finalize(self, completion_ids: torch.LongTensor) -> tuple[torch.FloatTensor | None, torch.FloatTensor]:
        """(behaviour_logps, temperatures), each (B, T) aligned with `completion_ids` (B, T).

        behaviour_logps[b, t] = log_softmax(logits_t / tau_t)[completion_ids[b, t]] as sampled
        (None when record_logprobs is False); temperatures on CPU. Columns beyond the generated
        tokens (extra padding) get log-prob 0; positions after EOS hold the pad token's log-prob
        (0 for greedy rows): mask them. Releases the stored log-softmax; the processor needs `reset` before reuse.
        """
        if completion_ids.dim() != 2 or self.batch_size not in (None, completion_ids.shape[0]):
            raise ValueError(
                f"completion_ids must be (batch={self.batch_size}, T), got shape {tuple(completion_ids.shape)}"
            )
        batch_size, length = completion_ids.shape
        temperatures = self.temperature_table(batch_size, length).clone()
        if not self.record_logprobs:
            return None, temperatures
        if self.pending_logps is not None and length >= self.num_calls:
            self._record(completion_ids[:, self.num_calls - 1])
        recorded = min(length, len(self.sampled_tokens))
        if recorded and not torch.equal(torch.stack(self.sampled_tokens[:recorded], 1), completion_ids[:, :recorded]):
            raise ValueError("completion_ids do not match the tokens sampled: pass sequences[:, prompt_length:]")
        behaviour_logps = torch.zeros(batch_size, length, device=completion_ids.device)
        if recorded:
            behaviour_logps[:, :recorded] = torch.stack(self.sampled_logps[:recorded], 1)
        self.pending_logps = self.pending_greedy = None
        return behaviour_logps, temperatures
