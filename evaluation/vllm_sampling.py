"""The vLLM backend of `thermorl eval`: every temperature x sample of every question in ONE engine call.

One request per (question, temperature) with n = samples and vLLM's own per-request temperature (top_k 0, top_p 1,
min_p 0, no penalties: temperature is the only change to the distribution, as on the Hugging Face backend); greedy
(temperature 0) is one request with n = 1, repeated for the other samples. Same result layout as
`sampling.sample_completions`: result[question][temperature][sample].
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError
from .sampling import Completions


def default_dtype() -> str:
    """float32 on the CPU, where vLLM's "auto" would run a float32 model in bfloat16; vLLM's choice on a GPU."""
    import torch

    return "auto" if torch.cuda.is_available() else "float32"


def load_engine(model: str, dtype: str = "auto", gpu_memory_utilization: float = 0.9, seed: int = 0,
                trust_remote_code: bool = False):
    """A vLLM engine for evaluation, its sampling seeded by `seed` (vLLM imported here: the Hugging Face backend
    never needs it)."""
    try:
        from vllm import LLM
    except ImportError:
        raise UserError("--backend vllm needs vLLM: pip install 'thermorl[vllm]' (CPU: see docs/ead.md)") from None
    return LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
               trust_remote_code=trust_remote_code)


def sample_completions_vllm(
    llm, prompts: Sequence[str], temperatures: Sequence[float], samples: int, max_new_tokens: int
) -> Completions:
    """`samples` completions of every prompt at every temperature, from one `llm.generate` call (seeded by the
    engine's seed)."""
    from vllm import SamplingParams

    if samples < 1:
        raise UserError(f"samples per temperature must be >= 1, got {samples}")
    requests, params = [], []
    for prompt in prompts:
        for temperature in temperatures:
            requests.append(prompt)
            params.append(
                SamplingParams(
                    n=samples if temperature > 0 else 1,
                    temperature=float(temperature),
                    top_k=0,
                    top_p=1.0,
                    min_p=0.0,
                    max_tokens=max_new_tokens,
                    skip_special_tokens=True,
                )
            )
    outputs = llm.generate(requests, params, use_tqdm=False)
    completions: Completions = []
    for question in range(len(prompts)):
        per_temperature = []
        for t in range(len(temperatures)):
            texts = [sample.text for sample in outputs[question * len(temperatures) + t].outputs]
            per_temperature.append(texts * samples if len(texts) == 1 and samples > 1 else texts)
        completions.append(per_temperature)
    return completions
