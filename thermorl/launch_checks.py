"""Launch settings checked against the machine and against each other before a trainer is built.

Each check raises a ValueError that names the setting (recipe key or accelerate config key) and the fix, so a bad
combination fails in seconds with a sentence instead of minutes later inside DeepSpeed or W&B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from .errors import UserError

# W&B rejects these characters in project names and names longer than this.
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"
WANDB_PROJECT_MAX_LENGTH = 128


@dataclass(frozen=True)
class LaunchSettings:
    """What a launch asks for, gathered from the recipe, the accelerate config (through its environment variables)
    and the DeepSpeed plugin the TrainingArguments built from them."""

    device_type: str  # where the processes compute: "cpu", "cuda", ...
    bf16: bool = False
    fp16: bool = False
    accelerate_mixed_precision: str = "no"  # the accelerate config's `mixed_precision`
    zero_stage: int | None = None  # None: no DeepSpeed
    deepspeed_config: dict[str, Any] = field(default_factory=dict)
    use_vllm: bool = False
    ds3_gather_for_generation: bool = True
    load_in_4bit: bool = False
    model_dtype: str | None = None
    bnb_4bit_quant_storage: str | None = None
    wandb_project: str | None = None  # None: not reporting to W&B


def launch_settings(model_args, training_args) -> LaunchSettings:
    from .tracking import reports_to_wandb

    plugin = getattr(training_args, "deepspeed_plugin", None)
    return LaunchSettings(
        device_type=training_args.device.type,
        bf16=bool(training_args.bf16),
        fp16=bool(training_args.fp16),
        accelerate_mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION", "no"),
        zero_stage=plugin.zero_stage if plugin is not None else None,
        deepspeed_config=dict(plugin.deepspeed_config) if plugin is not None else {},
        use_vllm=bool(getattr(training_args, "use_vllm", False)),
        ds3_gather_for_generation=bool(getattr(training_args, "ds3_gather_for_generation", True)),
        load_in_4bit=bool(getattr(model_args, "load_in_4bit", False)),
        model_dtype=getattr(model_args, "dtype", None),
        bnb_4bit_quant_storage=getattr(model_args, "bnb_4bit_quant_storage", None),
        wandb_project=wandb_project(training_args) if reports_to_wandb(training_args) else None,
    )


def wandb_project(training_args) -> str:
    """WANDB_PROJECT if set, else the recipe's `project` (thermorl.tracking exports it to WANDB_PROJECT)."""
    return os.environ.get("WANDB_PROJECT") or training_args.project


def check_launch(model_args, training_args) -> None:
    """Raise a ValueError naming the first launch setting this machine or the other settings cannot honour."""
    check_run_length(training_args)
    settings = launch_settings(model_args, training_args)
    check_precision(settings)
    check_deepspeed(settings)
    if settings.wandb_project is not None:
        check_wandb_project(settings.wandb_project)
    check_model_path(model_args.model_name_or_path)


def check_run_length(training_args) -> None:
    """The Trainer reads any max_steps <= 0 as "train num_train_epochs epochs": only its default, -1, means that."""
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise UserError(
            f"max_steps must be a positive number of steps, or -1 to train for num_train_epochs epochs, got "
            f"{training_args.max_steps}."
        )


def check_model_path(model_name_or_path: str | None) -> None:
    """A local-looking model path that does not exist is named as such (the hub would answer "Repo id must be in
    the form 'repo_name' or 'namespace/repo_name'"). Hub ids are 'name' or 'namespace/name'."""
    if not model_name_or_path or os.path.exists(os.path.expanduser(model_name_or_path)):
        return
    local_looking = (
        model_name_or_path.startswith(("/", ".", "~"))
        or model_name_or_path.count("/") > 1
        or "\\" in model_name_or_path
    )
    if local_looking:
        raise UserError(f"model_name_or_path '{model_name_or_path}': no such folder.")


def check_precision(s: LaunchSettings) -> None:
    """Mixed precision needs a GPU: thermorl trains on the CPU in fp32 (DeepSpeed's CPU path included)."""
    if s.device_type != "cpu":
        return
    fix = "set `bf16: false` in the recipe (or `--bf16 false`); CPU training runs in fp32"
    if s.bf16 or s.fp16:
        name = "bf16" if s.bf16 else "fp16"
        raise UserError(f"`{name}: true` asks for {name} mixed precision, but this run is on the CPU: {fix}.")
    if s.accelerate_mixed_precision in ("bf16", "fp16", "fp8"):
        raise UserError(
            f"The accelerate config sets `mixed_precision: {s.accelerate_mixed_precision}`, but this run is on the "
            "CPU: use a CPU config (launch/cpu_zero2.yaml, launch/cpu_zero3.yaml) or set `mixed_precision: 'no'`."
        )
    for name in ("bf16", "fp16"):
        enabled = s.deepspeed_config.get(name, {}).get("enabled")
        if enabled is True or str(enabled).lower() == "true":
            raise UserError(
                f"The DeepSpeed config sets `{name}.enabled: true`, but this run is on the CPU: set it to false or "
                "'auto' (DeepSpeed then follows the recipe's bf16 / fp16)."
            )


def check_deepspeed(s: LaunchSettings) -> None:
    if s.zero_stage is None:
        return
    zero = s.deepspeed_config.get("zero_optimization", {})
    if s.device_type == "cpu":
        for section in ("offload_optimizer", "offload_param"):
            key, device = f"{section}_device", (zero.get(section) or {}).get("device", "none")
            if device not in (None, "none"):
                raise UserError(
                    f"`{key}: {device}` offloads from GPU memory, but this run is already on the CPU and has nothing "
                    f"to offload: set `{key}: none` (launch/cpu_zero3.yaml)."
                )
    if s.zero_stage != 3:
        return
    if s.use_vllm and not s.ds3_gather_for_generation:
        raise UserError(
            "`ds3_gather_for_generation: false` with `use_vllm: true`: vLLM needs the full weights, which ZeRO-3 only "
            "has gathered (TRL: 'not compatible with vLLM generation'). Set ds3_gather_for_generation: true, or "
            "use_vllm: false."
        )
    if s.load_in_4bit and (s.bnb_4bit_quant_storage is None or s.bnb_4bit_quant_storage != s.model_dtype):
        raise UserError(
            f"QLoRA under ZeRO-3 (`load_in_4bit: true`) needs `bnb_4bit_quant_storage` equal to the model `dtype` so "
            f"ZeRO-3 can shard the packed 4-bit weights (PEFT docs, 'PEFT QLoRA and DeepSpeed with ZeRO3'), got "
            f"bnb_4bit_quant_storage={s.bnb_4bit_quant_storage!r}, dtype={s.model_dtype!r}: set both to bfloat16."
        )


def check_wandb_project(project: str) -> None:
    bad = sorted({ch for ch in project if ch in WANDB_PROJECT_FORBIDDEN})
    if bad:
        raise UserError(
            f"W&B project name {project!r} (WANDB_PROJECT or the recipe's `project`) contains "
            f"{', '.join(repr(ch) for ch in bad)}; W&B project names cannot contain any of {WANDB_PROJECT_FORBIDDEN!r}."
        )
    if not project.strip():
        raise UserError("W&B project name (WANDB_PROJECT or the recipe's `project`) is empty.")
    if len(project) > WANDB_PROJECT_MAX_LENGTH:
        raise UserError(
            f"W&B project name (WANDB_PROJECT or the recipe's `project`) is {len(project)} characters long; "
            f"W&B allows at most {WANDB_PROJECT_MAX_LENGTH}."
        )
