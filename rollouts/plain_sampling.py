"""The two rules every temperature schedule rests on, in one place for the `generate` path and the vLLM path.

1. Plain sampling: after the schedule divides the logits, nothing may change the distribution sampled from (no
   truncation, no penalty, no second temperature), or the recorded behaviour log-probs would not be the sampled
   distribution's. `NEUTRAL_SAMPLING` holds every setting that could, under the names transformers' generation
   config, vLLM's SamplingParams and TRL's GRPOConfig give it, with its neutral values; `changed_sampling` finds the
   settings that are not neutral. ThermoGRPOConfig, the `generate` config check and the vLLM request check each
   apply it to the settings they see.
2. Temperature division: `divide_by_temperatures` scales each row's logits by its temperature, and a row at
   temperature 0 is greedy (every logit but the argmax becomes -inf).
"""

from __future__ import annotations

import math

import torch

# setting -> its neutral values (None, a setting left unset, is neutral everywhere it is allowed)
NEUTRAL_SAMPLING = {
    "temperature": (1.0,),
    "top_k": (0, -1),
    "top_p": (1.0,),
    "min_p": (None, 0),
    "repetition_penalty": (1.0,),
    "presence_penalty": (0.0,),
    "frequency_penalty": (0.0,),
    # transformers' generate only
    "do_sample": (True,),
    "num_beams": (1,),
    "typical_p": (1.0,),
    "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,),
    "top_h": (None,),
    "watermarking_config": (None,),
}


# The settings a vLLM request (SamplingParams) has.
VLLM_SETTINGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


def changed_sampling(settings: dict) -> list[tuple[str, object, str]]:
    """(name, value, what it must be) of every setting in `settings` that is not neutral, in table order."""
    changed = []
    for name, neutral in NEUTRAL_SAMPLING.items():
        if name in settings and settings[name] is not None and settings[name] not in neutral:
            changed.append((name, settings[name], " or ".join(str(value) for value in neutral)))
    return changed


def needed_settings(names) -> str:
    """'top_k=0, top_p=1.0, ...': the first neutral value of each named setting, for messages."""
    return ", ".join(f"{name}={NEUTRAL_SAMPLING[name][0]}" for name in names)


def divide_by_temperatures(logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """logits / temperatures[:, None] row by row, out of place; rows at temperature 0 keep only their argmax."""
    greedy = temperatures == 0
    divisors = torch.where(greedy, 1.0, temperatures).to(device=logits.device, dtype=logits.dtype)
    divided = logits / divisors[:, None]
    if not greedy.any():
        return divided
    not_argmax = torch.ones_like(divided, dtype=torch.bool).scatter_(1, divided.argmax(-1, keepdim=True), False)
    return divided.masked_fill(greedy.to(logits.device)[:, None] & not_argmax, -math.inf)
