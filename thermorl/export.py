"""`thermorl export`: merge a LoRA (PEFT) checkpoint into its base model and save a plain Hugging Face model.

W = W_base + (alpha / r) B A for every adapted layer (LoRA, arXiv 2106.09685); the result loads with
`AutoModelForCausalLM.from_pretrained` alone, needs no peft, and generates as fast as the base model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .console import log_to_run_folder
from .errors import UserArgumentParser, UserError, refusing_remote_code

ADAPTER_CONFIG = "adapter_config.json"


def export_merged(checkpoint: str | Path, out: str | Path, base_model: str | None = None,
                  trust_remote_code: bool = False) -> Path:
    """Merge the adapter in `checkpoint` (a training output_dir or a `checkpoint-N` folder) into its base model
    (`base_model`, default the one recorded in adapter_config.json) and save model and tokenizer to `out`. The base
    model's own Python code (its config's auto_map) runs only with `trust_remote_code`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models.names import resolve_named_model
    from .run_dir import check_not_the_model, saved_model_files
    from .run_recipe import find_run_recipe
    from .recipe_inputs import find_held_out

    checkpoint, out = Path(checkpoint), Path(out)
    config_path = checkpoint / ADAPTER_CONFIG
    if not config_path.is_file():
        raise UserError(
            f"{checkpoint} has no {ADAPTER_CONFIG}: not a LoRA/PEFT checkpoint (a full-model checkpoint needs no "
            "merging; load it directly)."
        )
    base = base_model or json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config_path} does not name its base model; pass --base MODEL.")
    base = resolve_named_model(base)  # --base thermorl:smollm2-135m -> its converted model folder
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out must differ from --checkpoint ({checkpoint}): the adapter would be overwritten.")
    check_not_the_model(out, base, "--out")
    if saved_model_files(out):
        raise UserError(f"--out {out} already holds a model: choose an empty or new folder.")

    with refusing_remote_code(base, "pass --trust-remote-code, after reading that code", trust_remote_code):
        has_tokenizer = any((checkpoint / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(checkpoint if has_tokenizer else base,
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    merged.save_pretrained(out)  # only once everything has loaded: a refusal above leaves no half-written folder
    tokenizer.save_pretrained(out)
    # So that `thermorl eval --model OUT` evaluates on the run's held-out rows, prompts and reward, as on the adapter.
    for record in (find_held_out(checkpoint), find_run_recipe(checkpoint)):
        if record is not None:
            shutil.copyfile(record, out / record.name)
    return out


def export_command(argv: list[str] | None = None) -> int:
    parser = UserArgumentParser(
        prog="thermorl export", description="Merge a LoRA checkpoint into its base model and save a full model."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="LoRA output_dir or checkpoint-N folder (holds adapter_config.json)"
    )
    parser.add_argument("--out", required=True, help="folder for the merged model and tokenizer")
    parser.add_argument("--base", default=None, help="base model (default: base_model_name_or_path of the adapter)")
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the Python code the base model ships (its config's auto_map); only for code you have read",
    )
    args = parser.parse_args(argv)
    out = export_merged(args.checkpoint, args.out, args.base, args.trust_remote_code)
    log = log_to_run_folder(out)  # the libraries' warnings and logs, kept in memory until the folder existed
    print(f"Merged model written to {out} (library warnings and logs: {log})")
    return 0
