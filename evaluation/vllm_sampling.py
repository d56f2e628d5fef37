"""The vLLM backend of `thermorl eval`: every temperature x sample of every question in ONE engine call.

One request per (question, temperature) with n = samples and vLLM's own per-request temperature (top_k 0, top_p 1,
min_p 0, no penalties: temperature is the only change to the distribution, as on the Hugging Face backend); greedy
(temperature 0) is one request with n = 1, repeated for the other samples. Same result layout as
`sampling.sample_completions`: result[question][temperature][sample].

Prompts go in as token ids, the ids TRL's GRPOTrainer generates from (`tasks.prompt_lengths.prompt_token_ids`): vLLM would
tokenize a text prompt with the tokenizer's special tokens, a second start token after the one a Llama-style chat
template writes.

Repeatable samples: every sampled request carries its own seed (`SamplingParams.seed`, vLLM's documented route),
drawn from the evaluation's seed. The engine's global generator is not enough: with vLLM's default engine process
(V1 multiprocessing) the requests reach it while it is already stepping, so which requests share a step, and the
draws each takes from that generator, change from run to run. A request's own generator follows only that request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..errors import UserError
from .sampling import Completions

GiB = 1 << 30
# The KV cache `thermorl eval` gives vLLM on the CPU when --gpu-memory-utilization is not given: 4 GiB (vLLM's CPU
# default before it took the cache from that share of host memory, VLLM_CPU_KVCACHE_SPACE=4), or half the memory
# free now if that is less. The share's own default (0.9) asks for 90% of the machine, more than a CPU has free.
CPU_KV_CACHE_BYTES = 4 * GiB
# Per-request seeds are drawn below 2**62: vLLM gives the j-th of a request's n samples seed + j.
SEED_LIMIT = 1 << 62


def check_vllm_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise UserError("--backend vllm needs vLLM: pip install 'thermorl[vllm]' (CPU: see docs/ead.md)")


def default_dtype() -> str:
    """float32 on the CPU, where vLLM's "auto" would run a float32 model in bfloat16; vLLM's choice on a GPU."""
    import torch

    return "auto" if torch.cuda.is_available() else "float32"


def cpu_memory() -> tuple[int, int]:
    """(total, available) bytes of the memory node vLLM's CPU worker reserves from: the node of its first allowed
    CPU, as vLLM counts them (cgroup limits included)."""
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info, get_visible_memory_node

    nodes = get_visible_memory_node()
    node = get_allowed_cpu_list()[0].numa_node
    info = get_memory_node_info(node if node in nodes else nodes[0])
    return info.total_memory, info.available_memory


def engine_memory(gpu_memory_utilization: float | None) -> dict[str, Any]:
    """The memory options of the engine: the share given (checked against the memory free now), else vLLM's default
    share on a GPU and, on the CPU, a KV cache sized to the machine (CPU_KV_CACHE_BYTES; VLLM_CPU_KVCACHE_SPACE set
    by the user wins, as in vLLM). A share that cannot fit is a UserError naming the largest that does."""
    import os

    import torch

    check_vllm_installed()
    on_gpu = torch.cuda.is_available()
    if gpu_memory_utilization is None:
        if on_gpu or os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            return {}
        return {"kv_cache_memory_bytes": min(CPU_KV_CACHE_BYTES, cpu_memory()[1] // 2)}
    where = "GPU memory" if on_gpu else "host memory (the CPU backend reads this flag as a share of RAM)"
    if not 0 < gpu_memory_utilization <= 1:
        raise UserError(f"--gpu-memory-utilization {gpu_memory_utilization}: the share of {where} vLLM reserves "
                        "must be in (0, 1]")
    if on_gpu:
        free, total = torch.cuda.mem_get_info()
    else:
        total, free = cpu_memory()
    if gpu_memory_utilization * total > free:
        raise UserError(
            f"--gpu-memory-utilization {gpu_memory_utilization} asks vLLM for "
            f"{gpu_memory_utilization * total / GiB:.1f} GiB of {where}, and {free / GiB:.1f} of its "
            f"{total / GiB:.1f} GiB are free: pass at most {int(100 * free / total) / 100:.2f}"
            + ("" if on_gpu else ", or leave the flag out for a KV cache sized to this machine")
        )
    return {"gpu_memory_utilization": gpu_memory_utilization}


def load_engine(model: str, dtype: str = "auto", memory: dict[str, Any] | None = None, seed: int = 0,
                trust_remote_code: bool = False):
    """A vLLM engine for evaluation (vLLM imported here: the Hugging Face backend never needs it). `memory`: the
    options of `engine_memory`."""
    import torch

    check_vllm_installed()
    from vllm import LLM

    # On the CPU no prompt is prefilled in chunks: vLLM rewinds the generator of a seeded request whose chunk it
    # discards, and a CPU generator cannot rewind ("CPU Generator does not use offset").
    chunking = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
    return LLM(model=model, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code, **(memory or {}),
               **chunking)


def sample_completions_vllm(
    llm, prompt_ids: Sequence[Sequence[int]], temperatures: Sequence[float], samples: int, max_new_tokens: int,
    seed: int = 0,
) -> Completions:
    """`samples` completions of every prompt (token ids) at every temperature, from one `llm.generate` call; the
    sampled requests are seeded from `seed`, so the same call gives the same completions."""
    from vllm import SamplingParams

    if samples < 1:
        raise UserError(f"samples per temperature must be >= 1, got {samples}")
    seeds = random.Random(seed)
    requests, params = [], []
    for ids in prompt_ids:
        for temperature in temperatures:
            requests.append({"prompt_token_ids": list(ids)})
            params.append(
                SamplingParams(
                    n=samples if temperature > 0 else 1,
                    temperature=float(temperature),
                    top_k=0,
                    top_p=1.0,
                    min_p=0.0,
                    max_tokens=max_new_tokens,
                    skip_special_tokens=True,
                    seed=seeds.randrange(SEED_LIMIT) if temperature > 0 else None,
                )
            )
    outputs = llm.generate(requests, params, use_tqdm=False)
    completions: Completions = []
    for question in range(len(prompt_ids)):
        per_temperature = []
        for t in range(len(temperatures)):
            texts = [sample.text for sample in outputs[question * len(temperatures) + t].outputs]
            per_temperature.append(texts * samples if len(texts) == 1 and samples > 1 else texts)
        completions.append(per_temperature)
    return completions
