"""Load a policy to evaluate: a local model directory, a Trainer checkpoint, a LoRA adapter, or a Hub name.

- a directory with config.json: a saved model (a `checkpoint-N` directory is one too); if it holds
  no tokenizer, the tokenizer of its parent (the run's output directory) is used;
- a directory with adapter_config.json: a PEFT adapter, loaded onto its base model and merged;
- a run output directory holding only checkpoint-N subdirectories: its latest checkpoint;
- anything that looks like a local path but does not exist: a UserError, the Hub is not tried;
- otherwise a Hub name, passed to `from_pretrained`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import UserError

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")


def looks_local(path_or_name: str) -> bool:
    """True for anything that cannot be a Hub repo id, or whose first path component exists here."""
    if path_or_name.startswith(("/", ".", "~")) or "\\" in path_or_name:
        return True
    if CHECKPOINT_DIR.fullmatch(Path(path_or_name).name) or Path(path_or_name.split("/")[0]).is_dir():
        return True
    try:
        validate_repo_id(path_or_name)
    except HFValidationError:
        return True
    return False


def check_model_path(path_or_name: str) -> None:
    """UserError for a local-looking path that does not exist (checked before any loading)."""
    if looks_local(path_or_name) and not Path(path_or_name).expanduser().exists():
        raise UserError(f"model path does not exist: {path_or_name}")


def resolve_model_dir(path: Path) -> Path:
    """The directory to load from: `path` itself, or its latest checkpoint-N for a run output directory."""
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    checkpoints = [child for child in path.iterdir() if child.is_dir() and CHECKPOINT_DIR.fullmatch(child.name)]
    if not checkpoints:
        raise UserError(
            f"{path} is not a model directory: it has no config.json, no adapter_config.json and no checkpoint-N "
            "subdirectory"
        )
    return max(checkpoints, key=lambda child: int(CHECKPOINT_DIR.fullmatch(child.name).group(1)))


def tokenizer_dir(model_dir: Path) -> Path | None:
    """`model_dir` if it holds a tokenizer, else its parent (a run's output directory) if that does."""
    for candidate in (model_dir, model_dir.parent):
        if (candidate / "tokenizer_config.json").is_file():
            return candidate
    return None


def load_policy(path_or_name: str, device: str | torch.device | None = None, dtype: str | torch.dtype = "auto",
                trust_remote_code: bool = False):
    """(model, tokenizer) ready for generation, in eval mode, on `device` (default: cuda if available). A model
    folder's own Python code (its config's auto_map) runs only with `trust_remote_code`; without, transformers
    refuses (see thermorl.errors.refusing_remote_code)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer = _load(str(path_or_name), dtype, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _load(path_or_name: str, dtype, trust_remote_code: bool):
    trust = {"trust_remote_code": trust_remote_code}
    if not looks_local(path_or_name):
        return (
            AutoModelForCausalLM.from_pretrained(path_or_name, dtype=dtype, **trust),
            AutoTokenizer.from_pretrained(path_or_name, **trust),
        )
    check_model_path(path_or_name)
    path = Path(path_or_name).expanduser()
    if not path.is_dir():
        raise UserError(f"model path must be a directory, got the file {path_or_name}")
    model_dir = resolve_model_dir(path)
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        return _load_adapter(model_dir, json.loads(adapter_config.read_text()), dtype, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **trust)
    return model, AutoTokenizer.from_pretrained(tokenizer_dir(model_dir) or model_dir, **trust)


def _load_adapter(adapter_dir: Path, adapter_config: dict, dtype, trust_remote_code: bool):
    from peft import PeftModel

    base_name = adapter_config.get("base_model_name_or_path")
    if not base_name:
        raise UserError(
            f"{adapter_dir / 'adapter_config.json'} does not name its base model (base_model_name_or_path)"
        )
    base_model, base_tokenizer = _load(base_name, dtype, trust_remote_code)
    # Merged weights generate as fast as the base model; the adapter's own copy is not needed for evaluation.
    model = PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload()
    own_tokenizer = tokenizer_dir(adapter_dir)
    if own_tokenizer is None:
        return model, base_tokenizer
    return model, AutoTokenizer.from_pretrained(own_tokenizer, trust_remote_code=trust_remote_code)
